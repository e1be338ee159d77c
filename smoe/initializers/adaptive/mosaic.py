"""The mosaic: many independent block models rendered by one fused rasterizer call.

All blocks of a local fit are rendered together in one "mosaic" image by
:func:`smoe.fused_cpu.rasterize_cpu` with hand-made tile bins: each block is
cut into its ``(block / 16)^2`` tiles of 16 x 16 pixels, and a tile lists
only kernels of its own block, so blocks never interact.  The tiles of one
block are *not* neighbours in the mosaic: sub-tile q of block b is tile
``q * B + b``, and every kernel is passed once per sub-tile with its centre
shifted to that tile.  Each kernel copy then touches one tile only, so its
gradient is summed by one thread, and the copies are added up here in a fixed
order: results depend neither on the thread count, nor on which blocks are
rendered together, nor on a block's place in the mosaic.  For the same reason
local centres are kept on a grid of ``2**-12`` px (:func:`quantize`): a
centre plus its mosaic shift is then exact in float32.  A kernel is listed
only on the sub-tiles its 99 % box touches (``cull``), i.e. every block is a
rasterized SMoE in the sense of SPEC §1, which is cheaper once kernels have
shrunk.
"""

from __future__ import annotations

import numpy as np
import torch

from ...fused_cpu import rasterize_cpu
from ...kernelfacts import bounding_radius
from ...tiles import TILE, TileBins, TileGrid

#: Local centres live on this grid (px) so that centre + mosaic shift is exact in float32.
QUANTUM = 2.0 ** -12
#: Mosaic width in tiles, and the most tiles one mosaic may hold: keeps every
#: mosaic coordinate below 4096 px, where float32 still resolves the quantum.
_MOSAIC_TILES_X = 128
_MOSAIC_MAX_TILES = _MOSAIC_TILES_X * 240


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
        r = bounding_radius(np.asarray(chol, np.float64))
        t0 = np.floor((mu - r[:, None]) / TILE)
        t1 = np.floor((mu + r[:, None]) / TILE)
        q = np.arange(self.nq)
        qx, qy = (q % self.k)[:, None], (q // self.k)[:, None]
        return (t0[None, :, 0] <= qx) & (qx <= t1[None, :, 0]) & (t0[None, :, 1] <= qy) & (qy <= t1[None, :, 1])

    def render(self, mu, chol, pi, experts, owner, *, grad: bool = False, cull: bool = False):
        """Render local kernels; block of kernel j is ``owner[j]`` (sorted ascending).

        Parameters
        ----------
        mu : (N, 2) float32, local centres on the :data:`QUANTUM` grid
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
    m = quantize(pick(mu))
    for lo in range(0, n_blocks, step):
        hi = min(n_blocks, lo + step)
        sel = (own >= lo) & (own < hi)
        mosaic = Mosaic(hi - lo, block)
        tiles = mosaic.render(m[sel], pick(chol)[sel], pick(pi)[sel], pick(experts)[sel], own[sel] - lo)
        out.append(mosaic.merge(tiles))
    return np.concatenate(out) if out else np.zeros((0, block, block, np.shape(experts)[1]), np.float32)


def quantize(mu: np.ndarray) -> np.ndarray:
    """(N, 2) centres rounded to the :data:`QUANTUM` grid, float32."""
    return (np.round(mu * np.float32(1 / QUANTUM)) * np.float32(QUANTUM)).astype(np.float32)
