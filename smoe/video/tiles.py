"""Space-time tiles: which kernels act on which block of pixels and frames.

The clip is cut into blocks of ``tile x tile`` pixels by ``tile_t`` frames,
in the model's own coordinates.  Each kernel is listed for every block that
the axis-aligned box around its 99 % ellipsoid touches (half sides
``sqrt(11.34 Sigma_kk)``, :func:`smoe.video.model.half_extents`); the SMoE
gate is normalised over a block's list.  The box is tight along each axis,
so a kernel drawn out along t (a static edge) is listed for many blocks in
time but few in space.

Output frames are given as clip times (frame f of the fitted clip is
``f + 0.5``), so the same tiles serve a render at the fitted frame rate, at
twice it, or at any set of times; a frame belongs to the time tile its time
falls in.  Spatial tiles are :class:`smoe.tiles.TileGrid`'s, with its
scale for renders at another size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from numba import njit

from ..tiles import TileBins, TileGrid, active_kernels
from .model import half_extents


@dataclass(frozen=True, eq=False)
class VideoGrid:
    """Blocks of spatial tiles (``space``) by time tiles of ``tile_t`` frames, over output frames at ``times``.

    times : (F,) float64 array, non-decreasing clip times of the output frames.
    Time tile k covers clip times ``[k tile_t, (k+1) tile_t)``; the grid holds
    the time tiles from the first frame's to the last frame's.
    """

    space: TileGrid
    times: np.ndarray
    tile_t: int

    def __post_init__(self):
        times = np.asarray(self.times, dtype=np.float64).reshape(-1)
        if times.size == 0:
            raise ValueError("no frames to render: times is empty")
        if not np.isfinite(times).all():
            raise ValueError("frame times must be finite")
        if (np.diff(times) < 0).any():
            raise ValueError("frame times must be in non-decreasing order")
        if abs(times).max() > 1e9:
            raise ValueError("frame times must lie within +-1e9 frames")
        object.__setattr__(self, "times", times)

    @property
    def first(self) -> int:
        """Index of the first time tile."""
        return math.floor(self.times[0] / self.tile_t)

    @property
    def shape(self) -> tuple[int, int, int]:
        """(time tiles, tile rows, tile columns)."""
        nt = math.floor(self.times[-1] / self.tile_t) - self.first + 1
        return (nt, *self.space.shape)

    @property
    def num_blocks(self) -> int:
        nt, ny, nx = self.shape
        return nt * ny * nx

    @property
    def frames(self) -> int:
        return int(self.times.size)

    def frame_edges(self) -> np.ndarray:
        """(nt + 1,) output-frame boundaries: time tile k holds frames ``edges[k] <= f < edges[k + 1]``."""
        nt = self.shape[0]
        index = np.floor(self.times / self.tile_t)
        return np.searchsorted(index, self.first + np.arange(nt + 1), side="left").astype(np.int64)


def block_boxes(mu: torch.Tensor, chol: torch.Tensor, grid: VideoGrid) -> torch.Tensor:
    """(6, N) int64 range of blocks each kernel's box touches: rows ``t0, t1, y0, y1, x0, x1``, inclusive, clamped.

    ``mu`` (N, 3) and ``chol`` (N, 6) in model coordinates.  A range is empty when its last index is below its first.
    """
    nt, ny, nx = grid.shape
    ext = half_extents(chol)
    tile, tt = grid.space.tile, grid.tile_t

    def span(centre, half, size, n, shift=0):
        # In float first: huge or infinite extents must clamp, not overflow.
        lo = torch.floor((centre - half) / size - shift).clamp(-1, n)
        hi = torch.floor((centre + half) / size - shift).clamp(-1, n)
        return lo.clamp(min=0), hi.clamp(max=n - 1)

    t0, t1 = span(mu[:, 2], ext[:, 2], tt, nt, grid.first)
    y0, y1 = span(mu[:, 1], ext[:, 1], tile, ny)
    x0, x1 = span(mu[:, 0], ext[:, 0], tile, nx)
    return torch.stack([t0, t1, y0, y1, x0, x1]).long()


def bin_video(mu: torch.Tensor, chol: torch.Tensor, pi: torch.Tensor, grid: VideoGrid, *,
              mode: str = "smoe") -> TileBins:
    """List the kernels that act on each space-time block (kernel ids ascending within a block).

    Parameters
    ----------
    mu : (L, 3) tensor
    chol : (L, 6) tensor
    pi : (L,) tensor
    grid : VideoGrid
    mode : {"smoe", "rbf"}

    Returns
    -------
    TileBins over ``grid.num_blocks`` blocks, numbered ``(kt * ny + ty) * nx + tx``.
    """
    active = active_kernels(pi, mode)
    box = block_boxes(mu.detach()[active], chol.detach()[active], grid)
    nt, ny, nx = grid.shape
    if mu.device.type == "cpu":
        starts, ends, ids = _list_blocks_cpu(box.numpy(), active.numpy(), ny, nx, nt)
        return TileBins(*(torch.from_numpy(a) for a in (starts, ends, ids)))
    return list_blocks(box, active, ny, nx, nt)


def list_blocks(box: torch.Tensor, active: torch.Tensor, ny: int, nx: int, nt: int) -> TileBins:
    """Block lists from per-kernel block boxes (6, N): the PyTorch implementation (any device)."""
    device = box.device
    t0, t1, y0, y1, x0, x1 = box
    wt, wy, wx = ((b - a + 1).clamp(min=0) for a, b in ((t0, t1), (y0, y1), (x0, x1)))
    counts = wt * wy * wx
    blocks = nt * ny * nx
    total = int(counts.sum())
    if total == 0:
        starts = torch.zeros(blocks, dtype=torch.long, device=device)
        return TileBins(starts, starts, torch.zeros(0, dtype=torch.long, device=device))
    owner = torch.repeat_interleave(torch.arange(active.numel(), device=device), counts)
    k = torch.arange(total, device=device) - (torch.cumsum(counts, 0) - counts)[owner]
    area = (wy * wx)[owner]
    kt, rest = k // area, k % area
    kx = wx[owner]
    block = ((t0[owner] + kt) * ny + (y0[owner] + rest // kx)) * nx + (x0[owner] + rest % kx)
    # Stable: ids stay ascending inside a block, so every implementation sums in the same order.
    block, order = torch.sort(block, stable=True)
    per_block = torch.bincount(block, minlength=blocks)
    ends = torch.cumsum(per_block, 0)
    return TileBins(ends - per_block, ends, active[owner[order]])


@njit(cache=True)
def _list_blocks_cpu(box, active, ny, nx, nt):
    """:func:`list_blocks` as a counting sort over CPU arrays: the same lists in O(pairs)."""
    blocks = nt * ny * nx
    counts = np.zeros(blocks, np.int64)
    for i in range(active.shape[0]):
        # Clamped again so that a NaN centre (cast to a huge negative index) cannot write out of bounds.
        for kt in range(max(box[0, i], 0), min(box[1, i], nt - 1) + 1):
            for ty in range(max(box[2, i], 0), min(box[3, i], ny - 1) + 1):
                for tx in range(max(box[4, i], 0), min(box[5, i], nx - 1) + 1):
                    counts[(kt * ny + ty) * nx + tx] += 1
    ends = np.cumsum(counts)
    starts = ends - counts
    fill = starts.copy()
    ids = np.empty(ends[-1], np.int64)
    for i in range(active.shape[0]):
        for kt in range(max(box[0, i], 0), min(box[1, i], nt - 1) + 1):
            for ty in range(max(box[2, i], 0), min(box[3, i], ny - 1) + 1):
                for tx in range(max(box[4, i], 0), min(box[5, i], nx - 1) + 1):
                    b = (kt * ny + ty) * nx + tx
                    ids[fill[b]] = active[i]
                    fill[b] += 1
    return starts, ends, ids
