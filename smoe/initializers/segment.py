"""Segmentation-based initialization, S-SMoE (VCIP 2023; AS paper, Table II).

MDBSCAN cuts the image into segments (SPEC §4).  The kernel budget is shared
over the segments in proportion to their areas, and each segment's kernels
sit at distinct pixels drawn uniformly at random inside it: a fixed
distribution, not adapted to the content.  Kernels are round with one shared
bandwidth; the expert is the image value at the kernel's pixel.

Budget rule.  When the budget L covers every segment, each segment gets
``max(1, lambda * area)`` kernels, with ``lambda`` chosen so the shares sum to
L: segments too small for a whole kernel get exactly one and the rest are
strictly proportional to area.  The shares are rounded by largest remainders
(ties to the lower label), so the model has exactly L kernels.  When L is
smaller than the segment count, the L largest segments get one kernel each
(ties to the lower label) and the others none.
"""

from __future__ import annotations

import math
from numbers import Integral, Real

import numpy as np

from ..segment import mdbscan
from . import register, require_budget, round_kernels

#: Kernel standard deviation in units of the grid spacing ``sqrt(H W / L)``.
#: Half the spacing beat the full spacing on kodim23 both at the start (four
#: 128x128 crops, 200 kernels, mean of 3 seeds: +0.4 to +2.1 dB) and after 300
#: fitting iterations (two crops: +1.0 and +2.7 dB).
DEFAULT_BANDWIDTH = 0.5


@register("segment")
def segment_init(image: np.ndarray, n_kernels: int, *, rng: np.random.Generator, threshold: float = 40.0,
                 sigma: float = 1.0, labels: np.ndarray | None = None, bandwidth: float = DEFAULT_BANDWIDTH):
    """Round kernels at random pixels of MDBSCAN segments, counts proportional to segment area.

    Parameters
    ----------
    image : (H, W, C) float array
    n_kernels : int
        Kernel budget L, 1 <= L <= H W; the model has exactly L kernels.
    rng : numpy.random.Generator
        Draws the kernel pixels.
    threshold : float
        MDBSCAN join threshold ``d_Th`` (RGB distance on the 0–255 scale; the
        AS paper uses 40 and 50).
    sigma : float
        MDBSCAN pre-blur in pixels.
    labels : (H, W) int array, optional
        A precomputed segmentation (any integer labels, one segment per
        value), e.g. to share one MDBSCAN run between several fits;
        ``threshold`` and ``sigma`` are then unused.
    bandwidth : float
        Kernel standard deviation in units of ``sqrt(H W / L)``, the spacing of
        a regular grid with the same budget; see :data:`DEFAULT_BANDWIDTH`.

    Returns
    -------
    Model
        L round kernels, pi = 1.
    """
    n_kernels = require_budget("segment", n_kernels)
    h, w, _ = image.shape
    _check_options(n_kernels, h, w, threshold, bandwidth)
    if labels is None:
        labels = mdbscan(image, threshold, sigma=sigma)
    segment = _segment_ids(labels, h, w)
    area = np.bincount(segment.ravel())
    pixels = _random_pixels(segment.ravel(), _share_budget(area, n_kernels), rng)
    centres = np.stack([pixels % w + 0.5, pixels // w + 0.5], 1)
    return round_kernels(centres, bandwidth * math.sqrt(h * w / n_kernels), image)


def _check_options(n_kernels, h, w, threshold, bandwidth):
    if isinstance(n_kernels, bool) or not isinstance(n_kernels, Integral) or not 1 <= n_kernels <= h * w:
        raise ValueError(f"segment: n_kernels must be an integer between 1 and the pixel count {h * w}, "
                         f"got {n_kernels!r}")
    # Checked here too so that a bad threshold fails even when labels are given.
    for name, v in (("threshold", threshold), ("bandwidth", bandwidth)):
        if isinstance(v, bool) or not isinstance(v, Real) or not math.isfinite(v) or v <= 0:
            raise ValueError(f"segment: {name} must be a finite number > 0, got {v!r}")


def _segment_ids(labels, h: int, w: int) -> np.ndarray:
    """(H, W) segment indices 0..S-1, in increasing order of the given labels."""
    lab = np.asarray(labels)
    if lab.shape != (h, w) or not np.issubdtype(lab.dtype, np.integer):
        raise ValueError(f"segment: labels must be an integer array of shape {(h, w)}, "
                         f"got dtype {lab.dtype} and shape {lab.shape}")
    return np.unique(lab, return_inverse=True)[1].reshape(h, w)


def _share_budget(area: np.ndarray, n_kernels: int) -> np.ndarray:
    """(S,) kernels per segment summing to ``n_kernels`` (see the module docstring)."""
    count = np.zeros(len(area), np.int64)
    if n_kernels < len(area):
        count[np.argsort(-area, kind="stable")[:n_kernels]] = 1
        return count
    # Water-filling: segments whose proportional share falls below one kernel are
    # pinned to one; rescaling the rest can pin more, so repeat until stable.
    # Integer arithmetic keeps the largest segment unpinned when L equals the segment count.
    pinned = np.zeros(len(area), bool)
    while True:
        free, rest = n_kernels - int(pinned.sum()), int(area[~pinned].sum())
        now = area * free < rest
        if (now == pinned).all():
            break
        pinned = now
    quota = np.where(pinned, 1.0, area * (free / rest))
    count = np.floor(quota).astype(np.int64)
    left = n_kernels - int(count.sum())
    order = np.argsort(-(quota - count), kind="stable")
    count[order[:left]] += 1
    return count


def _random_pixels(segment: np.ndarray, count: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Flat indices of ``count[s]`` distinct pixels drawn uniformly inside each segment s."""
    # Sorting by (segment, random key) shuffles every segment independently; its
    # first count[s] pixels are then a uniform sample without replacement.
    order = np.lexsort((rng.random(segment.size), segment))
    start = np.concatenate([[0], np.cumsum(np.bincount(segment, minlength=len(count)))[:-1]])
    first = np.repeat(start, count) + _ranks(count)
    return order[first]


def _ranks(count: np.ndarray) -> np.ndarray:
    """0..count[s]-1 for every s, concatenated."""
    offsets = np.repeat(np.cumsum(count) - count, count)
    return np.arange(int(count.sum())) - offsets
