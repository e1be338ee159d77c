"""Figures for a fit: convergence curves and the kernels drawn over the image.

Figures are drawn with matplotlib's object-oriented API on an Agg canvas of
their own; pyplot is never imported, so the global backend a user may have
chosen (or an interactive session) is left alone.  Every figure is encoded to
PNG in memory and returned as bytes; given a path, it is also written with
:func:`smoe.imageio.atomic_write_bytes`, so a half-written figure never appears
on disk.

Figures stay cheap next to a fit at any image size: the kernel figure draws at
most :data:`KERNEL_FIGURE_SIDE` pixels along its longer side (a 4K image is shown
reduced) and a seeded subset of at most ``max_kernels`` kernels, and says both in
its title.
"""

from __future__ import annotations

import io
import math

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from PIL import Image

from .imageio import atomic_write_bytes
from .model import Model

__all__ = ["plot_convergence", "draw_kernels", "ellipse_outlines"]

#: Points per ellipse outline: smooth at figure resolution, cheap for 10^4 kernels.
OUTLINE_POINTS = 48
#: Length in output pixels of the longer side of a kernel figure: larger images are shown reduced.
KERNEL_FIGURE_SIDE = 1600
#: Most output pixels per image pixel of a kernel figure (tiny images are enlarged up to 16x, to stay legible).
KERNEL_FIGURE_MAX_ZOOM = 16.0
#: Least width in output pixels of a kernel figure, so the title fits.
KERNEL_FIGURE_MIN_WIDTH = 640
#: Fraction of the image's brightness kept under the kernel outlines.
DIM = 0.35
#: zlib level of the figures' PNG encoding: lossless at any level, and level 1 costs a
#: fraction of the default 6's time for files a little larger.
PNG_COMPRESS_LEVEL = 1
_DPI = 100
_GREY_CMAP = "viridis"


# ===================================================================== shared
def _png(fig: Figure, path) -> bytes:
    """Encode ``fig`` as PNG; write it atomically to ``path`` unless that is None."""
    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=_DPI, pil_kwargs={"compress_level": PNG_COMPRESS_LEVEL})
    return _deliver(buffer.getvalue(), path)


def _png_over_pixels(fig: Figure, pixels: np.ndarray, path) -> bytes:
    """Encode ``fig``, drawn transparent, over ``pixels`` (h, w, 3) uint8 placed at its bottom, on white.

    Compositing with Pillow costs a fraction of what matplotlib's image pipeline
    (resampling and RGBA conversions) costs for a figure-sized image.
    """
    canvas = FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="rgba", dpi=_DPI, transparent=True)
    size = canvas.get_width_height()
    page = Image.new("RGBA", size, "white")
    page.paste(Image.fromarray(pixels), (0, size[1] - pixels.shape[0]))
    page.alpha_composite(Image.frombuffer("RGBA", size, buffer.getvalue(), "raw", "RGBA", 0, 1))
    encoded = io.BytesIO()
    page.convert("RGB").save(encoded, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return _deliver(encoded.getvalue(), path)


def _deliver(data: bytes, path) -> bytes:
    if path is not None:
        atomic_write_bytes(path, data)
    return data


# ================================================================ convergence
_PANELS = (  # (row, column) -> (y key, x key, y label, x label)
    ((0, 0), "psnr", "iteration", "PSNR (dB)", "iteration"),
    ((0, 1), "psnr", "seconds", "PSNR (dB)", "fit time (s)"),
    ((1, 0), "kernels", "iteration", "live kernels", "iteration"),
    ((1, 1), "kernels", "seconds", "live kernels", "fit time (s)"),
)


# Room for 6-digit tick labels and an axis label on every panel, and the title on top.
_CONVERGENCE_MARGINS = {"left": 0.085, "right": 0.985, "bottom": 0.075, "top": 0.925, "wspace": 0.24, "hspace": 0.26}


def plot_convergence(history, path=None, title: str | None = None) -> bytes:
    """Plot PSNR and kernel count against iterations and against time.

    Parameters
    ----------
    history : sequence of dict
        Records as in :attr:`smoe.fitting.FitResult.history`, each with at least
        ``iteration``, ``psnr``, ``kernels`` and ``seconds``.
    path : str or os.PathLike, optional
        PNG file to write (atomically); None writes nothing.
    title : str, optional
        Figure title; by default the final PSNR and kernel count.

    Returns
    -------
    bytes
        The PNG file's content.

    Raises
    ------
    ValueError
        Empty history or records missing a key.

    Examples
    --------
    >>> history = [{"iteration": 10, "psnr": 20.0, "kernels": 50, "seconds": 0.5},
    ...            {"iteration": 20, "psnr": 24.0, "kernels": 48, "seconds": 1.0}]
    >>> plot_convergence(history)[:8]
    b'\\x89PNG\\r\\n\\x1a\\n'
    """
    columns = _history_columns(history)
    # Fixed margins instead of a layout engine, which would draw the figure twice to measure it.
    fig = Figure(figsize=(10, 7))
    fig.subplots_adjust(**_CONVERGENCE_MARGINS)
    axes = fig.subplots(2, 2)
    for (row, col), y_key, x_key, y_label, x_label in _PANELS:
        ax = axes[row, col]
        colour = "tab:blue" if y_key == "psnr" else "tab:orange"
        ax.plot(columns[x_key], columns[y_key], color=colour, lw=1.5, marker="." if len(history) < 30 else None)
        if y_key == "kernels":
            ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel(x_label)
        ax.set_ylabel(y_label)
        ax.grid(True, alpha=0.3)
    if title is None:
        title = (f"final PSNR {columns['psnr'][-1]:.2f} dB, {int(columns['kernels'][-1])} kernels, "
                 f"{int(columns['iteration'][-1])} iterations in {columns['seconds'][-1]:.1f} s")
    fig.suptitle(title)
    return _png(fig, path)


def _history_columns(history) -> dict[str, np.ndarray]:
    if not history:
        raise ValueError("history is empty; nothing to plot (fit for at least one logged iteration)")
    keys = ("iteration", "psnr", "kernels", "seconds")
    try:
        return {k: np.array([float(rec[k]) for rec in history]) for k in keys}
    except KeyError as exc:
        raise ValueError(f"history records need the keys {', '.join(keys)}; one lacks {exc}") from None


# ==================================================================== kernels
def ellipse_outlines(model: Model, scale: float = 1.0, points: int = OUTLINE_POINTS) -> np.ndarray:
    """Closed outlines of each kernel's ``scale``-sigma ellipse.

    Parameters
    ----------
    model : Model
    scale : float
        Radius in standard deviations (1 gives the 1-sigma ellipse).
    points : int
        Points per outline; the first is repeated at the end to close it.

    Returns
    -------
    (L, points + 1, 2) float array of ``(x, y)`` image coordinates.
    """
    # Sigma^-1 = B^T B, so x = mu + B^-1 u maps the unit circle |u| = 1 exactly
    # onto the 1-sigma ellipse (x - mu)^T Sigma^-1 (x - mu) = 1: the same curve
    # an eigen-decomposition of Sigma gives, without the decomposition.
    chol = model.chol.detach().cpu().double().numpy()
    mu = model.mu.detach().cpu().double().numpy()
    b00, b10, b11 = chol[:, 0], chol[:, 1], chol[:, 2]
    inv = np.zeros((len(chol), 2, 2))
    inv[:, 0, 0] = 1.0 / b00
    inv[:, 1, 0] = -b10 / (b00 * b11)
    inv[:, 1, 1] = 1.0 / b11
    t = np.linspace(0.0, 2.0 * math.pi, points + 1)
    t[-1] = 0.0  # exactly closed
    circle = np.stack([np.cos(t), np.sin(t)])  # (2, points + 1)
    return mu[:, None, :] + scale * np.einsum("lij,jp->lpi", inv, circle)


def draw_kernels(image, model: Model, path=None, *, max_kernels: int = 5000, scale: float = 1.0) -> bytes:
    """Draw every kernel's ellipse and centre over the dimmed image.

    Parameters
    ----------
    image : (H, W), (H, W, 1) or (H, W, 3) array
        The image the model was fitted on, floats in [0, 1]; its size sets the
        figure's coordinate frame.
    model : Model
        Kernels in that image's pixel coordinates.
    path : str or os.PathLike, optional
        PNG file to write (atomically); None writes nothing.
    max_kernels : int
        Draw at most this many kernels; larger models are subsampled
        (a fixed random subset drawn with seed 0, so the figure is
        reproducible) and the title says so.
    scale : float
        Ellipse radius in standard deviations (1 draws the 1-sigma ellipse).

    Returns
    -------
    bytes
        The PNG file's content.

    Notes
    -----
    The figure's longer side is :data:`KERNEL_FIGURE_SIDE` pixels (at least
    :data:`KERNEL_FIGURE_MIN_WIDTH` wide, and at most
    :data:`KERNEL_FIGURE_MAX_ZOOM` output pixels per image pixel): larger images
    are shown reduced (area average), and the title gives the reduction.
    Outline and centre colours are the expert's colour for RGB models and a
    viridis map of the expert value for grey ones.  Outlines are one
    ``LineCollection``, so 10 000 kernels draw in about a second.

    Examples
    --------
    >>> import numpy as np
    >>> from smoe import Model
    >>> model = Model([[8.0, 6.0]], [[0.5, 0.0, 0.5]], [1.0], [[0.9, 0.2, 0.1]])
    >>> draw_kernels(np.full((12, 16, 3), 0.5), model)[:8]
    b'\\x89PNG\\r\\n\\x1a\\n'
    """
    img = _as_display_image(image)
    if not (isinstance(max_kernels, (int, np.integer)) and max_kernels >= 1):
        raise ValueError(f"max_kernels must be a positive integer, got {max_kernels!r}")
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"scale must be a positive finite number, got {scale}")
    shown, note = _subsample(model, int(max_kernels))
    h, w = img.shape[:2]
    zoom = _kernel_figure_zoom(h, w)
    fig, ax = _image_figure(h, w, zoom)
    if len(shown):
        colours = _expert_colours(shown)
        # A faint light halo under each outline keeps dark kernels visible on the dimmed image.
        outlines = ellipse_outlines(shown, scale)
        ax.add_collection(LineCollection(outlines, colors="white", linewidths=1.8, alpha=0.25))
        ax.add_collection(LineCollection(outlines, colors=colours, linewidths=0.9))
        mu = shown.mu.detach().cpu().numpy()
        ax.scatter(mu[:, 0], mu[:, 1], s=5, c=colours, edgecolors="white", linewidths=0.3, zorder=3)
    ax.set_xlim(0, w)
    ax.set_ylim(h, 0)  # image convention: y grows downwards
    title_top = ax.get_position().y1
    colour_note = "expert colour" if shown.channels == 3 else f"expert value ({_GREY_CMAP}: 0 dark, 1 bright)"
    size_note = f"; {w}x{h} image shown at {zoom:.2g}x" if zoom < 1 else ""
    fig.text(0.5, (1.0 + title_top) / 2, f"{note}, {scale:g}-sigma ellipses, coloured by {colour_note}{size_note}",
             ha="center", va="center", fontsize=11)
    # The image goes under the drawing pixel for pixel: resized once here, never resampled by matplotlib.
    return _png_over_pixels(fig, _dimmed_pixels(img, zoom), path)


def _as_display_image(image) -> np.ndarray:
    """``image`` as an (H, W) grey or (H, W, 3) RGB float32 array (a view where possible)."""
    if hasattr(image, "detach"):
        image = image.detach().cpu().numpy()
    img = np.asarray(image, dtype=np.float32)  # display only: float32 is plenty, and no copy of a float32 image
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    if not (img.ndim == 2 or (img.ndim == 3 and img.shape[2] == 3)) or img.shape[0] * img.shape[1] == 0:
        raise ValueError(f"image must have shape (H, W), (H, W, 1) or (H, W, 3) with pixels, got {np.shape(image)}")
    return img


def _dimmed_pixels(img: np.ndarray, zoom: float) -> np.ndarray:
    """The image clipped to [0, 1] and dimmed, as (h, w, 3) uint8 at the figure's pixels.

    Reduced by area average (``zoom`` < 1) or enlarged by pixel repetition (``zoom`` > 1).
    """
    top = 255 * DIM
    levels = img * np.float32(top)  # one copy, then in place: a 4K image is 100 MB per copy
    # fmax/fmin, unlike clip, also send NaN to a bound (here 0).
    np.fmin(np.fmax(levels, 0.0, out=levels), top, out=levels)
    pixels = Image.fromarray(np.rint(levels, out=levels).astype(np.uint8))
    h, w = img.shape[:2]
    size = (max(1, round(w * zoom)), max(1, round(h * zoom)))
    if size != (w, h):
        pixels = pixels.resize(size, Image.Resampling.BOX if zoom < 1 else Image.Resampling.NEAREST)
    return np.asarray(pixels.convert("RGB"))


def _subsample(model: Model, max_kernels: int) -> tuple[Model, str]:
    """At most ``max_kernels`` kernels and a phrase saying how many are shown."""
    total = len(model)
    if total <= max_kernels:
        return model, f"{total} kernel{'s' if total != 1 else ''}"
    keep = np.sort(np.random.default_rng(0).choice(total, size=max_kernels, replace=False))
    return model.select(keep), f"{max_kernels} of {total} kernels (random subset)"


def _kernel_figure_zoom(h: int, w: int) -> float:
    """Output pixels per image pixel of the kernel figure of an ``h x w`` image."""
    return max(min(KERNEL_FIGURE_MAX_ZOOM, KERNEL_FIGURE_SIDE / max(h, w)), KERNEL_FIGURE_MIN_WIDTH / w)


def _image_figure(h: int, w: int, zoom: float) -> tuple[Figure, object]:
    """A figure whose single axes shows an ``h x w`` image at ``zoom``, plus room for a title."""
    title_px = 30
    width_px, height_px = w * zoom, h * zoom + title_px
    fig = Figure(figsize=(width_px / _DPI, height_px / _DPI), dpi=_DPI)
    ax = fig.add_axes((0.0, 0.0, 1.0, 1.0 - title_px / height_px))
    ax.set_axis_off()
    return fig, ax


def _expert_colours(model: Model) -> np.ndarray:
    """(L, 4) RGBA colours: the expert's colour (RGB) or a colormap of its value (grey)."""
    experts = np.clip(model.experts.detach().cpu().double().numpy(), 0.0, 1.0)
    if experts.shape[1] == 3:
        return np.concatenate([experts, np.ones((len(experts), 1))], axis=1)
    return colormaps[_GREY_CMAP](experts[:, 0])
