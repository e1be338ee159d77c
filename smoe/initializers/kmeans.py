"""Block-based K-Means initialization (Verhack et al.; AS paper, Table II).

The image is cut into a lattice of nearly equal rectangular blocks and the
pixels of every block are clustered independently on (x, y, colour).  Each
cluster becomes one round kernel at its centroid whose expert is the cluster's
mean colour; all kernels share one bandwidth.

Budget rule.  With ``k`` clusters wanted per block and a budget of L kernels,
the lattice has about ``L / k`` blocks, i.e. a block side of about
``sqrt(H W k / L)`` px.  The budget is then shared over the blocks in
proportion to their pixel counts (largest remainders, ties broken at random),
so every block gets about ``L / n_blocks`` clusters and the total is exactly
L.  A block never gets more clusters than pixels, because L <= H W.

Features.  Positions are measured in block sides, so they span [0, 1) inside a
block, and colours (in [0, 1]) are multiplied by ``colour_weight``: a colour
step of ``1 / colour_weight`` in one channel weighs as much as a move across
the whole block (with the default 1, a black-to-white step in one channel).
A weight of 0 clusters on position only.

All blocks are clustered together as one padded batch of shape
(n_blocks, pixels_per_block, features); padding pixels carry no weight.
Lloyd's algorithm starts from k-means++ seeds drawn with the caller's
generator and runs a fixed number of steps, so the result is deterministic for
a given seed.  A cluster that loses all its pixels is re-seeded at the pixel
farthest from its own centroid among clusters that can spare one, so every
cluster ends non-empty and no kernel is dropped.
"""

from __future__ import annotations

import math

import numpy as np

from ..model import Model
from ..validate import check_finite, is_whole
from .registry import require_budget, round_kernels

#: Clusters per block when neither ``k`` nor ``block_size`` is given (Verhack et al. use a few per block).
DEFAULT_K = 4
#: Kernel standard deviation in units of the mean cluster spacing.  Half the
#: spacing beat the full spacing on kodim23 both at the start (four 128x128
#: crops, 200 kernels: +2 to +6 dB) and after 300 fitting iterations (two
#: crops: +2.2 and +2.8 dB); narrower kernels also make each iteration cheaper.
DEFAULT_BANDWIDTH = 0.5


def kmeans_init(image: np.ndarray, n_kernels: int, *, rng: np.random.Generator, k: int | None = None,
                block_size: float | None = None, colour_weight: float = 1.0, iters: int = 10,
                bandwidth: float = DEFAULT_BANDWIDTH) -> Model:
    """Round kernels at the K-Means centroids of image blocks.

    Parameters
    ----------
    image : (H, W, C) float array
    n_kernels : int
        Kernel budget L, 1 <= L <= H W; the model has exactly L kernels.
    rng : numpy.random.Generator
        Draws the k-means++ seeds and breaks ties when sharing the budget.
    k : int, optional
        Clusters wanted per block (default 4); sets the block side to about
        ``sqrt(H W k / L)``.  Give ``k`` or ``block_size``, not both.
    block_size : float, optional
        Block side in pixels; the lattice has ``round(W / block_size)`` by
        ``round(H / block_size)`` blocks (at least 1 each) and the budget is
        shared over them.  A block larger than the image means one block.
    colour_weight : float
        Scale of the colour features against positions measured in block sides.
    iters : int
        Lloyd steps after seeding.
    bandwidth : float
        Kernel standard deviation in units of the mean cluster spacing
        ``sqrt(H W / L)`` (the grid spacing for the same budget); see
        :data:`DEFAULT_BANDWIDTH`.

    Returns
    -------
    Model
        L round kernels, pi = 1, experts = cluster mean colours.
    """
    n_kernels = require_budget("kmeans", n_kernels)
    h, w, _ = image.shape
    _check_options(k, block_size, colour_weight, iters, bandwidth)
    nby, nbx = _lattice(h, w, n_kernels, k, block_size)
    rows, cols = _splits(h, nby), _splits(w, nbx)
    feats, mask, xy, colours = _gather_blocks(image, rows, cols, colour_weight)
    per_block = _share_budget(mask.sum(1), n_kernels, rng)
    assign = block_kmeans(feats, mask, per_block, iters, rng)
    centres, experts = _cluster_means(assign, per_block, xy, colours)
    model = round_kernels(centres, bandwidth * math.sqrt(h * w / len(centres)), image)
    return Model(model.mu, model.chol, model.pi, experts)


# ----------------------------------------------------------------------------
# Options and block layout


def _check_options(k, block_size, colour_weight, iters, bandwidth):
    # The budget (1 <= L <= H W) is checked by smoe.initializers.initialize.
    if k is not None and block_size is not None:
        raise ValueError("kmeans: give k (clusters per block) or block_size, not both")
    if k is not None and not (is_whole(k) and k >= 1):
        raise ValueError(f"kmeans: k must be an integer >= 1 (clusters per block), got {k!r}")
    if block_size is not None:
        check_finite("kmeans: block_size (pixels)", block_size, low=0, low_open=True)
    check_finite("kmeans: colour_weight", colour_weight, low=0)
    if not (is_whole(iters) and iters >= 0):
        raise ValueError(f"kmeans: iters must be an integer >= 0 (Lloyd steps), got {iters!r}")
    check_finite("kmeans: bandwidth", bandwidth, low=0, low_open=True)


def _lattice(h: int, w: int, n_kernels: int, k: int | None, block_size: float | None) -> tuple[int, int]:
    """Block rows and columns: about ``n_kernels / k`` blocks of roughly square shape."""
    if block_size is not None:
        nby, nbx = round(h / block_size), round(w / block_size)
    else:
        n_blocks = n_kernels / (DEFAULT_K if k is None else k)
        # Choosing the row count from the aspect ratio and then the column count
        # from the block count keeps n_blocks close even for very thin images.
        nby = round(math.sqrt(n_blocks * h / w))
        nbx = round(n_blocks / max(nby, 1))
    return min(max(nby, 1), h), min(max(nbx, 1), w)


def _splits(n: int, parts: int) -> np.ndarray:
    """(parts + 1,) boundaries cutting ``range(n)`` into parts whose sizes differ by at most 1."""
    return (np.arange(parts + 1) * n) // parts


def _gather_blocks(image, rows, cols, colour_weight):
    """Pixels of every block as one padded batch.

    Returns
    -------
    feats : (B, P, 2 + C) float32
        Clustering features: position in block sides, weighted colour.
    mask : (B, P) bool
        True for real pixels, False for padding.
    xy : (B, P, 2) float64
        Pixel centres ``(c + 0.5, r + 0.5)``.
    colours : (B, P, C) float64
    """
    h, w, c = image.shape
    bh, bw = int(np.diff(rows).max()), int(np.diff(cols).max())
    r = rows[:-1, None] + np.arange(bh)                      # (nby, bh)
    q = cols[:-1, None] + np.arange(bw)                      # (nbx, bw)
    valid = (r < rows[1:, None])[:, None, :, None] & (q < cols[1:, None])[None, :, None, :]
    r, q = np.minimum(r, h - 1), np.minimum(q, w - 1)        # padding reads a real pixel, masked out
    shape = (len(rows) - 1, len(cols) - 1, bh, bw)
    rr = np.broadcast_to(r[:, None, :, None], shape).reshape(-1, bh * bw)
    qq = np.broadcast_to(q[None, :, None, :], shape).reshape(-1, bh * bw)
    colours = image[rr, qq].astype(np.float64)
    xy = np.stack([qq + 0.5, rr + 0.5], -1)
    side = math.sqrt(bh * bw)
    origin = xy[:, :1, :]                                    # top-left pixel of each block
    feats = np.concatenate([(xy - origin) / side, colour_weight * colours], -1).astype(np.float32)
    return feats, valid.reshape(-1, bh * bw), xy, colours


def _share_budget(pixels: np.ndarray, n_kernels: int, rng: np.random.Generator) -> np.ndarray:
    """(B,) clusters per block, proportional to ``pixels`` by largest remainders, summing to n_kernels."""
    quota = n_kernels * pixels / pixels.sum()
    count = np.floor(quota).astype(np.int64)
    left = n_kernels - int(count.sum())
    # Random tie-breaking spreads the extra clusters over equal blocks instead
    # of piling them up in the first rows.
    order = np.lexsort((rng.random(len(quota)), -(quota - count)))
    count[order[:left]] += 1
    return count


# ----------------------------------------------------------------------------
# Batched K-Means


def block_kmeans(feats: np.ndarray, mask: np.ndarray, k: np.ndarray, iters: int,
                 rng: np.random.Generator) -> np.ndarray:
    """Cluster every block of a padded batch independently.

    Parameters
    ----------
    feats : (B, P, F) float array
    mask : (B, P) bool
        Real pixels; padding never joins a cluster.
    k : (B,) int
        Clusters in each block, ``0 <= k[b] <= mask[b].sum()``.
    iters : int
        Lloyd steps after k-means++ seeding.
    rng : numpy.random.Generator

    Returns
    -------
    (B, P) int64
        Cluster index in ``0..k[b]-1`` of every real pixel, -1 for padding.
        Every cluster is non-empty.
    """
    active = np.arange(max(int(k.max()), 1)) < k[:, None]            # (B, K)
    norms = (feats ** 2).sum(-1)
    centroids = _seed_plus_plus(feats, norms, mask, active, rng)
    assign = _assign(feats, norms, mask, centroids, active)
    for _ in range(iters):
        centroids = _centroids(feats, assign, active)
        assign = _assign(feats, norms, mask, centroids, active)
    return assign


def _sq_dist(feats, norms, centres):
    """(B, P, K) squared distances between pixels (B, P, F) and centres (B, K, F).

    ``|f - c|^2 = |f|^2 - 2 f.c + |c|^2`` as a batched matrix product: much
    faster than reducing a (B, P, K, F) difference over its short last axis.
    """
    d = norms[..., None] - 2.0 * feats @ centres.transpose(0, 2, 1) + (centres ** 2).sum(-1)[:, None, :]
    return np.maximum(d, 0.0)


def _seed_plus_plus(feats, norms, mask, active, rng):
    """(B, K, F) greedy k-means++ seeds.

    Each next seed is the best, by the resulting sum of squared distances, of a
    few pixels drawn with probability proportional to the squared distance to
    the seeds so far.  The extra candidates matter for thin features such as a
    one-pixel strip of another colour at a block border, which a single draw
    misses often enough to leave a cluster that mixes two colours.
    """
    b, p, f = feats.shape
    n_k = active.shape[1]
    trials = 2 + int(math.log(n_k))
    rows = np.arange(b)
    centroids = np.zeros((b, n_k, f), feats.dtype)
    d2 = mask.astype(np.float64)                                     # first seed: uniform over real pixels
    for j in range(n_k):
        # Only duplicate pixels could leave no mass; fall back to a uniform draw then.
        d2 = np.where(d2.sum(1, keepdims=True) > 0, d2, mask)
        cum = np.cumsum(d2, 1)
        u = (1.0 - rng.random((b, trials))) * cum[:, -1:]            # in (0, total], never picks zero mass
        cand = np.minimum((cum[:, None, :] < u[..., None]).sum(-1), p - 1)            # (B, T)
        new = _sq_dist(feats, norms, feats[rows[:, None], cand])                      # (B, P, T)
        if j:
            new = np.minimum(d2[..., None], new)
        best = (new * mask[..., None]).sum(1).argmin(1)
        centroids[:, j] = feats[rows, cand[rows, best]]
        d2 = np.where(active[:, j:j + 1], new[rows, :, best], d2) * mask
    return centroids


def _assign(feats, norms, mask, centroids, active):
    """(B, P) nearest active centroid of every pixel (-1 on padding), with empty clusters re-seeded."""
    d = np.where(active[:, None, :], _sq_dist(feats, norms, centroids), np.inf)     # (B, P, K)
    assign = np.where(mask, d.argmin(-1), -1)
    counts = _cluster_counts(assign, active.shape[1])
    if (active & (counts == 0)).any():
        dist = np.where(mask, d.min(-1), -np.inf)
        _reseed_empty(assign, dist, counts, active)
    return assign


def _slots(assign, n_k):
    """(B, P) flat index ``block * (K + 1) + cluster``; padding goes to each block's spare slot K."""
    return np.arange(assign.shape[0])[:, None] * (n_k + 1) + np.where(assign >= 0, assign, n_k)


def _cluster_counts(assign, n_k):
    """(B, K) pixel count of every cluster; padding (assign -1) is skipped."""
    b = assign.shape[0]
    return np.bincount(_slots(assign, n_k).ravel(), minlength=b * (n_k + 1)).reshape(b, n_k + 1)[:, :n_k]


def _cluster_sums(assign, values, n_k):
    """(B, K, F) sums of ``values`` (B, P, F) over every cluster; padding is skipped."""
    b, p, f = values.shape
    slot = _slots(assign, n_k).ravel()
    flat = values.reshape(b * p, f)
    sums = np.stack([np.bincount(slot, flat[:, i], minlength=b * (n_k + 1)) for i in range(f)], -1)
    return sums.reshape(b, n_k + 1, f)[:, :n_k]


def _centroids(feats, assign, active):
    """(B, K, F) cluster means; all active clusters are non-empty after :func:`_assign`."""
    counts = _cluster_counts(assign, active.shape[1])
    sums = _cluster_sums(assign, feats, active.shape[1])
    return (sums / np.maximum(counts, 1)[..., None]).astype(feats.dtype)


def _reseed_empty(assign, dist, counts, active):
    """Give every empty active cluster the farthest pixel of a cluster with at least two pixels.

    ``assign``, ``dist`` (squared distance of each pixel to its centroid, -inf
    on padding) and ``counts`` are updated in place.
    """
    blocks = np.arange(assign.shape[0])
    for j in range(active.shape[1]):
        empty = active[:, j] & (counts[:, j] == 0)
        if not empty.any():
            continue
        can_give = (assign >= 0) & (np.take_along_axis(counts, np.maximum(assign, 0), 1) > 1)
        pick = np.where(can_give, dist, -np.inf).argmax(1)
        b, p = blocks[empty], pick[empty]
        counts[b, assign[b, p]] -= 1
        counts[b, j] += 1
        assign[b, p] = j
        dist[b, p] = -np.inf                      # a moved pixel is not moved again


def _cluster_means(assign, k, xy, colours):
    """(L, 2) centroids in pixels and (L, C) mean colours of all non-empty active clusters."""
    n_k = max(int(k.max()), 1)
    counts = _cluster_counts(assign, n_k)
    sums = _cluster_sums(assign, np.concatenate([xy, colours], -1), n_k)
    keep = (np.arange(n_k) < k[:, None]) & (counts > 0)
    means = sums[keep] / counts[keep][:, None]
    return means[:, :2], means[:, 2:].astype(np.float32)
