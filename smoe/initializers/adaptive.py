"""AS-SMoE: adaptive segmentation-based initialization (SPEC §3; AS paper, Section IV).

The image is segmented with MDBSCAN; every segment gets a square *corona
bounding block* (CBB) that is resampled to ``block x block`` pixels; a small
SMoE model is fitted to every CBB by gradient descent, doubling its kernels
until it reaches a target PSNR (AS Algorithm 1); the kernels whose centres lie
inside their segment are carried back to the image and together form the
initial model.  The kernel count is an outcome of the target PSNR, not an
input (``n_kernels`` only caps it).

Decisions (where the papers are silent or where measurement overruled them)
--------------------------------------------------------------------------
Boxes.  Side ``S = max(bbox height, bbox width) + 2 * corona`` in whole
pixels, centred on the segment's bounding box (rounded down to a whole
pixel).  Where the box fits inside the image it is shifted inside, so it
holds real pixels only (it still contains the segment, whose box is not
larger); on an axis shorter than ``S`` it stays centred and the missing
pixels replicate the nearest edge pixel.  Either way the box is an exact
square of integer origin ``o`` and the local -> image map is
``x = o + s * u`` with ``s = S / block``.

Large segments are tiled (``max_side``, default 96 px).  The paper uses one
CBB per segment, so a background segment of 500 px is shrunk 16x and a
32 x 32 fit of it says little about the full-size image; such segments also
received almost no kernels (on kodim23 the largest segment, a quarter of the
image, kept 14).  A segment whose box would exceed ``max_side`` is covered by
a grid of equal square cells of at most ``max_side - 2 * corona`` px, and
each cell holding segment pixels becomes a CBB (cell plus corona) that owns
exactly those pixels.  ``max_side=None`` restores one CBB per segment.

Resampling.  Block pixel (i, j) stands for the image square
``o + s * [j, j + 1) x [i, i + 1)``.  Shrinking (``s > 1``) averages the image
over that square with fractional pixel overlaps (area averaging, an
anti-aliasing box filter); enlarging (``s < 1``) samples bilinearly at the
square's centre.  Both are separable ``(block, n)`` weight matrices.

Batched local fits.  All blocks are fitted together in one "mosaic" image
rendered by :func:`smoe.fused_cpu.rasterize_cpu` with hand-made tile bins:
each block is cut into its ``(block / 16)^2`` tiles of 16 x 16 pixels, and a
tile lists only kernels of its own block, so blocks never interact.  The
tiles of one block are *not* neighbours in the mosaic: sub-tile q of block b
is tile ``q * B + b``, and every kernel is passed once per sub-tile with its
centre shifted to that tile.  Each kernel copy then touches one tile only, so
its gradient is summed by one thread, and the copies are added up here in a
fixed order: results depend neither on the thread count, nor on which
blocks are fitted together, nor on a block's place in the mosaic.  For the
same reason local centres are kept on a grid of ``2**-12`` px (a centre plus
its mosaic shift is then exact in float32), per-block errors are summed per
tile row, and Adam runs in NumPy with elementwise operations only
(per-kernel step counts, bias corrections from a table).  Hence
``workers=2`` gives bit for bit the result of ``workers=1``.  A kernel is
listed only on the sub-tiles its 99 % box touches (``cull``), i.e. every
block is a rasterized SMoE in the sense of SPEC §1, which is cheaper once
kernels have shrunk.

Algorithm 1 details.  L = 10 kernels per block at uniform random centres,
round with standard deviation ``block / (2 sqrt(L))`` (about 5 px: ten such
disks tile the block), ``pi = 1 / L``, experts = the block pixel under the
centre.  Per block the loss is MSE + ``lam * sum(pi)``; the parameters are
centres, ``(log b00, b10, log b11)``, ``pi`` and experts, as in
:mod:`smoe.fit`.  Every iteration each block's PSNR is measured and its best
parameters (by PSNR) are kept; a block whose PSNR reaches ``target_psnr`` is
frozen and leaves the mosaic.  Kernels whose ``pi`` drops to ``<= 0`` are
removed at once.  Every ``double_every`` iterations each block still fitting
doubles its kernels: every kernel gets a copy whose centre is jittered by a
normal offset of ``jitter`` px, both keep half the gate weight (so the
block's output barely moves), and both keep the parent's Adam state.  A
block that may not double any more (``max_kernels``) gives up at that
checkpoint instead of running on to ``max_iters`` (``stop_at_cap``): with the
defaults (10 -> 20 kernels, C = 30) every block is done after 60 iterations.
Each block ends with its best parameters.

The cap of 20 (one doubling) is measured, not the paper's: textured blocks
never reach the target and end at the cap, so it sets the kernel density of
textured images.  With a cap of 40, the global fit from the AS start on the
textured kodim05 (grey) was no better than a grid of as many kernels (23.63
against 23.62 dB after 300 iterations, a kernel saving of 1 %), and the
initialization took longer than Grid needed to reach 95 % of the best PSNR
(time ratio 1.9).  With 20, ``benchmarks/initialization.py`` measured a
saving of 17 % and a time ratio of 0.80 there (kodim01: 11 -> 28 %, 0.95 ->
0.34), and the saving on the other four images went from 33-67 % to 48-68 %.
A sparser start is where placement matters most.

Export (``export="moments"``, the default).  A kernel is kept if the image
pixel under its mapped centre (``o + s mu_local``) is one its block owns;
the others ("supporting" kernels, AS Section IV-B) are dropped.  The exact
geometric map (``B = B_local / s``, ``export="exact"``) reproduces each local
model perfectly, but without its supporting kernels a kernel's gate is no
longer bounded at the segment edge, and in the assembled model kernels reach
far into other segments: on kodim23 45 % of the pixels were ruled (gate
share > 90 %) by kernels of other segments, and the initial PSNR was
15.9 dB against 19.8 dB for a grid of as many kernels.  So the kept kernels
of a block instead share the block's own pixels at full resolution through
their local SMoE gates, and each kernel becomes the Gaussian of the pixels it
gates: gate-weighted centroid and covariance (plus 1/12 px^2, a pixel's own
extent), the gate-weighted mean colour as expert, and
``pi = mass / sqrt(det Sigma)``, which makes the model behave like a Gaussian
mixture classifier of the regions, so large and small regions from different
blocks compete fairly.  Kernels gating less than a pixel are dropped; a block
left without kernels gets one Gaussian of all its pixels.  The positions,
shapes and number of regions still come from the local fits.
``bandwidth_factor`` multiplies every exported kernel's extent.  With a
kernel budget (``n_kernels``) every block keeps its largest kernel, the
budget is filled with the next largest (by pixels gated), and the export is
repeated with only those, so the survivors take over the dropped kernels'
pixels (on kodim05 in RGB, with a cap of 40 kernels per block, a budget of
1 000, a quarter of the natural 3 958, cost 0.5 dB); a budget below the
number of blocks just cuts the smallest.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field, fields
from numbers import Integral, Real

import numpy as np
import torch
from scipy import ndimage

from ..executor import Executor, available_cores, make_executor
from ..model import CHI2_99, Model
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
    outside_weight : weight of the block pixels outside the block's own
        pixels in the loss and PSNR (1: plain MSE, as the paper)
    init_in_segment : draw initial centres from the block's own pixels
        (weighted as the loss) instead of uniformly
    stop_at_cap : a block that may not double any more gives up at the
        checkpoint instead of iterating to ``max_iters``
    cull : list a kernel only on the sub-tiles of its block that its 99 %
        box touches
    """

    kernels: int = 10
    target_psnr: float = 30.0
    max_iters: int = 300
    double_every: int = 30
    max_kernels: int = 20
    lam: float = 1e-4
    lr_mu: float = 0.2
    lr_mu_final: float = 0.02
    lr_chol: float = 0.03
    lr_pi: float = 0.005
    lr_experts: float = 0.02
    jitter: float = 0.5
    outside_weight: float = 1.0
    init_in_segment: bool = False
    stop_at_cap: bool = True
    cull: bool = True

    def validate(self) -> "LocalFitSettings":
        for name in ("kernels", "max_iters", "double_every", "max_kernels"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, Integral) or v < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
        if self.max_kernels < self.kernels:
            raise ValueError(f"max_kernels ({self.max_kernels}) must be at least kernels ({self.kernels})")
        if not _is_real(self.target_psnr) or not math.isfinite(self.target_psnr):
            raise ValueError(f"target_psnr must be a finite number of dB, got {self.target_psnr!r}")
        for name in ("lam", "lr_mu", "lr_mu_final", "lr_chol", "lr_pi", "lr_experts", "jitter", "outside_weight"):
            v = getattr(self, name)
            if not _is_real(v) or not math.isfinite(v) or v < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
        for name in ("init_in_segment", "stop_at_cap", "cull"):
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
        return self


def _is_real(v) -> bool:
    return isinstance(v, Real) and not isinstance(v, bool)


@dataclass
class AdaptiveReport:
    """What one AS-SMoE initialization did.

    segments : number of segments
    blocks : number of CBBs (more than segments where large segments are tiled)
    blocks_reached_target : blocks whose local PSNR reached the target
    kernels_local : kernels of all blocks' best local models (pi > 0)
    kernels_inside : of those, the ones whose centre lies on a pixel their block owns
    kernels_exported : kernels after the export (moments mode drops kernels that
        gate almost nothing and adds one for a block left empty)
    kernels_final : kernels in the returned model (after the ``n_kernels`` cap)
    fallback_kernels : blocks that got a single Gaussian of their pixels
    iterations : iterations the batched local fit ran (the slowest block's)
    mean_block_iterations : iterations per block, averaged
    mean_block_psnr : best local PSNR per block (block pixels), averaged
    seconds_segmentation : MDBSCAN plus cutting and resampling the CBBs
    seconds_local_fit, seconds_export, seconds_total
    block_psnr, block_kernels, block_iterations : (blocks,) per-block arrays:
        best local PSNR, kernels of the best local model, iterations run
    settings : the settings used
    """

    segments: int
    blocks: int
    blocks_reached_target: int
    kernels_local: int
    kernels_inside: int
    kernels_exported: int
    kernels_final: int
    fallback_kernels: int
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


@dataclass
class Blocks:
    """The corona bounding blocks of a segmentation.

    origins : (B, 2) int64
        ``(x0, y0)`` of each box's top-left corner in pixel-edge coordinates;
        negative where the image is smaller than the box.
    sides : (B,) int64
        Box side in pixels.
    segment : (B,) int64
        The dense label (1..N) of the segment each block belongs to.
    owner : (H, W) int32
        The block each segment pixel is fitted and exported by (-1: no segment).
        One block per segment, or, for segments tiled by ``max_side``, the block
        whose core cell holds the pixel.
    """

    origins: np.ndarray
    sides: np.ndarray
    segment: np.ndarray
    owner: np.ndarray

    def __len__(self) -> int:
        return len(self.sides)


def corona_blocks(labels: np.ndarray, corona: int = 5, max_side: int | None = None) -> Blocks:
    """Square corona bounding blocks of the segments 1..N of a dense label map.

    Parameters
    ----------
    labels : (H, W) int array
        Labels 1..N (0 = no segment), e.g. from :func:`dense_labels`.
    corona : int
        Margin added on every side of the segment's square box (px).
    max_side : int, optional
        Largest box side (px, corona included).  A segment whose box would be
        larger is covered by a grid of equal square core cells of side at most
        ``max_side - 2 * corona``, centred on its bounding box; every cell that
        holds pixels of the segment becomes a block of its own.  None: one box
        per segment, however large (the AS paper).

    Returns
    -------
    Blocks
    """
    h, w = labels.shape
    if max_side is not None and max_side - 2 * corona < 1:
        raise ValueError(f"max_side ({max_side}) must exceed twice the corona ({corona})")
    origins, sides, segment = [], [], []
    owner = np.full((h, w), -1, np.int32)
    for k, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            raise ValueError(f"label {k} is empty; renumber the labels with dense_labels first")
        rows, cols = box
        bh, bw = rows.stop - rows.start, cols.stop - cols.start
        extent = max(bh, bw)
        core = extent if max_side is None else max_side - 2 * corona
        mine = labels[rows, cols] == k
        if extent <= core:
            owner[rows, cols][mine] = len(sides)
            side = extent + 2 * corona
            origins.append((_place(cols.start, cols.stop, side, w), _place(rows.start, rows.stop, side, h)))
            sides.append(side)
            segment.append(k)
            continue
        m = -(-extent // core)
        cell = -(-extent // m)
        x0 = cols.start + (bw - m * cell) // 2
        y0 = rows.start + (bh - m * cell) // 2
        ys, xs = np.nonzero(mine)
        cy = (ys + rows.start - y0) // cell
        cx = (xs + cols.start - x0) // cell
        cells, cell_of = np.unique(cy * m + cx, return_inverse=True)
        owner[ys + rows.start, xs + cols.start] = len(sides) + cell_of
        side = cell + 2 * corona
        for c in cells.tolist():
            # The core clipped to the image, and the box centred on it.
            cx0, cy0 = x0 + (c % m) * cell, y0 + (c // m) * cell
            lx, hx = max(cx0, 0), min(cx0 + cell, w)
            ly, hy = max(cy0, 0), min(cy0 + cell, h)
            origins.append((_place(lx, hx, side, w), _place(ly, hy, side, h)))
            sides.append(side)
            segment.append(k)
    return Blocks(np.array(origins, np.int64).reshape(-1, 2), np.array(sides, np.int64),
                  np.array(segment, np.int64), owner)


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


def extract_blocks(image: np.ndarray, blocks: Blocks, block: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Resample every box of an image to ``block x block`` pixels.

    Parameters
    ----------
    image : (H, W, C) float array
    blocks : Blocks
    block : int

    Returns
    -------
    pixels : (B, block, block, C) float32
    masks : (B, block, block) float32
        The fraction of each block pixel covered by the pixels the block owns.
    """
    h, w, c = image.shape
    out = np.empty((len(blocks), block, block, c), np.float32)
    masks = np.empty((len(blocks), block, block), np.float32)
    for b, ((x0, y0), side) in enumerate(zip(blocks.origins.tolist(), blocks.sides.tolist())):
        wy, r0, r1 = resample_weights(y0, side, h, block)
        wx, c0, c1 = resample_weights(x0, side, w, block)
        tmp = np.tensordot(wy, image[r0:r1, c0:c1].astype(np.float64), axes=(1, 0))  # (block, cw, C)
        out[b] = np.einsum("jk,ikc->ijc", wx, tmp)
        masks[b] = wy @ (blocks.owner[r0:r1, c0:c1] == b).astype(np.float64) @ wx.T
    return out, masks


# ----------------------------------------------------------------------------
# The mosaic: many blocks rendered by one fused rasterizer call


class Mosaic:
    """Tile layout that renders ``n_blocks`` independent ``block x block`` SMoE models at once.

    Sub-tile q (row-major among the block's ``(block/16)^2`` tiles) of block b
    is mosaic tile ``q * n_blocks + b``; mosaic tiles are laid out row-major,
    :data:`_MOSAIC_TILES_X` per row.  Kernels are held in *local* block
    coordinates ``[0, block)^2``, rows grouped by block in ascending order.
    Per-block pixel arrays travel in *tile layout* ``(nq, n_blocks, 256, C)``
    (:meth:`split`, :meth:`merge`), which needs no reordering per iteration.
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

    def split(self, blocks: np.ndarray) -> np.ndarray:
        """(n_blocks, block, block, C) -> (nq, n_blocks, 256, C): the blocks in tile layout."""
        B, k, C = self.n_blocks, self.k, blocks.shape[-1]
        a = blocks.reshape(B, k, TILE, k, TILE, C).transpose(1, 3, 0, 2, 4, 5)
        return np.ascontiguousarray(a).reshape(self.nq, B, TILE * TILE, C)

    def merge(self, tiles: np.ndarray) -> np.ndarray:
        """(nq, n_blocks, 256, C) -> (n_blocks, block, block, C)."""
        B, k, C = self.n_blocks, self.k, tiles.shape[-1]
        a = tiles.reshape(k, k, B, TILE, TILE, C).transpose(2, 0, 3, 1, 4, 5)
        return np.ascontiguousarray(a).reshape(B, self.block, self.block, C)

    def _gather(self, image: np.ndarray) -> np.ndarray:
        """(H, W, C) mosaic image -> (nq, n_blocks, 256, C)."""
        C = image.shape[-1]
        a = np.ascontiguousarray(image.reshape(self.nty, TILE, self.ntx, TILE, C).transpose(0, 2, 1, 3, 4))
        return a.reshape(self.nty * self.ntx, TILE * TILE, C)[: self.tiles].reshape(
            self.nq, self.n_blocks, TILE * TILE, C)

    def _scatter(self, tiles: np.ndarray) -> np.ndarray:
        """(nq, n_blocks, 256, C) -> (H, W, C) mosaic image (unused tiles are 0)."""
        C = tiles.shape[-1]
        full = np.zeros((self.nty * self.ntx, TILE, TILE, C), tiles.dtype)
        full[: self.tiles] = tiles.reshape(self.tiles, TILE, TILE, C)
        return np.ascontiguousarray(full.reshape(self.nty, self.ntx, TILE, TILE, C).transpose(0, 2, 1, 3, 4)).reshape(
            self.grid.height, self.grid.width, C)

    def bins(self, owner: np.ndarray, touch: np.ndarray | None = None) -> TileBins:
        """Bins listing, for every tile, the copies of its block's kernels made for that sub-tile.

        owner : (N,) ascending block of each kernel
        touch : (nq, N) bool, optional
            Whether kernel j reaches sub-tile q; None lists every kernel of a
            block on all its sub-tiles (a global SMoE per block).
        """
        n = len(owner)
        if touch is None:
            touch = np.ones((self.nq, n), bool)
        ids = np.concatenate([q * n + np.nonzero(touch[q])[0] for q in range(self.nq)]) if n else \
            np.zeros(0, np.int64)
        counts = np.zeros(self.nty * self.ntx, np.int64)
        counts[: self.tiles] = np.concatenate(
            [np.bincount(owner[touch[q]], minlength=self.n_blocks) for q in range(self.nq)])
        ends = np.cumsum(counts)
        return TileBins(torch.from_numpy(ends - counts), torch.from_numpy(ends),
                        torch.from_numpy(ids.astype(np.int64)))

    def reach(self, mu: np.ndarray, chol: np.ndarray) -> np.ndarray:
        """(nq, N) bool: kernel j's 99 % box (as :func:`smoe.tiles.bin_kernels`) touches sub-tile q."""
        r = _bounding_radius(chol)
        t0 = np.floor((mu - r[:, None]) / TILE)
        t1 = np.floor((mu + r[:, None]) / TILE)
        q = np.arange(self.nq)
        qx, qy = (q % self.k)[:, None], (q // self.k)[:, None]
        return (t0[None, :, 0] <= qx) & (qx <= t1[None, :, 0]) & (t0[None, :, 1] <= qy) & (qy <= t1[None, :, 1])

    def render(self, mu, chol, pi, experts, owner, *, grad: bool = False, cull: bool = False):
        """Render local kernels; block of kernel j is ``owner[j]`` (sorted ascending).

        Parameters
        ----------
        mu : (N, 2) float32, local centres on the :data:`_QUANTUM` grid
        chol : (N, 3) float32
        pi : (N,) float32, all > 0
        experts : (N, C) float32
        owner : (N,) int, ascending, in ``[0, n_blocks)``
        grad : bool
            Also return a function ``backward(gout)`` that, given dLoss/dimage in
            tile layout, returns the gradients for mu, chol, pi, experts as
            NumPy arrays.
        cull : bool
            List a kernel only on the sub-tiles its 99 % box touches (a
            rasterized SMoE per block, cheaper for small kernels); False: every
            kernel acts on its whole block.

        Returns
        -------
        (nq, n_blocks, 256, C) float32 array in tile layout (:meth:`merge` turns
        it into blocks) [, backward]
        """
        from ..fused_cpu import rasterize_cpu

        n = mu.shape[0]
        bins = self.bins(owner, self.reach(mu, chol) if cull else None)
        # One copy of every kernel per sub-tile; the add is exact on the quantum grid.
        mu_m = (mu[None] + self.shift[:, owner]).reshape(-1, 2)
        leaves = [torch.from_numpy(np.ascontiguousarray(a)) for a in
                  (mu_m, np.tile(chol, (self.nq, 1)), np.tile(pi, self.nq), np.tile(experts, (self.nq, 1)))]
        if grad:
            for t in leaves:
                t.requires_grad_()
        with torch.set_grad_enabled(grad):
            out = rasterize_cpu(*leaves, self.grid, bins, mode="smoe")
        image = self._gather(out.detach().numpy())
        if not grad:
            return image

        def backward(gout: np.ndarray):
            out.backward(torch.from_numpy(self._scatter(gout)))
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
        tiles = mosaic.render(m[sel], pick(chol)[sel], pick(pi)[sel], pick(experts)[sel], own[sel] - lo)
        out.append(mosaic.merge(tiles))
    return np.concatenate(out) if out else np.zeros((0, block, block, np.shape(experts)[1]), np.float32)


def _bounding_radius(chol: np.ndarray) -> np.ndarray:
    """(N,) NumPy twin of :func:`smoe.model.bounding_radius`: major semi-axis of the 99 % ellipse."""
    b00, b10, b11 = (chol[:, i].astype(np.float64) for i in range(3))
    p00, p01, p11 = b00 * b00 + b10 * b10, b10 * b11, b11 * b11
    disc = np.sqrt(0.25 * (p00 - p11) ** 2 + p01 * p01)
    lam_min = np.maximum((b00 * b11) ** 2 / (0.5 * (p00 + p11) + disc), np.finfo(np.float64).tiny)
    return np.sqrt(CHI2_99 / lam_min)


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


def _initial_kernels(blocks: np.ndarray, weights: np.ndarray, block_ids: np.ndarray, base_seed: int,
                     cfg: LocalFitSettings):
    """L random round kernels per block; a generator per block seeded by (base_seed, block id).

    Centres are uniform over the block, or with ``cfg.init_in_segment`` drawn
    with probability proportional to the pixel weights (uniform inside a pixel).
    """
    B, size, _, C = blocks.shape
    L = cfg.kernels
    gens = [np.random.default_rng([base_seed, int(i)]) for i in block_ids]
    if cfg.init_in_segment:
        cells = []
        for g, wb in zip(gens, weights):
            p = wb.ravel().astype(np.float64)
            cell = g.choice(size * size, L, p=p / p.sum())
            cells.append(np.stack([cell % size, cell // size], 1) + g.uniform(0.0, 1.0, (L, 2)))
    else:
        cells = [g.uniform(0.0, size, (L, 2)) for g in gens]
    mu = _quantize(np.concatenate(cells).astype(np.float32)) if B else np.zeros((0, 2), np.float32)
    owner = np.repeat(np.arange(B), L)
    sigma = size / (2.0 * math.sqrt(L))
    lc = np.tile(np.array([-math.log(sigma), 0.0, -math.log(sigma)], np.float32), (B * L, 1))
    pi = np.full(B * L, 1.0 / L, np.float32)
    px = np.clip(np.floor(mu).astype(np.int64), 0, size - 1)
    ex = blocks[owner, px[:, 1], px[:, 0]].astype(np.float32)
    return gens, {"mu": mu, "lc": lc, "pi": pi, "ex": ex, "owner": owner}


def _diag(lc: np.ndarray) -> np.ndarray:
    """(N, 2) Cholesky diagonal ``exp(lc[:, [0, 2]])``.

    NumPy's float32 exp runs every element of a contiguous array through the
    same SIMD code (the tail is masked, not done in scalar code), so a
    kernel's value does not depend on its position in the batch.
    """
    return np.exp(np.ascontiguousarray(lc[:, [0, 2]]))


def _chol(lc: np.ndarray) -> np.ndarray:
    d = _diag(lc)
    return np.stack([d[:, 0], lc[:, 1], d[:, 1]], 1).astype(np.float32)


class _LocalFit:
    """State of the batched fit of one chunk of blocks.

    Per-kernel arrays (rows grouped by block, ascending) live in ``self.k``:
    parameters, Adam moments and step counts, the owning block, and ``best_*``,
    a copy of the parameters aligned with the current rows that holds a block's
    best snapshot while ``aligned[b]`` is True.  When a block's rows change
    (doubling, pruning, freezing) its aligned snapshot moves to ``archive``.
    """

    def __init__(self, blocks, masks, block_ids, base_seed, cfg: LocalFitSettings):
        self.cfg = cfg
        self.blocks = np.ascontiguousarray(blocks, np.float32)
        B, self.size, _, C = blocks.shape
        self.npx = self.size * self.size * C
        # Pixel weights: 1 on the segment, outside_weight elsewhere, mean 1 per block.
        if masks is None:
            masks = np.ones((B, self.size, self.size), np.float32)
        wgt = cfg.outside_weight + (1.0 - cfg.outside_weight) * masks.astype(np.float64)
        wgt = wgt / np.maximum(wgt.mean(axis=(1, 2), keepdims=True), 1e-12)
        self.weights = np.ascontiguousarray(wgt[..., None], np.float32)  # (B, size, size, 1)
        self.gens, k = _initial_kernels(self.blocks, self.weights[..., 0], block_ids, base_seed, cfg)
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
        self._mos = None  # mosaic of the active blocks, rebuilt when that set changes

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
        if self._mos is None:
            self._ids = np.nonzero(self.active)[0]
            self._mos = Mosaic(len(self._ids), self.size)
            self._target = self._mos.split(self.blocks[self._ids])
            self._weight = self._mos.split(self.weights[self._ids])
        return self._ids, self._mos, self._target, self._weight

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
        ids, mosaic, target, weight = self._mosaic()
        slot = np.searchsorted(ids, k["owner"])
        chol = _chol(k["lc"])
        image, backward = mosaic.render(k["mu"], chol, k["pi"], k["ex"], slot, grad=True, cull=cfg.cull)
        diff = image - target
        wdiff = weight * diff
        # Row sums per sub-tile, then the sub-tiles in a fixed order: independent of batching.
        part = (wdiff * diff).reshape(mosaic.nq, len(ids), -1).sum(-1)
        mse = part[0].astype(np.float64)
        for q in range(1, mosaic.nq):
            mse += part[q]
        mse /= self.npx
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

        g_mu, g_chol, g_pi, g_ex = backward(wdiff * np.float32(2.0 / self.npx))
        g_lc = g_chol.copy()
        g_lc[:, [0, 2]] *= chol[:, [0, 2]]  # d/d(log b) = b d/db
        g_pi = g_pi + np.float32(cfg.lam)
        t = k["t"]
        t += 1
        for name, g, lr in (("mu", g_mu, lr_mu), ("lc", g_lc, cfg.lr_chol), ("pi", g_pi, cfg.lr_pi),
                            ("ex", g_ex, cfg.lr_experts)):
            self.adam.step(k[name], k["m_" + name], k["v_" + name], g, t, lr)
        # Kernels that wander more than a block away are useless and would leave the exact range.
        k["mu"][:] = _quantize(np.clip(k["mu"], -self.size, 2 * self.size))
        k["lc"][:, [0, 2]] = np.clip(k["lc"][:, [0, 2]], *_LOG_B_RANGE)

        # Frozen blocks leave; dead kernels (pi <= 0) are removed at once.
        if done.any():
            self.active[ids[done]] = False
            self._mos = None
        dead = k["pi"] <= 0
        drop = done[slot] | dead
        if drop.any():
            self._commit(np.unique(k["owner"][drop]))
            self._select(~drop)
            emptied = self.active & (np.bincount(self.k["owner"], minlength=len(self.active)) == 0)
            if emptied.any():
                self.iters[emptied] = it
                self.active[emptied] = False
                self._mos = None
        if it % cfg.double_every == 0:
            self._checkpoint(it)

    def _checkpoint(self, it):
        """Every C iterations a block below the target doubles, or gives up if it may not grow."""
        k, cfg = self.k, self.cfg
        counts = np.bincount(k["owner"], minlength=len(self.active))
        if cfg.stop_at_cap:
            stuck = self.active & (2 * counts > cfg.max_kernels)
            if stuck.any():
                self._commit(np.nonzero(stuck)[0])
                self.iters[stuck] = it
                self.active[stuck] = False
                self._mos = None
                self._select(~stuck[k["owner"]])
                k = self.k
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


def fit_block_chunk(blocks: np.ndarray, masks: np.ndarray | None, block_ids: np.ndarray, base_seed: int,
                    settings: dict) -> dict:
    """Fit local SMoE models to a chunk of blocks (AS Algorithm 1), batched.

    A plain top-level function on NumPy arrays, so it can run in a worker process.

    Parameters
    ----------
    blocks : (B, block, block, C) float32
    masks : (B, block, block) float32 or None
        Fraction of each block pixel covered by the image pixels the block owns
        (for ``outside_weight`` and ``init_in_segment``); None: the whole block.
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
        fit = _LocalFit(blocks[lo:lo + step], None if masks is None else masks[lo:lo + step],
                        np.asarray(block_ids)[lo:lo + step], base_seed, cfg)
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
    # Chunks without an index are consecutive runs of blocks, already in order.
    block_index = np.arange(nb) if index[0] is None else np.concatenate(index)
    for n in ("psnr", "iterations", "reached"):
        vals = np.concatenate([p[n] for p in parts])
        arr = np.empty_like(vals)
        arr[block_index] = vals
        out[n] = arr
    out["loop_iterations"] = np.array([max(int(p["loop_iterations"].max()) for p in parts)])
    return out


def _fit_chunk(block_ids: np.ndarray, *, blocks: np.ndarray, masks: np.ndarray | None, base_seed: int,
               settings: dict) -> dict:
    """Executor work unit: :func:`fit_block_chunk` on the blocks ``block_ids`` of the full arrays."""
    return fit_block_chunk(blocks[block_ids], None if masks is None else masks[block_ids], block_ids, base_seed,
                           settings)


def fit_blocks(blocks: np.ndarray, masks: np.ndarray | None, base_seed: int, settings: LocalFitSettings,
               workers: int = 1, *, executor: Executor | None = None) -> dict:
    """Fit all blocks on an :mod:`smoe.executor`, split into one chunk per worker.

    Blocks are dealt to the chunks round-robin (block i to chunk i mod n, n =
    the executor's workers, at most the block count), which spreads easy and
    hard blocks evenly on average; the result does not depend on n, on the
    backend or on the thread count.  Without ``executor`` one is made for
    ``workers`` (:func:`smoe.executor.make_executor`, backend ``"auto"``):
    ``workers=1`` fits in this process with its current numba thread count;
    more start that many worker processes (a Dask LocalCluster, or a local
    process pool without Dask) with one numba and one torch thread each,
    which costs a few seconds (each worker imports torch), so on two cores
    one worker (two threads) is as fast for a single image.  As with any
    spawned processes, a script that asks for ``workers > 1`` must guard its
    entry point with ``if __name__ == "__main__":``.

    Parameters
    ----------
    blocks : (B, block, block, C) float32
    masks : (B, block, block) float32 or None
    base_seed : int
    settings : LocalFitSettings
    workers : int
        Ignored with ``executor``.
    executor : smoe.executor.Executor, optional
        Run the chunks on this executor (in-process, local processes, a Dask
        cluster) instead of one made for ``workers``; it is not closed.

    Returns
    -------
    dict, as :func:`fit_block_chunk` with global block indices.
    """
    B = len(blocks)
    ids = np.arange(B)
    own = executor is None
    n = max(1, min(workers if own else executor.workers, B))
    if own:
        import numba

        threads = min(numba.get_num_threads(), available_cores()) if n == 1 else 1
        executor = make_executor(n, threads_per_worker=threads)
    chunks = [ids[i::n] for i in range(n)]
    try:
        parts = executor.map(_fit_chunk, chunks, blocks=blocks, masks=masks, base_seed=base_seed,
                             settings=asdict(settings))
    finally:
        if own:
            executor.close()
    return _merge(parts, chunks, blocks.shape[-1])


# ----------------------------------------------------------------------------
# Export

EXPORTS = ("moments", "exact")


def map_to_image(local: dict, blocks: Blocks, block: int) -> tuple[np.ndarray, np.ndarray]:
    """The exact local -> image map of the kernels: ``mu = o + s mu_local``, ``B = B_local / s``.

    Returns
    -------
    mu : (N, 2) float64, chol : (N, 3) float64
    """
    owner = local["owner"]
    s = blocks.sides[owner] / block
    mu = blocks.origins[owner] + local["mu"].astype(np.float64) * s[:, None]
    return mu, local["chol"].astype(np.float64) / s[:, None]


def inside_kernels(mu: np.ndarray, owner: np.ndarray, blocks: Blocks) -> np.ndarray:
    """(N,) bool: the pixel under each mapped centre is one its block owns (in its segment and core cell)."""
    h, w = blocks.owner.shape
    px = np.floor(mu).astype(np.int64)
    ok = (px[:, 0] >= 0) & (px[:, 0] < w) & (px[:, 1] >= 0) & (px[:, 1] < h)
    ok[ok] = blocks.owner[px[ok, 1], px[ok, 0]] == owner[ok]
    return ok


def _gate_stats(xy, col, mu, chol, logpi, chunk=16384):
    """Gate-weighted moments of pixels under an SMoE of some kernels.

    xy : (P, 2) pixel centres (any origin), col : (P, C) colours,
    mu : (K, 2), chol : (K, 3), logpi : (K,).

    Returns mass (K,), first moments (K, 2), second moments (K, 2, 2), colour sums (K, C).
    """
    K, C = len(mu), col.shape[1]
    mass, m1 = np.zeros(K), np.zeros((K, 2))
    m2, mc = np.zeros((K, 2, 2)), np.zeros((K, C))
    for lo in range(0, len(xy), chunk):
        p, c = xy[lo:lo + chunk], col[lo:lo + chunk]
        d = p[:, None, :] - mu[None]
        u = chol[None, :, 0] * d[..., 0]
        v = chol[None, :, 1] * d[..., 0] + chol[None, :, 2] * d[..., 1]
        z = logpi[None] - 0.5 * (u * u + v * v)
        z -= z.max(axis=1, keepdims=True)
        r = np.exp(z)
        r /= r.sum(axis=1, keepdims=True)
        mass += r.sum(0)
        m1 += r.T @ p
        m2 += np.einsum("pk,pa,pb->kab", r, p, p)
        mc += r.T @ c
    return mass, m1, m2, mc


def export_kernels(local: dict, blocks: Blocks, image: np.ndarray, block: int, *, mode: str = "moments",
                   bandwidth_factor: float = 1.0, min_mass: float = 1.0, budget: int | None = None) -> dict:
    """Turn the local models into image-domain kernels.

    Only kernels whose mapped centre lies on a pixel their block owns are used
    (the "supporting" kernels outside the segment are dropped).

    ``mode="exact"`` maps them geometrically (``mu = o + s mu_local``,
    ``B = B_local / s``) and keeps their experts; gates are rescaled to a
    mean of 1 per block.

    ``mode="moments"`` first maps them the same way, then lets the kept
    kernels of a block share its pixels at full resolution by their SMoE gates
    (supporting kernels no longer take part), and replaces each kernel by the
    Gaussian of the pixels it gates: gate-weighted centroid and covariance
    (plus 1/12 px^2 per axis for the pixel's own extent), the gate-weighted mean
    colour as expert, and ``pi = mass / sqrt(det Sigma)``, a density weight,
    so that regions of every size and block compete fairly in the global
    model; gates have mean 1 over the image.  Kernels gating less than
    ``min_mass`` pixels are dropped; a block left without kernels gets one
    Gaussian of all its pixels.

    Parameters
    ----------
    local : dict
        ``mu``, ``chol``, ``pi``, ``experts``, ``owner`` from :func:`fit_blocks`.
    blocks : Blocks
    image : (H, W, C) float array
    block : int
    mode : {"moments", "exact"}
    bandwidth_factor : float
        Every exported kernel's extent is multiplied by this (``B /= factor``).
    min_mass : float
        Pixels (moments mode).
    budget : int, optional
        Most kernels to export.  Moments mode keeps the largest (by gated
        pixels) kernel of every block, fills the budget with the next largest
        ones and exports again with only those, so the survivors grow over the
        pixels of the dropped ones; if the budget is below the number of
        blocks, and in exact mode, the kernels gating the fewest pixels are cut.

    Returns
    -------
    dict with ``mu`` (M, 2), ``chol`` (M, 3), ``pi`` (M,), ``experts`` (M, C) (float64),
    ``owner`` (M,) block, ``mass`` (M,) pixels each kernel gates (estimated in
    exact mode), ``source`` (M,) the local kernel each came from (-1: a block's
    fallback), ``fallback`` (number of blocks that got the fallback kernel),
    ``uncapped`` (M before the budget) and ``inside`` (N,) bool over the local
    kernels.
    """
    if mode not in EXPORTS:
        raise ValueError(f"export must be one of {', '.join(map(repr, EXPORTS))}, got {mode!r}")
    mu, chol = map_to_image(local, blocks, block)
    owner = local["owner"]
    inside = inside_kernels(mu, owner, blocks)
    if mode == "exact":
        out = _export_exact(local, blocks, mu, chol, inside)
    else:
        out = _export_moments(local, blocks, image, mu, chol, inside, min_mass)
    uncapped = len(out["pi"])
    if budget is not None and uncapped > budget:
        blocks_used = np.unique(out["owner"])
        if mode == "moments" and budget >= len(blocks_used):
            use = np.zeros(len(inside), bool)
            chosen = _choose(out["owner"], out["mass"], budget)
            use[out["source"][chosen][out["source"][chosen] >= 0]] = True
            out = _export_moments(local, blocks, image, mu, chol, inside & use, min_mass)
        if len(out["pi"]) > budget:
            keep = np.sort(np.argsort(-out["mass"], kind="stable")[:budget])
            out = {k: (v[keep] if isinstance(v, np.ndarray) else v) for k, v in out.items()}
    out["chol"] = out["chol"] / bandwidth_factor
    out["inside"] = inside
    out["uncapped"] = uncapped
    return out


def _choose(owner: np.ndarray, mass: np.ndarray, budget: int) -> np.ndarray:
    """Indices of ``budget`` kernels: the largest of every block, then the largest of the rest."""
    order = np.lexsort((-mass, owner))  # by block, largest first within a block
    first = np.ones(len(order), bool)
    first[1:] = owner[order][1:] != owner[order][:-1]
    must = order[first]
    rest = order[~first]
    rest = rest[np.argsort(-mass[rest], kind="stable")][: max(0, budget - len(must))]
    return np.sort(np.concatenate([must, rest]))


def _export_exact(local, blocks, mu, chol, inside):
    owner, pi, nb = local["owner"], local["pi"].astype(np.float64), len(blocks)
    # Pixels each kernel governs, estimated from gate weight x kernel area within its block.
    weight = pi / (local["chol"][:, 0].astype(np.float64) * local["chol"][:, 2])
    pixels = np.bincount(blocks.owner[blocks.owner >= 0], minlength=nb).astype(np.float64)
    sel = owner[inside]
    share = weight[inside] / np.maximum(np.bincount(sel, weight[inside], minlength=nb)[sel], 1e-300)
    cnt = np.bincount(sel, minlength=nb)
    tot = np.bincount(sel, pi[inside], minlength=nb)
    scale = np.where(cnt > 0, cnt / np.where(tot > 0, tot, 1.0), 1.0)
    return {"mu": mu[inside], "chol": chol[inside], "pi": pi[inside] * scale[sel],
            "experts": local["experts"][inside].astype(np.float64), "owner": sel,
            "mass": share * pixels[sel], "fallback": 0, "source": np.nonzero(inside)[0]}


def _export_moments(local, blocks, image, mu, chol, inside, min_mass):
    h, w, C = image.shape
    nb = len(blocks)
    flat_owner = blocks.owner.ravel()
    order = np.argsort(flat_owner, kind="stable")
    counts = np.bincount(flat_owner + 1, minlength=nb + 1)
    starts = np.cumsum(counts) - counts
    colours = image.reshape(-1, C).astype(np.float64)
    own = local["owner"][inside]
    k_src = np.nonzero(inside)[0]
    k_mu, k_chol = mu[inside], chol[inside]
    k_logpi = np.log(local["pi"][inside].astype(np.float64))
    kst = np.searchsorted(own, np.arange(nb), "left")
    ken = np.searchsorted(own, np.arange(nb), "right")
    parts, fallback = [], 0
    for b in range(nb):
        pix = order[starts[b + 1]:starts[b + 1] + counts[b + 1]]
        if len(pix) == 0:
            continue
        # Coordinates relative to the block's first pixel keep the moments well conditioned.
        ref = np.array([pix[0] % w, pix[0] // w], np.float64)
        xy = np.stack([pix % w + 0.5, pix // w + 0.5], 1) - ref
        col = colours[pix]
        j = slice(kst[b], ken[b])
        m, c, lp, src = k_mu[j] - ref, k_chol[j], k_logpi[j], k_src[j]
        stats = _gate_stats(xy, col, m, c, lp) if len(lp) else None
        if stats is not None and (stats[0] < min_mass).any():
            keep = stats[0] >= min_mass
            m, c, lp, src = m[keep], c[keep], lp[keep], src[keep]
            stats = _gate_stats(xy, col, m, c, lp) if keep.any() else None
        if stats is None:
            fallback += 1
            src = np.array([-1])
            stats = (np.array([float(len(xy))]), xy.sum(0)[None], np.einsum("pa,pb->ab", xy, xy)[None],
                     col.sum(0)[None])
        mass, m1, m2, mc = stats
        centre = m1 / mass[:, None]
        cov = m2 / mass[:, None, None] - centre[:, :, None] * centre[:, None, :] + np.eye(2) / 12.0
        parts.append((centre + ref, cov, mass, mc / mass[:, None], np.full(len(mass), b), src))
    centre, cov, mass, experts, owner, source = (np.concatenate([p[i] for p in parts]) for i in range(6))
    det = cov[:, 0, 0] * cov[:, 1, 1] - cov[:, 0, 1] ** 2
    pi = mass / np.sqrt(det)
    pi /= pi.mean()
    # Cholesky factor of the precision (as smoe.model.chol_from_covariance, in float64).
    b11 = np.sqrt(cov[:, 0, 0] / det)
    b10 = -cov[:, 0, 1] / det / b11
    b00 = 1.0 / np.sqrt(det) / b11
    return {"mu": centre, "chol": np.stack([b00, b10, b11], 1), "pi": pi, "experts": experts, "owner": owner,
            "mass": mass, "fallback": fallback, "source": source}


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
                              block: int = 32, max_side: int | None = 96, workers: int = 1,
                              executor: Executor | None = None, export: str = "moments",
                              bandwidth_factor: float = 1.0, **local_options) -> tuple[Model, AdaptiveReport]:
    """AS-SMoE initialization, with a report of what it did.

    Parameters
    ----------
    image : (H, W) or (H, W, C) float array in [0, 1], C = 1 or 3
    n_kernels : int, optional
        Cap on the kernel count; None keeps every exported kernel (the count then
        follows from ``target_psnr``).  Over the cap, the kernels gating the
        fewest pixels are dropped (see ``budget`` in :func:`export_kernels`).
    rng : numpy.random.Generator, optional
        Source of the base seed; without it ``seed`` is the base seed.  Each
        block's randomness is seeded from (base seed, block index).
    seed : int
    threshold : float
        MDBSCAN join threshold d_Th (RGB distance, 0-255 scale).
    labels : (H, W) int array, optional
        A ready segmentation (values <= 0: no segment); skips MDBSCAN.
    corona : int
        Margin (px) around each segment's square box.
    block : int
        Side of the resampled CBBs (a multiple of 16).
    max_side : int or None
        Largest CBB side in image pixels; larger segments are tiled (see
        :func:`corona_blocks`).  None: one CBB per segment (the AS paper).
    workers : int
        Local fits at the same time (:func:`fit_blocks`): 1 fits in this
        process, multi-threaded; more start that many single-threaded workers
        (:func:`smoe.executor.make_executor`).  The result does not depend on it.
    executor : smoe.executor.Executor, optional
        Run the local fits on this executor (in-process, local processes or a
        Dask cluster) instead of one made for ``workers``; the blocks are
        split into one chunk per executor worker.  It is not closed, so one
        executor can serve many initializations.  The result is the same as
        with ``workers=1``.
    export : {"moments", "exact"}
        How local kernels become image kernels (:func:`export_kernels`).
    bandwidth_factor : float
        Multiplies the extent of every exported kernel.
    **local_options
        Fields of :class:`LocalFitSettings`: ``kernels``, ``target_psnr``,
        ``max_iters``, ``double_every``, ``max_kernels``, ``lam``, learning rates,
        ``jitter``, ``outside_weight``, ``init_in_segment``.

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
    if max_side is not None:
        max_side = _check_int("max_side", max_side, 2 * corona + 1)
    workers = _check_int("workers", workers, 1)
    if executor is not None and not isinstance(executor, Executor):
        raise ValueError(f"executor must be a smoe.executor.Executor, got {type(executor).__name__}")
    if export not in EXPORTS:
        raise ValueError(f"export must be one of {', '.join(map(repr, EXPORTS))}, got {export!r}")
    if not _is_real(bandwidth_factor) or not math.isfinite(bandwidth_factor) or bandwidth_factor <= 0:
        raise ValueError(f"bandwidth_factor must be a finite number > 0, got {bandwidth_factor!r}")
    unknown = set(local_options) - {f.name for f in fields(LocalFitSettings)}
    if unknown:
        raise ValueError(f"unknown option(s) for the adaptive initializer: {', '.join(sorted(unknown))}")
    cfg = LocalFitSettings(**local_options).validate()
    base_seed = int(rng.integers(0, 2 ** 63)) if rng is not None else _check_int("seed", seed, 0)

    t0 = time.perf_counter()
    segmented = labels is None
    if segmented:
        from ..segment import mdbscan

        labels = mdbscan(img, threshold)
    dense, _ = dense_labels(labels, (h, w))
    boxes = corona_blocks(dense, corona, max_side)
    pixels, masks = extract_blocks(img, boxes, block)
    t1 = time.perf_counter()
    local = fit_blocks(pixels, masks, base_seed, cfg, workers, executor=executor)
    t2 = time.perf_counter()
    kept = export_kernels(local, boxes, img, block, mode=export, bandwidth_factor=bandwidth_factor,
                          budget=n_kernels)
    model = Model(*(kept[k].astype(np.float32) for k in ("mu", "chol", "pi", "experts")))
    t3 = time.perf_counter()

    B = len(boxes)
    report = AdaptiveReport(
        segments=int(dense.max()),
        blocks=B,
        blocks_reached_target=int(local["reached"].sum()),
        kernels_local=len(local["pi"]),
        kernels_inside=int(kept["inside"].sum()),
        kernels_exported=int(kept["uncapped"]),
        kernels_final=len(model),
        fallback_kernels=int(kept["fallback"]),
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
        settings={"threshold": threshold if segmented else None, "corona": corona, "block": block,
                  "max_side": max_side, "workers": workers,
                  "executor": None if executor is None else executor.describe(), "export": export,
                  "bandwidth_factor": bandwidth_factor, "n_kernels": n_kernels, "base_seed": base_seed,
                  **asdict(cfg)},
    )
    return model, report


@register("adaptive")
def adaptive_init(image: np.ndarray, n_kernels: int | None, *, rng: np.random.Generator, **options) -> Model:
    """AS-SMoE initialization (AS paper, Section IV); see :func:`adaptive_init_with_report`.

    ``n_kernels`` is an optional cap: the kernel count follows from ``target_psnr``.
    ``workers`` or ``executor`` set where the local fits run, without changing the result.
    """
    model, _ = adaptive_init_with_report(image, n_kernels, rng=rng, **options)
    return model
