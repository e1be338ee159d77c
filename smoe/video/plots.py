"""Figures for a video fit: PSNR per frame, and the kernels in an x-t slice of the clip.

Drawn as :mod:`smoe.plots` draws (object-oriented matplotlib on an Agg
canvas, PNG bytes returned, written atomically when a path is given).
"""

from __future__ import annotations

import numpy as np
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure

from ..plots import OUTLINE_POINTS, _png
from .model import VideoModel, covariance_from_chol

__all__ = ["plot_frame_psnr", "draw_xt_slice"]


def plot_frame_psnr(curves: dict[str, np.ndarray], path=None, title: str | None = None) -> bytes:
    """PSNR per frame of one or more reconstructions.

    Parameters
    ----------
    curves : dict of str to (F,) array
        Label -> PSNR of each frame, in dB.
    path : str or os.PathLike, optional
        PNG file to write; None writes nothing.
    title : str, optional

    Returns
    -------
    bytes, the PNG file.

    Examples
    --------
    >>> plot_frame_psnr({"3D SMoE": np.array([30.0, 31.0, 30.5])})[:4]
    b'\\x89PNG'
    """
    if not curves:
        raise ValueError("no PSNR curves to plot")
    fig = Figure(figsize=(9, 4))
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.13, top=0.88)
    ax = fig.subplots()
    for label, values in curves.items():
        values = np.asarray(values, dtype=float)
        ax.plot(np.arange(values.size), values, lw=1.5, marker="." if values.size < 60 else None,
                label=f"{label} (mean {np.mean(values):.2f} dB)")
    ax.set_xlabel("frame")
    ax.set_ylabel("PSNR (dB)")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right")
    ax.set_title(title or "PSNR per frame")
    return _png(fig, path)


def draw_xt_slice(clip: np.ndarray, model: VideoModel, path=None, *, row: int | None = None,
                  max_kernels: int = 400) -> bytes:
    """The clip's x-t slice at one row (time running down) with the kernels that cross it.

    Each kernel whose centre lies within one standard deviation of the row is
    drawn as its 1-sigma ellipse in (x, t): a kernel long along t and tilted
    follows a moving edge.

    Parameters
    ----------
    clip : (F, H, W, C) array in [0, 1]
    model : VideoModel
    path : str or os.PathLike, optional
    row : int, optional
        Default the middle row.
    max_kernels : int
        Most ellipses drawn (the ones nearest the row).

    Returns
    -------
    bytes, the PNG file.
    """
    F, H, W, C = clip.shape
    row = H // 2 if row is None else int(row)
    strip = clip[:, row]
    strip = np.repeat(strip, 3, axis=2) if C == 1 else strip
    mu = model.mu.detach().cpu().double().numpy()
    cov = covariance_from_chol(model.chol.detach().cpu().double()).numpy()
    near = np.abs(mu[:, 1] - (row + 0.5)) / np.sqrt(cov[:, 1, 1]) <= 1.0 if len(model) else np.zeros(0, bool)
    pick = np.flatnonzero(near)
    pick = pick[np.argsort(np.abs(mu[pick, 1] - row - 0.5))][:max_kernels]
    # The (x, t) marginal of each kernel: the 2x2 block of its covariance.
    sub = cov[pick][:, [0, 2]][:, :, [0, 2]]
    root = np.linalg.cholesky(sub) if pick.size else np.zeros((0, 2, 2))
    angle = np.linspace(0, 2 * np.pi, OUTLINE_POINTS)
    circle = np.stack([np.cos(angle), np.sin(angle)])
    outlines = mu[pick][:, None, [0, 2]] + np.einsum("kij,jp->kpi", root, circle)
    zoom = max(1.0, min(8.0, 900 / max(W, 1), 600 / max(F, 1)))
    fig = Figure(figsize=(W * zoom / 100 + 1.2, F * zoom / 100 * 1.0 + 1.0))
    ax = fig.subplots()
    ax.imshow(np.clip(strip, 0, 1) * 0.6, extent=(0, W, F, 0), aspect="auto", interpolation="nearest")
    ax.add_collection(LineCollection(outlines, colors="yellow", linewidths=0.6, alpha=0.8))
    ax.set_xlim(0, W)
    ax.set_ylim(F, 0)
    ax.set_xlabel("x (pixels)")
    ax.set_ylabel("t (frames)")
    ax.set_title(f"x-t slice at row {row}: {pick.size} kernels crossing it (1-sigma)")
    return _png(fig, path)
