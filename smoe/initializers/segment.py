"""Segmentation-based initialization, S-SMoE (VCIP 2023; AS paper, Table II).

MDBSCAN cuts the image into segments (SPEC §4).  The kernel budget is shared
over the segments, and each segment's kernels sit at distinct pixels drawn
uniformly at random inside it: a fixed distribution, not adapted to the
content.  Kernels are round; the expert is the image value at the kernel's
pixel.

Budget rule.  Segment s of area A_s gets a share proportional to
``A_s ** area_power``.  With ``area_power = 1`` (S-SMoE, the default) the
shares are proportional to area, so the kernel density is the same in every
segment and all kernels share one bandwidth.  With ``area_power = 0`` every
segment gets the same number of kernels, ``L / N`` for N segments (R paper,
Eq. 9): large flat segments get few kernels per pixel, and those kernels
start as wide as the segment's own spacing ``sqrt(A_s / n_s)`` allows, so each
gate averages more pixels (more noise) than in a uniform layout.  Values in
between trade the two.  Whatever the power, a segment gets at least one and at
most ``A_s`` kernels: shares that fall outside are pinned to the bound and the
rest rescaled until stable.  The shares are rounded by largest remainders
(ties to the lower label), so the model has exactly L kernels.  When L is
smaller than the segment count, the L largest segments get one kernel each
(ties to the lower label) and the others none.
"""

from __future__ import annotations

import numpy as np

from ..segment import mdbscan
from ..validate import check_area_power, check_finite
from .registry import require_budget, round_kernels

#: Kernel standard deviation in units of the grid spacing ``sqrt(H W / L)``.
#: Half the spacing beat the full spacing on kodim23 both at the start (four
#: 128x128 crops, 200 kernels, mean of 3 seeds: +0.4 to +2.1 dB) and after 300
#: fitting iterations (two crops: +1.0 and +2.7 dB).
DEFAULT_BANDWIDTH = 0.5


def segment_init(image: np.ndarray, n_kernels: int, *, rng: np.random.Generator, threshold: float = 40.0,
                 sigma: float = 1.0, labels: np.ndarray | None = None, bandwidth: float = DEFAULT_BANDWIDTH,
                 area_power: float = 1.0):
    """Round kernels at random pixels of MDBSCAN segments, ``area ** area_power`` kernels per segment.

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
        With ``area_power < 1``, in units of the segment's own spacing
        ``sqrt(A_s / n_s)`` where that is wider.
    area_power : float
        Between 0 and 1: segment shares proportional to ``area ** area_power``;
        1 is S-SMoE's proportional share, 0 the R paper's equal share.

    Returns
    -------
    Model
        L round kernels, pi = 1.
    """
    n_kernels = require_budget("segment", n_kernels)
    h, w, _ = image.shape
    _check_options(threshold, bandwidth, area_power)
    if labels is None:
        labels = mdbscan(image, threshold, sigma=sigma)
    segment = _segment_ids(labels, h, w)
    area = np.bincount(segment.ravel())
    count = _share_budget(area, n_kernels, area_power)
    pixels = _random_pixels(segment.ravel(), count, rng)
    centres = np.stack([pixels % w + 0.5, pixels // w + 0.5], 1)
    spacing = h * w / n_kernels
    if area_power != 1:  # segments thinner than the mean density start with wider kernels
        spacing = np.repeat(np.maximum(area / np.maximum(count, 1), spacing), count)
    return round_kernels(centres, bandwidth * np.sqrt(spacing), image)


def _check_options(threshold, bandwidth, area_power):
    # The budget (1 <= L <= H W) is checked by smoe.initializers.initialize; the
    # threshold is checked here too so that it fails even when labels are given.
    for name, v in (("threshold", threshold), ("bandwidth", bandwidth)):
        check_finite(f"segment: {name}", v, low=0, low_open=True)
    check_area_power(area_power)


def _segment_ids(labels, h: int, w: int) -> np.ndarray:
    """(H, W) segment indices 0..S-1, in increasing order of the given labels."""
    lab = np.asarray(labels)
    if lab.shape != (h, w) or not np.issubdtype(lab.dtype, np.integer):
        raise ValueError(f"segment: labels must be an integer array of shape {(h, w)}, "
                         f"got dtype {lab.dtype} and shape {lab.shape}")
    return np.unique(lab, return_inverse=True)[1].reshape(h, w)


def _share_budget(area: np.ndarray, n_kernels: int, power: float) -> np.ndarray:
    """(S,) kernels per segment summing to ``n_kernels`` (see the module docstring)."""
    count = np.zeros(len(area), np.int64)
    if n_kernels < len(area):
        count[np.argsort(-area, kind="stable")[:n_kernels]] = 1
        return count
    # Water-filling: shares below one kernel are pinned to one, shares above the
    # segment's pixel count to that count; rescaling the rest can pin more, so repeat
    # until stable.  For power 1, integer arithmetic keeps the largest segment unpinned
    # when L equals the segment count.
    weight = area.astype(np.float64) ** power if power != 1 else area
    low = np.zeros(len(area), bool)
    high = np.zeros(len(area), bool)
    while True:
        free = n_kernels - int(low.sum()) - int(area[high].sum())
        rest = weight[~(low | high)].sum()
        new_low = ~high & (weight * free < rest)
        new_high = ~new_low & (weight * free > area * rest)
        if (new_low == low).all() and (new_high == high).all():
            break
        low, high = new_low, new_high
    quota = np.where(low, 1.0, np.where(high, area, weight * (free / rest)))
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
