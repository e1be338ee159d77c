"""AS-SMoE: adaptive segmentation-based initialization (SPEC §3; AS paper, Section IV).

The image is segmented with MDBSCAN; every segment gets a square *corona
bounding block* (CBB) that is resampled to ``block x block`` pixels; a small
SMoE model is fitted to every CBB by gradient descent, doubling its kernels
until it reaches a target PSNR (AS Algorithm 1); the kernels whose centres lie
inside their segment are mapped back to the image and together form the
initial model.  The kernel count is an outcome of the target PSNR, not an
input.

Decisions (the papers are silent or loose on these)
----------------------------------------------------
Boxes.  Side ``S = max(bbox height, bbox width) + 2 * corona`` in whole
pixels, centred on the segment's bounding box (rounded down to a whole
pixel).  Where the box fits inside the image it is shifted inside, so it
holds real pixels only (it still contains the segment, whose box is not
larger); on an axis shorter than ``S`` it stays centred and the missing
pixels replicate the nearest edge pixel.  Either way the box is an exact
square of integer origin ``o`` and the local -> image map is
``x = o + s * u`` with ``s = S / block``, so the export is exact.

Resampling.  Block pixel (i, j) stands for the image square
``o + s * [j, j + 1) x [i, i + 1)``.  Shrinking (``s > 1``) averages the image
over that square with exact fractional pixel overlaps (area averaging, an
anti-aliasing box filter); enlarging (``s < 1``) samples bilinearly at the
square's centre.  Both are separable ``(block, n)`` weight matrices.

Batched local fits.  All blocks are fitted together in one "mosaic" image
rendered by :func:`smoe.fused_cpu.rasterize_cpu` with hand-made tile bins:
each block is cut into its ``(block / 16)^2`` tiles of 16 x 16 pixels, and a
tile lists exactly the kernels of its own block, so every block is a global
SMoE on its own and blocks never interact.  The tiles of one block are *not*
neighbours in the mosaic: sub-tile q of block b is tile ``q * B + b``, and
every kernel is passed once per sub-tile with its centre shifted to that
tile.  Each kernel copy then touches one tile only, so its gradient is
summed by one thread, and the copies are added up in a fixed order here:
results do not depend on the thread count, the number of blocks fitted
together, or a block's place in the mosaic.  For the same reason local
centres are kept on a grid of ``2**-12`` px: a centre plus its mosaic shift
is then exact in float32.  Adam is run in NumPy with elementwise operations
only (per-kernel step counts; bias corrections from a table), which is also
independent of how the kernels are batched.  Hence ``workers=2`` gives
bit-for-bit the result of ``workers=1``.

Algorithm 1 details.  L = 10 kernels per block at uniform random centres,
round with standard deviation ``block / (2 sqrt(L))`` (about 5 px: ten such
disks tile the block), ``pi = 1 / L``, experts = the block pixel under the
centre.  Per block the loss is MSE + ``lam * sum(pi)``; the parameters are
centres, ``(log b00, b10, log b11)`` and ``pi`` and experts, as in
:mod:`smoe.fit`.  Every iteration each block's PSNR is measured and its best
parameters (by PSNR) are kept; a block whose PSNR reaches ``target_psnr`` is
frozen and leaves the mosaic.  Kernels whose ``pi`` drops to ``<= 0`` are
removed at once.  Every ``double_every`` iterations each block still fitting
doubles its kernels (unless that exceeds ``max_kernels``): every kernel gets a
copy whose centre is jittered by a normal offset of ``jitter`` px, both keep
half the gate weight (so the block's output barely moves), and both keep the
parent's Adam state.  After ``max_iters`` iterations the best parameters of
every block are used.

Export.  A kernel is kept if the image pixel under its mapped centre belongs
to its segment; the others ("supporting" kernels) are dropped.
``mu = o + s * mu_local`` and ``B = B_local / s`` (covariance times ``s^2``);
``bandwidth_factor`` widens every kernel (``B /= factor``).  Gate weights
are rescaled per block to a mean of 1: blocks that doubled more often have
smaller gates, which would otherwise lose every boundary to blocks with few
kernels in the global model.  With a kernel budget, the kernels owning the
fewest image pixels (estimated from gate weight times kernel area) go first.
"""

from __future__ import annotations

import math
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, fields
from numbers import Integral, Real

import numpy as np
import torch
from scipy import ndimage

from ..model import Model
from ..tiles import TILE, TileBins, TileGrid
from . import register

#: Local centres live on this grid (px) so that centre + mosaic shift is exact in float32.
_QUANTUM = 2.0 ** -12
#: Mosaic width in tiles, and the most tiles one mosaic may hold: keeps every
#: mosaic coordinate below 4096 px, where float32 still resolves the quantum.
_MOSAIC_TILES_X = 128
_MOSAIC_MAX_TILES = _MOSAIC_TILES_X * 240
_ADAM_BETAS = (0.9, 0.999)
_ADAM_EPS = 1e-8
#: Bounds on the local log Cholesky diagonal: standard deviations between
#: 1/8 px and two block widths (for block = 32).
_LOG_B_RANGE = (math.log(1.0 / 64.0), math.log(8.0))


# ----------------------------------------------------------------------------
# Settings and report


@dataclass(frozen=True)
class LocalFitSettings:
    """Settings of the batched local fits (AS Algorithm 1), in block pixels.

    kernels : initial kernels per block (the paper's L = 10)
    target_psnr : a block stops once its PSNR reaches this (dB, Q)
    max_iters : iterations before giving up (E)
    double_every : a block still below the target doubles its kernels every
        this many iterations (C)
    max_kernels : no doubling beyond this many kernels per block
    lam : weight of the L1 term ``lam * sum(pi)`` per block
    lr_mu, lr_mu_final : Adam step for the centres (px), decaying
        exponentially from the first to the second over ``max_iters``
    lr_chol, lr_pi, lr_experts : Adam steps for ``(log b00, b10, log b11)``,
        gate weights and experts
    jitter : standard deviation (px) of the centre offset of a doubled kernel
    """

    kernels: int = 10
    target_psnr: float = 30.0
    max_iters: int = 300
    double_every: int = 50
    max_kernels: int = 80
    lam: float = 1e-4
    lr_mu: float = 0.2
    lr_mu_final: float = 0.02
    lr_chol: float = 0.03
    lr_pi: float = 0.005
    lr_experts: float = 0.02
    jitter: float = 0.5

    def validate(self) -> "LocalFitSettings":
        for name in ("kernels", "max_iters", "double_every", "max_kernels"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, Integral) or v < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
        if self.max_kernels < self.kernels:
            raise ValueError(f"max_kernels ({self.max_kernels}) must be at least kernels ({self.kernels})")
        if not _is_real(self.target_psnr) or not math.isfinite(self.target_psnr):
            raise ValueError(f"target_psnr must be a finite number of dB, got {self.target_psnr!r}")
        for name in ("lam", "lr_mu", "lr_mu_final", "lr_chol", "lr_pi", "lr_experts", "jitter"):
            v = getattr(self, name)
            if not _is_real(v) or not math.isfinite(v) or v < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
        return self


def _is_real(v) -> bool:
    return isinstance(v, Real) and not isinstance(v, bool)


@dataclass
class AdaptiveReport:
    """What one AS-SMoE initialization did.

    segments : number of segments (= CBBs)
    blocks_reached_target : blocks whose local PSNR reached the target
    kernels_local : kernels of all blocks' best local models (pi > 0)
    kernels_exported : of those, the ones inside their segment
    kernels_final : kernels in the returned model (after the ``n_kernels`` cap)
    iterations : iterations the batched local fit ran (the slowest block's)
    mean_block_iterations : iterations per block, averaged
    mean_block_psnr : best local PSNR per block (block pixels), averaged
    seconds_segmentation, seconds_local_fit, seconds_export, seconds_total
    block_psnr, block_kernels, block_iterations : (segments,) per-block arrays
    settings : the settings used
    """

    segments: int
    blocks_reached_target: int
    kernels_local: int
    kernels_exported: int
    kernels_final: int
    iterations: int
    mean_block_iterations: float
    mean_block_psnr: float
    seconds_segmentation: float
    seconds_local_fit: float
    seconds_export: float
    seconds_total: float
    block_psnr: np.ndarray = field(repr=False)
    block_kernels: np.ndarray = field(repr=False)
    block_iterations: np.ndarray = field(repr=False)
    settings: dict = field(default_factory=dict, repr=False)

    def summary(self) -> dict:
        """The scalar fields as a plain dict."""
        skip = {"block_psnr", "block_kernels", "block_iterations", "settings"}
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in skip}


# ----------------------------------------------------------------------------
# Corona bounding blocks


def dense_labels(labels, shape) -> tuple[np.ndarray, np.ndarray]:
    """Renumber the positive labels of a label map to 1..N.

    Parameters
    ----------
    labels : (H, W) integer array
        Segment labels; values <= 0 mark pixels of no segment.
    shape : (int, int)
        Expected (H, W).

    Returns
    -------
    dense : (H, W) int32 array, 0 where ``labels <= 0``
    ids : (N,) the original label of each dense label 1..N
    """
    lab = np.asarray(labels)
    if lab.shape != tuple(shape) or not np.issubdtype(lab.dtype, np.integer):
        raise ValueError(f"labels must be an integer array of shape {tuple(shape)}, "
                         f"got dtype {lab.dtype} and shape {lab.shape}")
    ids, inverse = np.unique(lab, return_inverse=True)
    inverse = inverse.reshape(lab.shape)
    pos = ids > 0
    if not pos.any():
        raise ValueError("labels contain no segment (no value > 0)")
    first = int(np.argmax(pos))
    dense = np.where(inverse >= first, inverse - first + 1, 0).astype(np.int32)
    return dense, ids[first:]


def _place(lo: int, hi: int, side: int, n: int) -> int:
    """Start of a box of ``side`` pixels centred on ``[lo, hi)``, moved inside ``[0, n)`` if it fits."""
    start = (lo + hi - side) // 2
    if side <= n:
        start = min(max(start, 0), n - side)
    return start


def corona_boxes(labels: np.ndarray, corona: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Square corona bounding boxes of the segments 1..N of a dense label map.

    Parameters
    ----------
    labels : (H, W) int array
        Labels 1..N (0 = no segment), e.g. from :func:`dense_labels`.
    corona : int
        Margin added on every side of the segment's square box (px).

    Returns
    -------
    origins : (N, 2) int64
        ``(x0, y0)`` of each box's top-left corner in pixel-edge coordinates;
        may be negative where the image is smaller than the box.
    sides : (N,) int64
        Box side in pixels.
    """
    h, w = labels.shape
    boxes = ndimage.find_objects(labels)
    n = len(boxes)
    origins = np.zeros((n, 2), np.int64)
    sides = np.zeros(n, np.int64)
    for k, box in enumerate(boxes):
        if box is None:
            raise ValueError(f"label {k + 1} is empty; renumber the labels with dense_labels first")
        rows, cols = box
        side = max(rows.stop - rows.start, cols.stop - cols.start) + 2 * corona
        origins[k] = (_place(cols.start, cols.stop, side, w), _place(rows.start, rows.stop, side, h))
        sides[k] = side
    return origins, sides


def resample_weights(start: int, side: int, n: int, size: int) -> tuple[np.ndarray, int, int]:
    """Separable resampling weights of the box ``[start, start + side)`` on an axis of ``n`` pixels.

    Output sample i stands for the image interval ``start + s * [i, i + 1)``
    with ``s = side / size``.  For ``s >= 1`` it is the exact area average of
    the image over that interval; for ``s < 1`` the linear interpolation at
    its centre.  Pixels beyond the image edge repeat the edge pixel.

    Returns
    -------
    weights : (size, c1 - c0) float64, rows summing to 1
    c0, c1 : int
        The image pixel range ``[c0, c1)`` the weights apply to.
    """
    s = side / size
    full = np.zeros((size, n))
    rows = np.arange(size)
    if s >= 1:
        edges = start + s * np.arange(size + 1)
        pix = np.arange(start, start + side)
        lo = np.maximum(edges[:-1, None], pix[None, :])
        hi = np.minimum(edges[1:, None], pix[None, :] + 1)
        wgt = np.clip(hi - lo, 0.0, None) / s
        idx = np.broadcast_to(np.clip(pix, 0, n - 1), wgt.shape)
        np.add.at(full, (np.broadcast_to(rows[:, None], wgt.shape), idx), wgt)
    else:
        x = start + s * (rows + 0.5) - 0.5  # continuous pixel index of each sample centre
        k0 = np.floor(x)
        f = x - k0
        k0 = k0.astype(np.int64)
        np.add.at(full, (rows, np.clip(k0, 0, n - 1)), 1.0 - f)
        np.add.at(full, (rows, np.clip(k0 + 1, 0, n - 1)), f)
    used = np.nonzero(full.any(axis=0))[0]
    c0, c1 = int(used[0]), int(used[-1]) + 1
    return full[:, c0:c1], c0, c1


def extract_blocks(image: np.ndarray, origins: np.ndarray, sides: np.ndarray, block: int = 32) -> np.ndarray:
    """Resample every box of an image to ``block x block`` pixels.

    Parameters
    ----------
    image : (H, W, C) float array
    origins : (B, 2) int, ``(x0, y0)`` per box
    sides : (B,) int
    block : int

    Returns
    -------
    (B, block, block, C) float32
    """
    h, w, c = image.shape
    out = np.empty((len(sides), block, block, c), np.float32)
    for b, ((x0, y0), side) in enumerate(zip(origins.tolist(), sides.tolist())):
        wy, r0, r1 = resample_weights(y0, side, h, block)
        wx, c0, c1 = resample_weights(x0, side, w, block)
        tmp = np.tensordot(wy, image[r0:r1, c0:c1].astype(np.float64), axes=(1, 0))  # (block, cw, C)
        out[b] = np.einsum("jk,ikc->ijc", wx, tmp)
    return out


# ----------------------------------------------------------------------------
# The mosaic: many blocks rendered by one fused rasterizer call


class Mosaic:
    """Tile layout that renders ``n_blocks`` independent ``block x block`` SMoE models at once.

    Sub-tile q (row-major among the block's ``(block/16)^2`` tiles) of block b
    is mosaic tile ``q * n_blocks + b``; mosaic tiles are laid out row-major,
    :data:`_MOSAIC_TILES_X` per row.  Kernels are held in *local* block
    coordinates ``[0, block)^2``; the kernels of block b are the rows
    ``[kstart[b], kend[b])`` of the parameter arrays.
    """

    def __init__(self, n_blocks: int, block: int):
        if block % TILE or block < TILE:
            raise ValueError(f"block must be a positive multiple of {TILE}, got {block}")
        self.n_blocks, self.block = n_blocks, block
        self.k = block // TILE
        self.nq = self.k * self.k
        self.tiles = self.nq * n_blocks
        if self.tiles > _MOSAIC_MAX_TILES:
            raise ValueError(f"at most {_MOSAIC_MAX_TILES // self.nq} blocks fit in one mosaic, got {n_blocks}")
        self.ntx = max(1, min(_MOSAIC_TILES_X, self.tiles))
        self.nty = max(1, -(-self.tiles // self.ntx))
        self.grid = TileGrid(self.nty * TILE, self.ntx * TILE)
        t = np.arange(self.tiles).reshape(self.nq, n_blocks)
        q = np.arange(self.nq)[:, None]
        # Shift from local block coordinates to the mosaic tile of sub-tile q.
        sx = TILE * (t % self.ntx) - TILE * (q % self.k)
        sy = TILE * (t // self.ntx) - TILE * (q // self.k)
        self.shift = np.stack([sx, sy], -1).astype(np.float32)  # (nq, n_blocks, 2)

    @staticmethod
    def max_blocks(block: int) -> int:
        """The most blocks of side ``block`` one mosaic holds."""
        return _MOSAIC_MAX_TILES // (block // TILE) ** 2

    def to_tiles(self, blocks: np.ndarray) -> np.ndarray:
        """(n_blocks, block, block, C) -> (H, W, C) mosaic image (unused tiles are 0)."""
        B, k, C = self.n_blocks, self.k, blocks.shape[-1]
        a = blocks.reshape(B, k, TILE, k, TILE, C).transpose(1, 3, 0, 2, 4, 5).reshape(self.tiles, TILE, TILE, C)
        full = np.zeros((self.nty * self.ntx, TILE, TILE, C), blocks.dtype)
        full[: self.tiles] = a
        return full.reshape(self.nty, self.ntx, TILE, TILE, C).transpose(0, 2, 1, 3, 4).reshape(
            self.grid.height, self.grid.width, C)

    def from_tiles(self, image: np.ndarray) -> np.ndarray:
        """(H, W, C) mosaic image -> (n_blocks, block, block, C)."""
        B, k, C = self.n_blocks, self.k, image.shape[-1]
        a = image.reshape(self.nty, TILE, self.ntx, TILE, C).transpose(0, 2, 1, 3, 4)
        a = a.reshape(self.nty * self.ntx, TILE, TILE, C)[: self.tiles]
        return a.reshape(k, k, B, TILE, TILE, C).transpose(2, 0, 3, 1, 4, 5).reshape(B, self.block, self.block, C)

    def bins(self, kstart: np.ndarray, kend: np.ndarray, n_kernels: int) -> TileBins:
        """Bins listing, for every tile, the copy of its block's kernels made for that sub-tile."""
        starts = np.zeros(self.nty * self.ntx, np.int64)
        ends = np.zeros_like(starts)
        base = np.arange(self.nq)[:, None] * n_kernels
        starts[: self.tiles] = (base + kstart[None, :]).ravel()
        ends[: self.tiles] = (base + kend[None, :]).ravel()
        ids = torch.arange(self.nq * n_kernels)
        return TileBins(torch.from_numpy(starts), torch.from_numpy(ends), ids)

    def render(self, mu, chol, pi, experts, owner, *, grad: bool = False):
        """Render local kernels; block of kernel j is ``owner[j]`` (sorted ascending).

        Parameters
        ----------
        mu : (N, 2) float32, local centres on the :data:`_QUANTUM` grid
        chol : (N, 3) float32
        pi : (N,) float32, all > 0
        experts : (N, C) float32
        owner : (N,) int, ascending, in ``[0, n_blocks)``
        grad : bool
            Also return a function ``backward(gout)`` that, given dLoss/dimage as
            (n_blocks, block, block, C), returns the gradients for mu, chol, pi,
            experts as NumPy arrays.

        Returns
        -------
        (n_blocks, block, block, C) float32 array [, backward]
        """
        from ..fused_cpu import rasterize_cpu

        n = mu.shape[0]
        blocks = np.arange(self.n_blocks)
        kstart = np.searchsorted(owner, blocks, "left")
        kend = np.searchsorted(owner, blocks, "right")
        bins = self.bins(kstart, kend, n)
        # One copy of every kernel per sub-tile; the add is exact on the quantum grid.
        mu_m = (mu[None] + self.shift[:, owner]).reshape(-1, 2)
        leaves = [torch.from_numpy(np.ascontiguousarray(a)) for a in
                  (mu_m, np.tile(chol, (self.nq, 1)), np.tile(pi, self.nq), np.tile(experts, (self.nq, 1)))]
        if grad:
            for t in leaves:
                t.requires_grad_()
        with torch.set_grad_enabled(grad):
            out = rasterize_cpu(*leaves, self.grid, bins, mode="smoe")
        image = self.from_tiles(out.detach().numpy())
        if not grad:
            return image

        def backward(gout: np.ndarray):
            out.backward(torch.from_numpy(np.ascontiguousarray(self.to_tiles(gout))))
            result = []
            for t in leaves:
                g = t.grad.numpy().reshape(self.nq, n, *t.shape[1:])
                acc = g[0].copy()
                for q in range(1, self.nq):  # fixed order: independent of batching
                    acc += g[q]
                result.append(acc)
            return result

        return image, backward


def render_blocks(mu, chol, pi, experts, owner, n_blocks: int, block: int = 32) -> np.ndarray:
    """Render per-block local SMoE models, each on its own ``block x block`` raster.

    Parameters
    ----------
    mu : (N, 2), chol : (N, 3), pi : (N,), experts : (N, C) arrays
        Kernels in local block coordinates; kernels with ``pi <= 0`` are ignored.
    owner : (N,) int
        Block of each kernel, in ``[0, n_blocks)``.

    Returns
    -------
    (n_blocks, block, block, C) float32
    """
    owner = np.asarray(owner, np.int64)
    keep = np.asarray(pi) > 0
    order = np.argsort(owner[keep], kind="stable")
    pick = lambda a: np.ascontiguousarray(np.asarray(a, np.float32)[keep][order])  # noqa: E731
    out = []
    step = Mosaic.max_blocks(block)
    own = owner[keep][order]
    m = _quantize(pick(mu))
    for lo in range(0, n_blocks, step):
        hi = min(n_blocks, lo + step)
        sel = (own >= lo) & (own < hi)
        mosaic = Mosaic(hi - lo, block)
        out.append(mosaic.render(m[sel], pick(chol)[sel], pick(pi)[sel], pick(experts)[sel], own[sel] - lo))
    return np.concatenate(out) if out else np.zeros((0, block, block, np.shape(experts)[1]), np.float32)


def _quantize(mu: np.ndarray) -> np.ndarray:
    return (np.round(mu * np.float32(1 / _QUANTUM)) * np.float32(_QUANTUM)).astype(np.float32)


# ----------------------------------------------------------------------------
# Batched local fits (AS Algorithm 1)

_PARAMS = ("mu", "lc", "pi", "ex")


class _Adam:
    """Adam with a step count per kernel, in NumPy, elementwise only (batch-independent)."""

    def __init__(self, max_steps: int):
        b1, b2 = _ADAM_BETAS
        t = np.arange(max_steps + 2, dtype=np.float64)
        t[0] = 1.0  # unused
        self.bc1 = (1.0 - b1 ** t).astype(np.float32)
        self.bc2 = (1.0 - b2 ** t).astype(np.float32)

    def step(self, p, m, v, g, t, lr):
        b1, b2 = _ADAM_BETAS
        m *= np.float32(b1)
        m += np.float32(1 - b1) * g
        v *= np.float32(b2)
        v += np.float32(1 - b2) * (g * g)
        shape = (-1,) + (1,) * (p.ndim - 1)
        mhat = m / self.bc1[t].reshape(shape)
        vhat = v / self.bc2[t].reshape(shape)
        p -= np.float32(lr) * mhat / (np.sqrt(vhat) + np.float32(_ADAM_EPS))


def _initial_kernels(blocks: np.ndarray, block_ids: np.ndarray, base_seed: int, cfg: LocalFitSettings):
    """L random round kernels per block; a generator per block seeded by (base_seed, block id)."""
    B, size, _, C = blocks.shape
    L = cfg.kernels
    gens = [np.random.default_rng([base_seed, int(i)]) for i in block_ids]
    mu = _quantize(np.concatenate([g.uniform(0.0, size, (L, 2)) for g in gens]).astype(np.float32)) \
        if B else np.zeros((0, 2), np.float32)
    owner = np.repeat(np.arange(B), L)
    sigma = size / (2.0 * math.sqrt(L))
    lc = np.tile(np.array([-math.log(sigma), 0.0, -math.log(sigma)], np.float32), (B * L, 1))
    pi = np.full(B * L, 1.0 / L, np.float32)
    px = np.clip(np.floor(mu).astype(np.int64), 0, size - 1)
    ex = blocks[owner, px[:, 1], px[:, 0]].astype(np.float32)
    return gens, {"mu": mu, "lc": lc, "pi": pi, "ex": ex, "owner": owner}


def _chol(lc: np.ndarray) -> np.ndarray:
    return np.stack([np.exp(lc[:, 0]), lc[:, 1], np.exp(lc[:, 2])], 1).astype(np.float32)


class _LocalFit:
    """State of the batched fit of one chunk of blocks.

    Per-kernel arrays (rows grouped by block, ascending) live in ``self.k``:
    parameters, Adam moments and step counts, the owning block, and ``best_*``,
    a copy of the parameters aligned with the current rows that holds a block's
    best snapshot while ``aligned[b]`` is True.  When a block's rows change
    (doubling, pruning, freezing) its aligned snapshot moves to ``archive``.
    """

    def __init__(self, blocks, block_ids, base_seed, cfg: LocalFitSettings):
        self.cfg = cfg
        self.blocks = np.ascontiguousarray(blocks, np.float32)
        B, self.size, _, C = blocks.shape
        self.npx = self.size * self.size * C
        self.gens, k = _initial_kernels(self.blocks, block_ids, base_seed, cfg)
        for name in _PARAMS:
            k["m_" + name] = np.zeros_like(k[name])
            k["v_" + name] = np.zeros_like(k[name])
            k["best_" + name] = k[name].copy()
        k["t"] = np.zeros(len(k["owner"]), np.int64)
        self.k = k
        self.active = np.ones(B, bool)
        self.aligned = np.zeros(B, bool)
        self.archive: dict[int, tuple] = {}
        self.best_psnr = np.full(B, -np.inf)
        self.iters = np.zeros(B, np.int64)
        self.reached = np.zeros(B, bool)
        self.adam = _Adam(cfg.max_iters)
        self._mosaic_for: tuple | None = None

    # -- bookkeeping ---------------------------------------------------------
    def _rows(self, b):
        own = self.k["owner"]
        return slice(np.searchsorted(own, b, "left"), np.searchsorted(own, b, "right"))

    def _commit(self, blocks):
        """Move the aligned best snapshots of ``blocks`` to the archive."""
        for b in blocks:
            if self.aligned[b]:
                r = self._rows(b)
                self.archive[int(b)] = tuple(self.k["best_" + n][r].copy() for n in _PARAMS)
                self.aligned[b] = False

    def _select(self, keep):
        self.k = {name: a[keep] for name, a in self.k.items()}

    def _mosaic(self):
        ids = np.nonzero(self.active)[0]
        key = tuple(ids)
        if self._mosaic_for != key:
            self._mosaic_for = key
            self._ids = ids
            self._mos = Mosaic(len(ids), self.size)
            self._target = self.blocks[ids]
        return self._ids, self._mos, self._target

    # -- one iteration -------------------------------------------------------
    def run(self):
        cfg = self.cfg
        decay = (cfg.lr_mu_final / cfg.lr_mu) ** (1.0 / cfg.max_iters) if cfg.lr_mu > 0 and cfg.lr_mu_final > 0 \
            else 1.0
        it = 0
        for it in range(1, cfg.max_iters + 1):
            if not self.active.any():
                it -= 1
                break
            last = it == cfg.max_iters
            self._iterate(it, last, cfg.lr_mu * decay ** (it - 1))
            if last:
                break
        self.iters[self.active] = cfg.max_iters
        self._commit(np.nonzero(self.aligned)[0])
        return it

    def _iterate(self, it, last, lr_mu):
        cfg, k = self.cfg, self.k
        ids, mosaic, target = self._mosaic()
        slot = np.searchsorted(ids, k["owner"])
        image, backward = mosaic.render(k["mu"], _chol(k["lc"]), k["pi"], k["ex"], slot, grad=True)
        diff = image - target
        mse = np.square(diff.reshape(len(ids), -1).astype(np.float64)).sum(1) / self.npx
        with np.errstate(divide="ignore"):
            psnr = -10.0 * np.log10(mse)

        better = psnr > self.best_psnr[ids]
        if better.any():
            rows = better[slot]
            for n in _PARAMS:
                k["best_" + n][rows] = k[n][rows]
            self.aligned[ids[better]] = True
            self.best_psnr[ids[better]] = psnr[better]
        done = psnr >= cfg.target_psnr
        self.reached[ids[done]] = True
        self.iters[ids[done]] = it
        if last:
            return

        g_mu, g_chol, g_pi, g_ex = backward(diff * np.float32(2.0 / self.npx))
        chol_diag = np.exp(k["lc"][:, [0, 2]])
        g_lc = g_chol.copy()
        g_lc[:, [0, 2]] *= chol_diag
        g_pi = g_pi + np.float32(cfg.lam)
        t = k["t"]
        t += 1
        for name, g, lr in (("mu", g_mu, lr_mu), ("lc", g_lc, cfg.lr_chol), ("pi", g_pi, cfg.lr_pi),
                            ("ex", g_ex, cfg.lr_experts)):
            self.adam.step(k[name], k["m_" + name], k["v_" + name], g, t, lr)
        size = self.size
        np.clip(k["mu"], -size, 2 * size, out=k["mu"])
        k["mu"][:] = _quantize(k["mu"])
        np.clip(k["lc"][:, [0, 2]], *_LOG_B_RANGE, out=chol_diag)
        k["lc"][:, [0, 2]] = chol_diag

        # Frozen blocks leave; dead kernels (pi <= 0) are removed at once.
        self.active[ids[done]] = False
        dead = k["pi"] <= 0
        drop = done[slot] | dead
        if drop.any():
            self._commit(np.unique(k["owner"][drop]))
            self._select(~drop)
            emptied = self.active & (np.bincount(self.k["owner"], minlength=len(self.active)) == 0)
            self.iters[emptied] = it
            self.active[emptied] = False
        if it % cfg.double_every == 0:
            self._double()

    def _double(self):
        k, cfg = self.k, self.cfg
        counts = np.bincount(k["owner"], minlength=len(self.active))
        grow = self.active & (2 * counts <= cfg.max_kernels)
        if not grow.any():
            return
        self._commit(np.nonzero(grow)[0])
        rows_grow = grow[k["owner"]]
        reps = np.where(rows_grow, 2, 1)
        first = np.cumsum(reps) - reps
        self._select(np.repeat(np.arange(len(reps)), reps))
        k = self.k
        copies = first[rows_grow] + 1
        k["pi"][np.concatenate([copies - 1, copies])] *= np.float32(0.5)
        # Each block draws its jitter from its own generator, in block order.
        own = k["owner"][copies]
        for b in np.nonzero(grow)[0]:
            sel = copies[own == b]
            k["mu"][sel] += self.gens[b].normal(0.0, cfg.jitter, (len(sel), 2)).astype(np.float32)
        k["mu"][:] = _quantize(k["mu"])

    def result(self) -> dict:
        """Best parameters of every block, concatenated in block order."""
        B = len(self.active)
        parts = [self.archive.get(b) for b in range(B)]
        counts = np.array([0 if p is None else len(p[0]) for p in parts], np.int64)
        C = self.blocks.shape[-1]
        empty = (np.zeros((0, 2), np.float32), np.zeros((0, 3), np.float32), np.zeros(0, np.float32),
                 np.zeros((0, C), np.float32))
        cat = [np.concatenate([p[i] if p is not None else empty[i] for p in parts] + [empty[i]])
               for i in range(4)]
        mu, lc, pi, ex = cat
        keep = pi > 0
        owner = np.repeat(np.arange(B), counts)
        return {"mu": mu[keep], "chol": _chol(lc[keep]), "pi": pi[keep], "experts": ex[keep],
                "owner": owner[keep], "psnr": self.best_psnr.copy(), "iterations": self.iters.copy(),
                "reached": self.reached.copy()}


def fit_block_chunk(blocks: np.ndarray, block_ids: np.ndarray, base_seed: int, settings: dict) -> dict:
    """Fit local SMoE models to a chunk of blocks (AS Algorithm 1), batched.

    A plain top-level function on NumPy arrays, so it can run in a worker process.

    Parameters
    ----------
    blocks : (B, block, block, C) float32
    block_ids : (B,) int
        Global index of each block; block randomness comes from ``(base_seed, id)``.
    base_seed : int
    settings : dict
        Fields of :class:`LocalFitSettings`.

    Returns
    -------
    dict of NumPy arrays
        ``mu`` (N, 2) local centres, ``chol`` (N, 3), ``pi`` (N,), ``experts`` (N, C),
        ``owner`` (N,) chunk-local block index (ascending); per block ``psnr``
        (best, block pixels), ``iterations``, ``reached``; and ``loop_iterations``.
    """
    cfg = LocalFitSettings(**settings).validate()
    step = Mosaic.max_blocks(blocks.shape[1])
    parts = []
    for lo in range(0, len(blocks), step):
        fit = _LocalFit(blocks[lo:lo + step], np.asarray(block_ids)[lo:lo + step], base_seed, cfg)
        n_it = fit.run()
        r = fit.result()
        r["owner"] = r["owner"] + lo
        r["loop_iterations"] = np.array([n_it])
        parts.append(r)
    return _merge(parts, [None] * len(parts), blocks.shape[-1])


def _merge(parts: list[dict], index: list, channels: int) -> dict:
    """Concatenate chunk results; ``index[i]`` maps chunk i's block numbers to global ones (None: as is)."""
    if not parts:
        z = np.zeros
        return {"mu": z((0, 2), np.float32), "chol": z((0, 3), np.float32), "pi": z(0, np.float32),
                "experts": z((0, channels), np.float32), "owner": z(0, np.int64), "psnr": z(0),
                "iterations": z(0, np.int64), "reached": z(0, bool), "loop_iterations": np.array([0])}
    owner = np.concatenate([p["owner"] if ix is None else ix[p["owner"]] for p, ix in zip(parts, index)])
    order = np.argsort(owner, kind="stable")
    out = {n: np.concatenate([p[n] for p in parts])[order] for n in ("mu", "chol", "pi", "experts")}
    out["owner"] = owner[order]
    nb = sum(len(p["psnr"]) for p in parts)
    block_index = np.concatenate([np.arange(len(p["psnr"])) if ix is None else ix for p, ix in zip(parts, index)])
    if index[0] is None:  # sequential chunks: blocks already in order
        block_index = np.arange(nb)
    for n in ("psnr", "iterations", "reached"):
        vals = np.concatenate([p[n] for p in parts])
        arr = np.empty_like(vals)
        arr[block_index] = vals
        out[n] = arr
    out["loop_iterations"] = np.array([max(int(p["loop_iterations"].max()) for p in parts)])
    return out


def _worker_init():
    # Workers x threads must not exceed the cores: one thread per worker.
    import numba

    numba.set_num_threads(1)
    torch.set_num_threads(1)


def fit_blocks(blocks: np.ndarray, base_seed: int, settings: LocalFitSettings, workers: int = 1) -> dict:
    """Fit all blocks, in this process or split over ``workers`` processes.

    Blocks are dealt to the workers round-robin (block i to worker i mod workers),
    which spreads easy and hard blocks evenly on average.  The result does not
    depend on ``workers``.

    Returns
    -------
    dict, as :func:`fit_block_chunk` with global block indices.
    """
    B = len(blocks)
    ids = np.arange(B)
    settings = asdict(settings)
    workers = min(workers, B) if B else 1
    if workers <= 1:
        return fit_block_chunk(blocks, ids, base_seed, settings)
    chunks = [ids[i::workers] for i in range(workers)]
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_worker_init) as pool:
        futures = [pool.submit(fit_block_chunk, blocks[c], c, base_seed, settings) for c in chunks]
        parts = [f.result() for f in futures]
    return _merge(parts, chunks, blocks.shape[-1])


# ----------------------------------------------------------------------------
# Export


def export_kernels(local: dict, labels: np.ndarray, origins: np.ndarray, sides: np.ndarray, block: int, *,
                   bandwidth_factor: float = 1.0) -> tuple[dict, np.ndarray]:
    """Map local kernels to the image; keep those whose centre lies in their segment.

    Parameters
    ----------
    local : dict
        ``mu``, ``chol``, ``pi``, ``experts``, ``owner`` as from :func:`fit_blocks`;
        block b belongs to segment ``b + 1`` of ``labels``.
    labels : (H, W) int, dense labels 1..B
    origins : (B, 2) int, sides : (B,) int
        The boxes, from :func:`corona_boxes`.
    block : int
    bandwidth_factor : float
        Every kernel's extent is multiplied by this (``B /= factor``).

    Returns
    -------
    kernels : dict with ``mu`` (M, 2), ``chol`` (M, 3), ``pi`` (M,), ``experts`` (M, C),
        ``owner`` (M,) and ``pixels`` (M,), the estimated image pixels each kernel owns
    inside : (N,) bool, which local kernels were kept
    """
    h, w = labels.shape
    owner = local["owner"]
    s = (sides[owner] / block).astype(np.float64)
    mu = origins[owner].astype(np.float64) + local["mu"].astype(np.float64) * s[:, None]
    px = np.floor(mu).astype(np.int64)
    inside = (px[:, 0] >= 0) & (px[:, 0] < w) & (px[:, 1] >= 0) & (px[:, 1] < h)
    inside[inside] = labels[px[inside, 1], px[inside, 0]] == owner[inside] + 1
    chol = local["chol"].astype(np.float64) / (s * bandwidth_factor)[:, None]
    pi = local["pi"].astype(np.float64)

    # Share of its block each kernel owns, estimated by gate weight x area, in image pixels.
    mass = pi / (local["chol"][:, 0].astype(np.float64) * local["chol"][:, 2])
    nb = len(sides)
    share = mass / np.bincount(owner, mass, minlength=nb)[owner]
    pixels = share * (sides[owner].astype(np.float64) ** 2)
    # Gates rescaled to mean 1 per block (over the exported kernels).
    cnt = np.bincount(owner[inside], minlength=nb)
    tot = np.bincount(owner[inside], pi[inside], minlength=nb)
    pi = pi * np.where(cnt > 0, cnt / np.where(tot > 0, tot, 1.0), 1.0)[owner]

    kept = {"mu": mu[inside], "chol": chol[inside], "pi": pi[inside], "experts": local["experts"][inside],
            "owner": owner[inside], "pixels": pixels[inside]}
    return kept, inside


# ----------------------------------------------------------------------------
# Entry points


def _check_int(name, v, lo):
    if isinstance(v, bool) or not isinstance(v, Integral) or v < lo:
        raise ValueError(f"{name} must be an integer >= {lo}, got {v!r}")
    return int(v)


def _check_image(image) -> np.ndarray:
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 3) or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ValueError(f"image must have shape (H, W), (H, W, 1) or (H, W, 3), got {np.shape(image)}")
    if not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(f"image must be a float array in [0, 1], got dtype {arr.dtype}")
    if not np.isfinite(arr).all():
        raise ValueError("image contains NaN or infinite values")
    return arr.astype(np.float32, copy=False)


def adaptive_init_with_report(image, n_kernels: int | None = None, *, rng: np.random.Generator | None = None,
                              seed: int = 0, threshold: float = 40.0, labels=None, corona: int = 5,
                              block: int = 32, workers: int = 1, bandwidth_factor: float = 1.0,
                              **local_options) -> tuple[Model, AdaptiveReport]:
    """AS-SMoE initialization, with a report of what it did.

    Parameters
    ----------
    image : (H, W) or (H, W, C) float array in [0, 1], C = 1 or 3
    n_kernels : int, optional
        Cap on the kernel count; None keeps every exported kernel (the count then
        follows from ``target_psnr``).
    rng : numpy.random.Generator, optional
        Source of the base seed; without it ``seed`` is the base seed.  Each
        block's randomness is seeded from (base seed, block index).
    threshold : float
        MDBSCAN join threshold d_Th (RGB distance, 0-255 scale).
    labels : (H, W) int array, optional
        A ready segmentation (values <= 0: no segment); skips MDBSCAN.
    corona : int
        Margin (px) around each segment's square box.
    block : int
        Side of the resampled CBBs (a multiple of 16).
    workers : int
        Processes for the local fits (1: in this process, multi-threaded).
    bandwidth_factor : float
        Multiplies the extent of every exported kernel.
    **local_options
        Fields of :class:`LocalFitSettings`: ``kernels``, ``target_psnr``,
        ``max_iters``, ``double_every``, ``max_kernels``, ``lam``, learning rates,
        ``jitter``.

    Returns
    -------
    (Model, AdaptiveReport)
    """
    t_start = time.perf_counter()
    img = _check_image(image)
    h, w, c = img.shape
    if n_kernels is not None:
        n_kernels = _check_int("n_kernels", n_kernels, 1)
    corona = _check_int("corona", corona, 0)
    block = _check_int("block", block, TILE)
    if block % TILE:
        raise ValueError(f"block must be a multiple of {TILE}, got {block}")
    workers = _check_int("workers", workers, 1)
    if not _is_real(bandwidth_factor) or not math.isfinite(bandwidth_factor) or bandwidth_factor <= 0:
        raise ValueError(f"bandwidth_factor must be a finite number > 0, got {bandwidth_factor!r}")
    unknown = set(local_options) - {f.name for f in fields(LocalFitSettings)}
    if unknown:
        raise ValueError(f"unknown option(s) for the adaptive initializer: {', '.join(sorted(unknown))}")
    cfg = LocalFitSettings(**local_options).validate()
    base_seed = int(rng.integers(0, 2 ** 63)) if rng is not None else _check_int("seed", seed, 0)

    t0 = time.perf_counter()
    if labels is None:
        from ..segment import mdbscan

        labels = mdbscan(img, threshold)
    dense, _ = dense_labels(labels, (h, w))
    origins, sides = corona_boxes(dense, corona)
    blocks = extract_blocks(img, origins, sides, block)
    t1 = time.perf_counter()
    local = fit_blocks(blocks, base_seed, cfg, workers)
    t2 = time.perf_counter()
    kept, _ = export_kernels(local, dense, origins, sides, block, bandwidth_factor=bandwidth_factor)
    n_exported = len(kept["pi"])
    sel = np.arange(n_exported)
    if n_kernels is not None and n_exported > n_kernels:
        # Keep the kernels that own the most image pixels; keep their original order.
        sel = np.sort(np.argsort(-kept["pixels"], kind="stable")[:n_kernels])
    model = Model(kept["mu"][sel].astype(np.float32), kept["chol"][sel].astype(np.float32),
                  kept["pi"][sel].astype(np.float32), kept["experts"][sel].astype(np.float32))
    t3 = time.perf_counter()

    B = len(sides)
    report = AdaptiveReport(
        segments=B,
        blocks_reached_target=int(local["reached"].sum()),
        kernels_local=len(local["pi"]),
        kernels_exported=n_exported,
        kernels_final=len(model),
        iterations=int(local["loop_iterations"].max()),
        mean_block_iterations=float(local["iterations"].mean()) if B else 0.0,
        mean_block_psnr=float(np.mean(np.minimum(local["psnr"], 100.0))) if B else float("nan"),
        seconds_segmentation=t1 - t0,
        seconds_local_fit=t2 - t1,
        seconds_export=t3 - t2,
        seconds_total=t3 - t_start,
        block_psnr=local["psnr"],
        block_kernels=np.bincount(local["owner"], minlength=B),
        block_iterations=local["iterations"],
        settings={"threshold": threshold if labels is None else None, "corona": corona, "block": block,
                  "workers": workers, "bandwidth_factor": bandwidth_factor, "n_kernels": n_kernels,
                  "base_seed": base_seed, **asdict(cfg)},
    )
    return model, report


@register("adaptive")
def adaptive_init(image: np.ndarray, n_kernels: int | None, *, rng: np.random.Generator, **options) -> Model:
    """AS-SMoE initialization (AS paper, Section IV); see :func:`adaptive_init_with_report`.

    ``n_kernels`` is an optional cap: the kernel count follows from ``target_psnr``.
    """
    model, _ = adaptive_init_with_report(image, n_kernels, rng=rng, **options)
    return model
