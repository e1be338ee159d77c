"""Additive white Gaussian noise: adding it to an image (the benchmarks' protocol)
and estimating its level from a noisy image (the denoiser's default budget)."""

from __future__ import annotations

import math
from numbers import Integral, Real

import numpy as np

from .fitting import as_image

__all__ = ["add_noise", "estimate_noise"]


def add_noise(image, variance: float, seed: int = 0, *, clip: bool = True) -> np.ndarray:
    """Add white Gaussian noise of the given variance (on the [0, 1] scale).

    Parameters
    ----------
    image : (H, W) or (H, W, C) array in [0, 1]
    variance : float
        sigma^2 of the noise, e.g. 0.01 for sigma = 0.1 (25.5 on 0-255).
    seed : int
        Seeds ``numpy.random.default_rng``; the same seed gives the same noise.
    clip : bool
        Clip the result to [0, 1], as an 8-bit noisy file would be.  Clipping
        makes the noise slightly non-Gaussian near black and white (and its
        mean non-zero there); the benchmarks clip, as the paper's protocol
        produces displayable noisy images.

    Returns
    -------
    float32 array of the input's shape.
    """
    if not (isinstance(variance, Real) and math.isfinite(variance) and variance >= 0):
        raise ValueError(f"noise variance must be a finite number >= 0, got {variance!r}")
    clean = np.asarray(image, dtype=np.float32)
    rng = np.random.default_rng(seed)
    noisy = clean + rng.normal(0.0, math.sqrt(variance), clean.shape).astype(np.float32)
    return np.clip(noisy, 0.0, 1.0) if clip else noisy


def estimate_noise(image, *, patch: int = 7) -> float:
    """Standard deviation of additive white noise in an image, from its patches.

    The covariance of the image's ``patch x patch`` patches is that of the
    clean patches plus sigma^2 times the identity.  Natural images put their
    variance into a few principal directions, so once those are set aside the
    remaining eigenvalues scatter evenly around sigma^2.  Following Chen, Zhu
    and Heng (ICCV 2015), the largest eigenvalues are dropped one at a time
    until the mean of those left is no larger than their median, and that
    mean is the noise variance.  Patches of all channels are pooled, which
    assumes the same noise level in every channel.

    Parameters
    ----------
    image : (H, W) or (H, W, C) array
        Values on the [0, 1] scale; at least ``patch`` pixels on each side.
    patch : int
        Patch side in pixels, at least 2.

    Returns
    -------
    float
        sigma on the scale of the image; 0.0 for a noiseless flat image.

    Notes
    -----
    Texture finer than a patch looks like noise to any such estimator: on the
    full Kodak images at sigma^2 = 0.01 the estimated variance is 1-15 % high
    (most on kodim13's foliage, least on smooth kodim03 and 23), so denoising
    stops those images a little early.  Pass ``sigma`` to :func:`denoise` when
    the noise level is known.
    """
    img = as_image(image, "image")
    if isinstance(patch, bool) or not isinstance(patch, Integral) or patch < 2:
        raise ValueError(f"patch must be a whole number of pixels >= 2, got {patch!r}")
    h, w, c = img.shape
    if h < patch or w < patch:
        raise ValueError(f"image of {h}x{w} pixels is smaller than one {patch}x{patch} patch; give the noise "
                         "level (sigma) instead of estimating it")
    # Every third patch on each axis: enough samples for a 49 x 49 covariance, a ninth of the work.
    stride = 3 if (h - patch) // 3 * ((w - patch) // 3) * c >= 4 * patch * patch else 1
    planes = np.moveaxis(img.astype(np.float64), 2, 0)
    windows = np.lib.stride_tricks.sliding_window_view(planes, (patch, patch), axis=(1, 2))
    samples = windows[:, ::stride, ::stride].reshape(-1, patch * patch)
    samples = samples - samples.mean(axis=0)
    eig = np.sort(np.linalg.eigvalsh(samples.T @ samples / len(samples)))[::-1]
    for first in range(len(eig) - 1):  # a single remaining eigenvalue is its own mean and median
        tail = eig[first:]
        if tail.mean() <= np.median(tail):
            return float(math.sqrt(max(tail.mean(), 0.0)))
    return float(math.sqrt(max(eig[-1], 0.0)))
