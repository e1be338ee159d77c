"""Figures for a fit: convergence curves and the kernels drawn over the image.

Figures are drawn with matplotlib's object-oriented API on an Agg canvas of
their own; pyplot is never imported, so the global backend a user may have
chosen (or an interactive session) is left alone.  Every figure is encoded to
PNG in memory and written with :func:`smoe.imageio.atomic_write_bytes`, so a
half-written figure never appears on disk.
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

from .imageio import atomic_write_bytes
from .model import Model

__all__ = ["plot_convergence", "draw_kernels", "ellipse_outlines"]

#: Points per ellipse outline: smooth at figure resolution, cheap for 10^4 kernels.
OUTLINE_POINTS = 48
#: Target length in output pixels of the longer side of a kernel figure.
KERNEL_FIGURE_SIDE = 1600
#: Limits on output pixels per image pixel of a kernel figure (tiny images get up to 16x, to stay legible).
KERNEL_FIGURE_ZOOM = (1.0, 16.0)
#: Least width in output pixels of a kernel figure, so the title fits.
KERNEL_FIGURE_MIN_WIDTH = 640
#: Fraction of the image's brightness kept under the kernel outlines.
DIM = 0.35
_DPI = 100
_GREY_CMAP = "viridis"


# ===================================================================== shared
def _save(fig: Figure, path) -> None:
    """Encode ``fig`` as PNG and write it atomically."""
    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=_DPI)
    atomic_write_bytes(path, buffer.getvalue())


# ================================================================ convergence
_PANELS = (  # (row, column) -> (y key, x key, y label, x label)
    ((0, 0), "psnr", "iteration", "PSNR (dB)", "iteration"),
    ((0, 1), "psnr", "seconds", "PSNR (dB)", "fit time (s)"),
    ((1, 0), "kernels", "iteration", "live kernels", "iteration"),
    ((1, 1), "kernels", "seconds", "live kernels", "fit time (s)"),
)


def plot_convergence(history, path, title: str | None = None) -> None:
    """Plot PSNR and kernel count against iterations and against time.

    Parameters
    ----------
    history : sequence of dict
        Records as in :attr:`smoe.fitting.FitResult.history`, each with at least
        ``iteration``, ``psnr``, ``kernels`` and ``seconds``.
    path : str or os.PathLike
        PNG file to write (atomically).
    title : str, optional
        Figure title; by default the final PSNR and kernel count.

    Raises
    ------
    ValueError
        Empty history or records missing a key.
    """
    columns = _history_columns(history)
    fig = Figure(figsize=(10, 7), layout="constrained")
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
    _save(fig, path)


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


def draw_kernels(image, model: Model, path, *, max_kernels: int = 5000, scale: float = 1.0) -> None:
    """Draw every kernel's ellipse and centre over the dimmed image.

    Parameters
    ----------
    image : (H, W), (H, W, 1) or (H, W, 3) array
        The image the model was fitted on, floats in [0, 1]; its size sets the
        figure's coordinate frame.
    model : Model
        Kernels in that image's pixel coordinates.
    path : str or os.PathLike
        PNG file to write (atomically).
    max_kernels : int
        Draw at most this many kernels; larger models are subsampled
        (a fixed, seeded random subset, so the figure is reproducible) and the
        title says so.
    scale : float
        Ellipse radius in standard deviations (1 draws the 1-sigma ellipse).

    Notes
    -----
    Outline and centre colours are the expert's colour for RGB models and a
    viridis map of the expert value for grey ones.  Outlines are one
    ``LineCollection``, so 10 000 kernels draw in about a second.
    """
    img = _as_display_image(image)
    if not (isinstance(max_kernels, (int, np.integer)) and max_kernels >= 1):
        raise ValueError(f"max_kernels must be a positive integer, got {max_kernels!r}")
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"scale must be a positive finite number, got {scale}")
    shown, note = _subsample(model, int(max_kernels))
    h, w = img.shape[:2]
    fig, ax = _image_figure(h, w)
    ax.imshow(DIM * img, cmap="gray", vmin=0.0, vmax=1.0, extent=(0, w, h, 0), interpolation="nearest")
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
    fig.text(0.5, (1.0 + title_top) / 2, f"{note}, {scale:g}-sigma ellipses, coloured by {colour_note}",
             ha="center", va="center", fontsize=11)
    _save(fig, path)


def _as_display_image(image) -> np.ndarray:
    """(H, W) grey or (H, W, 3) RGB float array clipped to [0, 1]."""
    if hasattr(image, "detach"):
        image = image.detach().cpu().numpy()
    img = np.asarray(image, dtype=np.float64)
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    if not (img.ndim == 2 or (img.ndim == 3 and img.shape[2] == 3)) or img.shape[0] * img.shape[1] == 0:
        raise ValueError(f"image must have shape (H, W), (H, W, 1) or (H, W, 3) with pixels, got {np.shape(image)}")
    return np.clip(np.nan_to_num(img), 0.0, 1.0)


def _subsample(model: Model, max_kernels: int) -> tuple[Model, str]:
    """At most ``max_kernels`` kernels and a phrase saying how many are shown."""
    total = len(model)
    if total <= max_kernels:
        return model, f"{total} kernel{'s' if total != 1 else ''}"
    keep = np.sort(np.random.default_rng(0).choice(total, size=max_kernels, replace=False))
    return model.select(keep), f"{max_kernels} of {total} kernels (random subset)"


def _image_figure(h: int, w: int) -> tuple[Figure, object]:
    """A figure whose single axes shows an ``h x w`` image at a readable zoom, plus room for a title."""
    lo, hi = KERNEL_FIGURE_ZOOM
    zoom = max(min(hi, max(lo, KERNEL_FIGURE_SIDE / max(h, w))), KERNEL_FIGURE_MIN_WIDTH / w)
    title_px = 30
    width_px, height_px = w * zoom, h * zoom + title_px
    fig = Figure(figsize=(width_px / _DPI, height_px / _DPI))
    ax = fig.add_axes((0.0, 0.0, 1.0, 1.0 - title_px / height_px))
    ax.set_axis_off()
    return fig, ax


def _expert_colours(model: Model) -> np.ndarray:
    """(L, 4) RGBA colours: the expert's colour (RGB) or a colormap of its value (grey)."""
    experts = np.clip(model.experts.detach().cpu().double().numpy(), 0.0, 1.0)
    if experts.shape[1] == 3:
        return np.concatenate([experts, np.ones((len(experts), 1))], axis=1)
    return colormaps[_GREY_CMAP](experts[:, 0])
