"""Grid initialization (AS paper, Table II): a regular lattice of round kernels."""

from __future__ import annotations

import numpy as np

from .registry import require_budget, round_kernels


def grid_init(image: np.ndarray, n_kernels: int, *, rng: np.random.Generator, bandwidth: float = 0.5):
    """Round kernels on a regular grid of about ``n_kernels`` points.

    The grid spacing is ``s = sqrt(H W / n_kernels)``; columns and rows are
    ``round(W / s)`` and ``round(H / s)``, so the count is close to, not exactly,
    ``n_kernels``.  Every kernel gets the standard deviation ``bandwidth * s``.

    Parameters
    ----------
    image : (H, W, C) float array
    n_kernels : int
    rng : numpy.random.Generator
        Unused: the grid is deterministic.
    bandwidth : float
        Kernel standard deviation in units of the grid spacing.  Half the
        spacing gave +1.4 to +1.7 dB initial PSNR over a full spacing on
        kodim23 (2 000 and 10 000 kernels) and a better fit after 300 iterations.
    """
    n_kernels = require_budget("grid", n_kernels)
    h, w, _ = image.shape
    s = np.sqrt(h * w / n_kernels)
    nx, ny = max(1, round(w / s)), max(1, round(h / s))
    xs = (np.arange(nx) + 0.5) * (w / nx)
    ys = (np.arange(ny) + 0.5) * (h / ny)
    centres = np.stack(np.meshgrid(xs, ys, indexing="xy"), -1).reshape(-1, 2)
    return round_kernels(centres, bandwidth * s, image)
