"""Tests of MDBSCAN segmentation (smoe.segment, SPEC §4)."""

from __future__ import annotations

from collections import deque

import numpy as np
import pytest
from scipy import ndimage

from smoe.labels import boundaries, draw_segmentation, segment_stats
from smoe.segment import mdbscan

# ----------------------------------------------------------------------------
# Helpers


# Palettes for the synthetic scene (background, rectangle 1, rectangle 2, rectangle 3, disc).
# STRONG: neighbours differ by 130-270 on the 0-255 RGB scale.
# MODERATE: every pair of touching regions differs by an RGB distance of 130-146, i.e. a grey step of
# 75-85 levels.  With the default sigma=1 pre-blur, the pixels straddling an edge take intermediate colours;
# for some contrasts (grey steps near 60 and 100-135 levels at d_Th 40) they form a two-pixel-wide "edge
# segment" of their own, which the one-pixel clean-up of SPEC §4 keeps.  The blurred tests therefore use
# MODERATE contrasts; the unblurred ones use STRONG contrasts.
STRONG_RGB = [[0.15, 0.2, 0.25], [0.9, 0.2, 0.1], [0.95, 0.9, 0.3], [0.1, 0.7, 0.2], [0.3, 0.4, 0.95]]
STRONG_GREY = [0.15, 0.85, 0.5, 0.65, 0.35]
MODERATE_RGB = [[0.35, 0.35, 0.35], [0.895, 0.35, 0.35], [0.6, 0.35, 0.84], [0.35, 0.895, 0.35],
                [0.05, 0.05, 0.05]]
MODERATE_GREY = [0.35, 0.66, 0.04, 0.66, 0.04]  # three grey levels cannot all be 75-85 apart: no touching


def synthetic_scene(palette, noise: float = 0.0, seed: int = 0, touching: bool = True):
    """Piecewise-constant 96x128 scene: background, three rectangles and a disc.

    Rectangles 1 and 2 share an edge when ``touching``, else a 4-px gap of background
    separates them.  Returns (image (H, W) or (H, W, 3) in [0, 1], truth (H, W) region ids 0..4).
    """
    h, w = 96, 128
    truth = np.zeros((h, w), int)
    truth[10:40, 15:60] = 1
    truth[10:40, (60 if touching else 64):100] = 2
    truth[55:88, 8:50] = 3
    yy, xx = np.mgrid[:h, :w]
    truth[(yy - 68) ** 2 + (xx - 92) ** 2 < 19 ** 2] = 4
    img = np.asarray(palette, dtype=np.float64)[truth]
    if noise:
        img = img + np.random.default_rng(seed).normal(0.0, noise, img.shape)
    return img, truth


def recovery(truth: np.ndarray, labels: np.ndarray):
    """Overlap metric between true regions and labels.

    Returns (coverage, purity, majority): coverage[i] is the fraction of region i
    covered by its most frequent label majority[i]; purity[j] is the fraction of
    label j's pixels that lie in its most frequent region.
    """
    nt, nl = truth.max() + 1, labels.max() + 1
    table = np.bincount((truth * nl + labels).ravel(), minlength=nt * nl).reshape(nt, nl)[:, 1:]
    coverage = table.max(axis=1) / table.sum(axis=1)
    purity = table.max(axis=0) / np.maximum(table.sum(axis=0), 1)
    return coverage, purity, table.argmax(axis=1) + 1


def assert_valid_labels(labels: np.ndarray, min_area: int = 0):
    """Labels are int32, exactly 1..N, each 4-connected and of at least min_area pixels."""
    assert labels.dtype == np.int32
    n = labels.max()
    assert np.array_equal(np.unique(labels), np.arange(1, n + 1))
    for lab, box in enumerate(ndimage.find_objects(labels), start=1):
        _, ncomp = ndimage.label(labels[box] == lab)  # default structure: 4-connectivity
        assert ncomp == 1, f"label {lab} has {ncomp} components"
    assert np.bincount(labels.ravel())[1:].min() >= min(min_area, labels.size)


@pytest.fixture(scope="module")
def natural():
    """A 160x160 RGB crop of a natural photograph in [0, 1]."""
    data = pytest.importorskip("skimage.data")
    return data.astronaut()[40:200, 160:320] / 255.0


def reference_clusters(img255: np.ndarray, threshold: float) -> np.ndarray:
    """Plain-Python stage 1 of SPEC §4 (no blur, no merging), labels 0..K-1."""
    h, w, _ = img255.shape
    lab = -np.ones((h, w), int)
    k = 0
    for y0 in range(h):
        for x0 in range(w):
            if lab[y0, x0] >= 0:
                continue
            lab[y0, x0] = k
            seed = img255[y0, x0]
            queue = deque([(y0, x0)])
            while queue:
                y, x = queue.popleft()
                for qy, qx in ((y - 1, x), (y, x - 1), (y, x + 1), (y + 1, x)):
                    if 0 <= qy < h and 0 <= qx < w and lab[qy, qx] < 0:
                        c = img255[qy, qx]
                        d = 0.62 * np.sum((c - seed) ** 2) + 0.38 * np.sum((c - img255[y, x]) ** 2)
                        if d < threshold ** 2:
                            lab[qy, qx] = k
                            queue.append((qy, qx))
            k += 1
    return lab


def reference_merge(img255: np.ndarray, clusters: np.ndarray, min_size: int) -> np.ndarray:
    """Plain-Python stage 2: smallest cluster first (ties: lower id), cost colour² + 2·centroid²."""
    h, w, _ = img255.shape
    ids = clusters.copy()
    yy, xx = np.mgrid[:h, :w]
    while True:
        present = np.unique(ids)
        sizes = {g: int(np.sum(ids == g)) for g in present}
        small = [g for g in present if sizes[g] < min_size]
        if not small or len(present) == 1:
            return ids
        g = min(small, key=lambda c: (sizes[c], c))
        mask = ids == g
        grown = ndimage.binary_dilation(mask, structure=ndimage.generate_binary_structure(2, 1))
        stats = {}
        for c in np.unique(ids[grown & ~mask]).tolist() + [g]:
            m = ids == c
            stats[c] = (img255[m].mean(axis=0), np.array([yy[m].mean(), xx[m].mean()]))
        costs = [(np.sum((stats[c][0] - stats[g][0]) ** 2) + 2 * np.sum((stats[c][1] - stats[g][1]) ** 2), c)
                 for c in stats if c != g]
        ids[mask] = min(costs)[1]


def raster_renumber(ids: np.ndarray) -> np.ndarray:
    _, first, inverse = np.unique(ids.ravel(), return_index=True, return_inverse=True)
    rank = np.empty(len(first), int)
    rank[np.argsort(first)] = np.arange(1, len(first) + 1)
    return rank[inverse].reshape(ids.shape)


# ----------------------------------------------------------------------------
# Spec fidelity on small random images


def blocky_random(shape=(20, 24), seed=3):
    """Random image of 4x4 flat blocks plus fine noise: clusters of many sizes."""
    rng = np.random.default_rng(seed)
    blocks = rng.uniform(0, 1, (shape[0] // 4 + 1, shape[1] // 4 + 1, 3))
    img = np.repeat(np.repeat(blocks, 4, 0), 4, 1)[:shape[0], :shape[1]]
    return np.clip(img + rng.normal(0, 0.04, img.shape), 0, 1)


@pytest.mark.parametrize("threshold", [30.0, 60.0, 120.0])
def test_clustering_matches_plain_python_reference(threshold):
    img = blocky_random()
    got = mdbscan(img, threshold, sigma=0, min_size=1, cleanup_size=0)
    want = raster_renumber(reference_clusters(img * 255.0, threshold))
    assert np.array_equal(got, want)


@pytest.mark.parametrize("min_size", [5, 20])
def test_merging_matches_plain_python_reference(min_size):
    img = blocky_random(seed=7)
    clusters = reference_clusters(img * 255.0, 60.0)
    want = raster_renumber(reference_merge(img * 255.0, clusters, min_size))
    got = mdbscan(img, 60.0, sigma=0, min_size=min_size, cleanup_size=0)
    assert np.array_equal(got, want)
    assert_valid_labels(got, min_size)


def test_threshold_is_rgb_distance_on_0_255_scale():
    # A grey step of g levels is an RGB distance g·√3: 20 levels (34.6) < 40 < 30 levels (52).
    for step, expected in ((20, 1), (30, 2)):
        img = np.full((40, 40), 100 / 255)
        img[:, 20:] = (100 + step) / 255
        assert mdbscan(img, 40.0, sigma=0).max() == expected


def test_grey_is_replicated_to_three_channels():
    img, _ = synthetic_scene(STRONG_GREY, noise=0.02)
    ref = mdbscan(img)
    assert np.array_equal(mdbscan(img[:, :, None]), ref)
    assert np.array_equal(mdbscan(np.repeat(img[:, :, None], 3, axis=2)), ref)


# ----------------------------------------------------------------------------
# Recovery of known regions


def assert_recovered(truth, labels):
    coverage, purity, majority = recovery(truth, labels)
    assert labels.max() == truth.max() + 1
    assert np.all(coverage >= 0.95), coverage
    assert np.all(purity >= 0.95), purity
    assert len(set(majority.tolist())) == len(majority)


@pytest.mark.parametrize("palette", [STRONG_RGB, STRONG_GREY], ids=["rgb", "grey"])
@pytest.mark.parametrize("noise", [0.0, 0.03])
def test_recovers_synthetic_regions_without_blur(noise, palette):
    img, truth = synthetic_scene(palette, noise=noise, seed=1)
    labels = mdbscan(img, 40.0, sigma=0)
    assert_recovered(truth, labels)
    assert_valid_labels(labels, 30)


@pytest.mark.parametrize("palette, touching", [(MODERATE_RGB, True), (MODERATE_GREY, False)], ids=["rgb", "grey"])
@pytest.mark.parametrize("noise", [0.0, 0.02])
def test_recovers_synthetic_regions_with_default_blur(noise, palette, touching):
    img, truth = synthetic_scene(palette, noise=noise, seed=1, touching=touching)
    labels = mdbscan(img, 40.0)
    assert_recovered(truth, labels)
    assert_valid_labels(labels, 30)


def test_flat_image_is_one_segment():
    for img in (np.full((50, 70), 0.4), np.full((33, 21, 3), (0.1, 0.5, 0.9)), np.zeros((64, 64))):
        assert np.array_equal(mdbscan(img), np.ones(img.shape[:2], np.int32))
    assert mdbscan(np.full((10, 10), 0.3), 5.0, min_size=1, cleanup_size=0).max() == 1


@pytest.mark.parametrize("shape", [(1, 1), (3, 3), (1, 17), (17, 1), (2, 40), (5, 5, 3)])
def test_tiny_images(shape):
    img = np.random.default_rng(0).uniform(0, 1, shape)
    for kwargs in ({}, {"sigma": 0.0, "min_size": 1, "cleanup_size": 0}, {"sigma": 0.0, "min_size": 2}):
        labels = mdbscan(img, 20.0, **kwargs)
        assert labels.shape == shape[:2]
        assert_valid_labels(labels)
    # The default sizes exceed these images: everything merges into one segment.
    assert mdbscan(img, 20.0).max() == 1


# ----------------------------------------------------------------------------
# Natural image properties


def test_threshold_is_monotone_on_natural_image(natural):
    counts = [mdbscan(natural, t).max() for t in (10, 20, 30, 40, 50, 70)]
    assert all(a >= b for a, b in zip(counts, counts[1:])), counts
    assert counts[0] > 3 * counts[-1]


@pytest.mark.parametrize("threshold", [10.0, 40.0])
def test_labels_are_connected_and_large_enough(natural, threshold):
    labels = mdbscan(natural, threshold)
    assert_valid_labels(labels, 30)
    # Without clean-up, merging alone already gives connected segments >= min_size.
    assert_valid_labels(mdbscan(natural, threshold, cleanup_size=0), 50)
    # The clean-up bound also holds when it exceeds min_size.
    assert_valid_labels(mdbscan(natural, threshold, min_size=10, cleanup_size=80), 80)


def thin_runs(labels: np.ndarray) -> np.ndarray:
    """Sizes of the 4-connected groups of pixels whose two horizontal or two vertical neighbours differ."""
    inner = labels[1:-1, 1:-1]
    thin = ((labels[1:-1, :-2] != inner) & (labels[1:-1, 2:] != inner)) | \
           ((labels[:-2, 1:-1] != inner) & (labels[2:, 1:-1] != inner))
    groups, n = ndimage.label(thin)
    return np.bincount(groups.ravel(), minlength=n + 1)[1:]


def test_clean_up_removes_one_pixel_runs(natural):
    # What may remain are isolated one-pixel teeth left where two runs went to different sides.
    raw = thin_runs(mdbscan(natural, 20.0, cleanup_size=0))
    clean = thin_runs(mdbscan(natural, 20.0))
    assert raw.max() >= 10
    assert clean.max() <= 6
    assert clean[clean >= 3].sum() < 0.1 * raw[raw >= 3].sum()


def test_deterministic_and_input_untouched(natural):
    img = natural.copy()
    a = mdbscan(img, 30.0)
    b = mdbscan(img.copy(), 30.0)
    assert np.array_equal(a, b)
    assert np.array_equal(img, natural)
    # Labels are numbered in raster order of first appearance.
    _, first = np.unique(a.ravel(), return_index=True)
    assert np.all(np.diff(first) > 0)


# ----------------------------------------------------------------------------
# Bad input


@pytest.mark.parametrize("kwargs", [
    {"threshold": 0.0}, {"threshold": -5.0}, {"threshold": float("nan")}, {"threshold": float("inf")},
    {"threshold": "40"}, {"sigma": -0.5}, {"sigma": float("nan")}, {"min_size": 0}, {"min_size": 2.5},
    {"cleanup_size": -1},
])
def test_bad_parameters_raise(kwargs):
    img = np.zeros((8, 8))
    args = {"threshold": 40.0, **kwargs}
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        mdbscan(img, args.pop("threshold"), **args)


@pytest.mark.parametrize("image", [
    np.zeros(10), np.zeros((4, 4, 3, 1)), np.zeros((4, 4, 2)), np.zeros((4, 4, 4)), np.zeros((0, 5)),
    np.zeros((4, 4), np.uint8), np.zeros((4, 4), bool),
    np.where(np.eye(4) > 0, np.nan, 0.5), np.where(np.eye(4) > 0, np.inf, 0.5),
])
def test_bad_images_raise(image):
    with pytest.raises(ValueError, match="image"):
        mdbscan(image)


# ----------------------------------------------------------------------------
# Statistics and drawing


def test_segment_stats_on_known_map():
    labels = np.ones((20, 30), np.int32)
    labels[2:6, 3:13] = 2  # 4 high, 10 wide
    labels[10:18, 20:22] = 3  # 8 high, 2 wide
    s = segment_stats(labels)
    assert s["count"] == 3
    assert s["median_width"] == 10 and s["median_height"] == 8
    assert s["median_side"] == 10 and s["mean_side"] == pytest.approx((30 + 10 + 8) / 3)
    assert s["median_area"] == 40
    assert segment_stats(np.zeros((3, 3), int))["count"] == 0


def test_boundaries_and_drawing():
    labels = np.ones((6, 8), np.int32)
    labels[:, 4:] = 2
    thin = boundaries(labels)
    thick = boundaries(labels, thick=True)
    assert thin.sum() == 6 and np.all(thin[:, 3])
    assert thick.sum() == 12 and np.all(thick[:, 3:5])
    img = np.full((6, 8), 0.5)
    out = draw_segmentation(img, labels, colour=(0.0, 1.0, 0.0))
    assert out.shape == (6, 8, 3) and out.dtype == np.float64
    assert np.all(out[:, 3] == (0.0, 1.0, 0.0))
    assert np.all(out[~thin] == 0.5)
    with pytest.raises(ValueError, match="shape"):
        draw_segmentation(img, labels[:, :5])
