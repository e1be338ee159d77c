"""Random initialization (R paper, Section VI-B): uniform centres, round 5 px kernels."""

from __future__ import annotations

import numpy as np

from .registry import require_budget, round_kernels


def random_init(image: np.ndarray, n_kernels: int, *, rng: np.random.Generator, sigma: float = 5.0):
    """Place ``n_kernels`` round kernels of ``sigma`` px uniformly at random.

    Parameters
    ----------
    image : (H, W, C) float array
    n_kernels : int
    rng : numpy.random.Generator
    sigma : float
        Standard deviation of every kernel in pixels (the R paper's "scale of 5 px").
    """
    n_kernels = require_budget("random", n_kernels)
    h, w, _ = image.shape
    centres = rng.uniform((0.0, 0.0), (w, h), size=(n_kernels, 2))
    return round_kernels(centres, sigma, image)
