"""Initialization of a space-time model from the clip's content.

Centres are drawn where the clip changes, in space or in time: the sampling
density follows the gradient magnitude of the grey clip over (t, y, x),
smoothed, plus a floor so that still, flat regions get kernels too.  Each
kernel starts axis-aligned, sized by the spacing that density gives around
it, and ``aspect`` times longer along t than across: frames look alike, so a
kernel can start by explaining the same place in several of them.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

from .model import VideoModel, isotropic_chol


def detail_density(clip: np.ndarray, *, floor: float = 0.3, scale: float = 1.0) -> np.ndarray:
    """(F, H, W) float64 sampling density summing to 1 from a clip (F, H, W, C) in [0, 1]."""
    grey = clip.mean(axis=3, dtype=np.float32)
    g = ndimage.gaussian_filter(ndimage.gaussian_gradient_magnitude(grey, scale), 2 * scale)
    mean = float(g.mean())
    d = (g / mean if mean > 0 else np.zeros_like(g)).astype(np.float64) + floor
    return d / d.sum()


def init_video(clip: np.ndarray, n_kernels: int, *, seed: int = 0, aspect: float = 2.0, bandwidth: float = 0.8,
               t_offset: float = 0.0) -> VideoModel:
    """``n_kernels`` axis-aligned kernels placed by :func:`detail_density`.

    Parameters
    ----------
    clip : (F, H, W, C) float array
    n_kernels : int
        At most F * H * W (one per voxel).
    seed : int
    aspect : float
        Starting ratio of a kernel's extent along t to its extent across.
    bandwidth : float
        Standard deviation as a share of the local spacing.
    t_offset : float
        Clip time of the first frame minus 0.5 (a window that starts at frame a passes ``a``).

    Returns
    -------
    VideoModel (float32), experts sampled from the clip under each centre.

    Examples
    --------
    >>> clip = np.random.default_rng(0).random((4, 16, 16, 3)).astype(np.float32)
    >>> len(init_video(clip, 50))
    50
    """
    F, H, W, _ = clip.shape
    rng = np.random.default_rng(seed)
    p = detail_density(clip).ravel()
    n = min(int(n_kernels), p.size)
    idx = rng.choice(p.size, size=n, replace=False, p=p)
    f, rest = np.divmod(idx, H * W)
    r, c = np.divmod(rest, W)
    centres = np.stack([c + rng.random(n), r + rng.random(n), f + rng.random(n) + t_offset], 1)
    # Cells of volume 1 / (n p) voxels shaped s x s x (aspect s).
    s = np.cbrt(1.0 / (n * p[idx] * aspect))
    sigma_xy = np.clip(bandwidth * s, 0.7, 12.0)
    sigma_t = np.clip(bandwidth * aspect * s, 0.5, max(0.5, float(F)))
    chol = isotropic_chol(torch.from_numpy(sigma_xy.astype(np.float32)), torch.from_numpy(sigma_t.astype(np.float32)))
    experts = clip[f, r, c]
    return VideoModel(torch.from_numpy(centres.astype(np.float32)), chol, torch.ones(n), torch.from_numpy(experts))
