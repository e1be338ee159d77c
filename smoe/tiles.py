"""Tile binning for rasterized rendering (R paper, Section IV).

The image is cut into square tiles (16 x 16 pixels by default).  Each kernel
gets a square box centred on it whose half side is the major semi-axis of its
99 % confidence ellipse; the kernel is listed for every tile the box touches.
Inside a tile only the listed kernels are evaluated, at every pixel of the
tile, and the SMoE gate is normalised over them.  Because a kernel's reach
ends at tile borders, moving the tile grid (``offset``) changes the model
slightly, which multi-model denoising exploits.

Binning is not differentiable (tile membership is piecewise constant in the
parameters) and is shared by the PyTorch reference and the fused CPU kernel.
The lists are built by a sort in PyTorch (:func:`list_boxes`, any device) or,
for CPU tensors, by a counting sort in numba that gives the same lists.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from numba import njit

from .model import bounding_radius
from .sizes import TILE


@dataclass(frozen=True)
class TileGrid:
    """A grid of ``tile x tile`` tiles, in model coordinates, over an output raster.

    Tiles live in the coordinates the model was fitted in: tile (ty, tx) covers
    ``[ty*tile - oy, (ty+1)*tile - oy) x [tx*tile - ox, (tx+1)*tile - ox)`` where
    ``offset = (oy, ox)`` with ``0 <= oy, ox < tile`` shifts the grid.  The output
    raster of ``height x width`` pixels may sample that frame at another
    resolution, ``scale = (sy, sx)`` output pixels per model pixel; an output
    pixel belongs to the tile that contains its centre mapped back to model
    coordinates.  Rendering at any scale therefore evaluates exactly the
    function that was fitted, with the same tile cuts, only sampled more or
    less densely.
    """

    height: int
    width: int
    offset: tuple[int, int] = (0, 0)
    tile: int = TILE
    scale: tuple[float, float] = (1.0, 1.0)

    def __post_init__(self):
        if self.height < 1 or self.width < 1:
            raise ValueError(f"image size must be positive, got {self.height}x{self.width}")
        oy, ox = self.offset
        if not (0 <= oy < self.tile and 0 <= ox < self.tile):
            raise ValueError(f"tile offset must lie in [0, {self.tile}) on both axes, got {self.offset}")
        if not all(math.isfinite(s) and s > 0 for s in self.scale):
            raise ValueError(f"scale must be positive and finite, got {self.scale}")

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, columns) of tiles."""
        (oy, ox), (sy, sx) = self.offset, self.scale
        return (max(1, math.ceil((self.height / sy + oy) / self.tile)),
                max(1, math.ceil((self.width / sx + ox) / self.tile)))

    @property
    def num_tiles(self) -> int:
        ny, nx = self.shape
        return ny * nx

    def edges(self) -> tuple[np.ndarray, np.ndarray]:
        """Output-pixel boundaries of the tile rows (ny + 1,) and columns (nx + 1,).

        Tile row k holds the output rows r with ``edges[k] <= r < edges[k + 1]``:
        those whose centre ``(r + 1/2) / sy`` lies in ``[k*tile - oy, (k+1)*tile - oy)``.
        """
        (ny, nx), (oy, ox), (sy, sx) = self.shape, self.offset, self.scale
        return (_cuts(ny, oy, sy, self.tile, self.height), _cuts(nx, ox, sx, self.tile, self.width))


def _cuts(n: int, offset: int, scale: float, tile: int, size: int) -> np.ndarray:
    # The small epsilon keeps exact multiples (scale 1, 2, ...) on the integer they
    # mean despite rounding in (k*tile - offset) * scale.
    bounds = np.ceil((np.arange(n + 1) * tile - offset) * scale - 0.5 - 1e-9)
    return np.clip(bounds, 0, size).astype(np.int64)


@dataclass(frozen=True)
class TileBins:
    """Kernels listed per tile: tile t uses ``ids[starts[t]:ends[t]]``.

    starts, ends : (T,) int64 tensors
    ids : (N,) int64 tensor of kernel indices, ascending within each tile.
    """

    starts: torch.Tensor
    ends: torch.Tensor
    ids: torch.Tensor

    @property
    def counts(self) -> torch.Tensor:
        return self.ends - self.starts

    def mean_kernels_per_tile(self) -> float:
        """Average number of kernels listed per tile (R Table I, "Avg. kernel")."""
        return float(self.counts.double().mean()) if self.counts.numel() else 0.0


def active_kernels(pi: torch.Tensor, mode: str) -> torch.Tensor:
    """Indices of the kernels that take part in rendering.

    In SMoE mode a kernel with ``pi <= 0`` is dead (pruned) and skipped; RBF mode
    ignores ``pi``.
    """
    if mode == "rbf":
        return torch.arange(pi.shape[0], device=pi.device)
    return torch.nonzero(pi.detach() > 0).flatten()


def bin_kernels(mu: torch.Tensor, chol: torch.Tensor, pi: torch.Tensor, grid: TileGrid, *,
                mode: str = "smoe", scope: str = "raster") -> TileBins:
    """List the kernels that act on each tile.

    Parameters
    ----------
    mu : (L, 2) tensor
    chol : (L, 3) tensor
    pi : (L,) tensor
    grid : TileGrid
    mode : {"smoe", "rbf"}
    scope : {"raster", "global"}
        ``"global"`` lists every active kernel for every tile.

    Returns
    -------
    TileBins
    """
    device = mu.device
    T = grid.num_tiles
    active = active_kernels(pi, mode)
    if scope == "global":
        n = active.numel()
        starts = torch.zeros(T, dtype=torch.long, device=device)
        return TileBins(starts, starts + n, active)

    box = tile_boxes(mu.detach()[active], chol.detach()[active], grid)
    if device.type == "cpu":
        starts, ends, ids = _list_boxes_cpu(box.numpy(), active.numpy(), grid.shape[1], T)
        return TileBins(*(torch.from_numpy(a) for a in (starts, ends, ids)))
    return list_boxes(box, active, grid.shape[1], T)


def tile_boxes(mu: torch.Tensor, chol: torch.Tensor, grid: TileGrid) -> torch.Tensor:
    """The range of tiles each kernel's square box touches.

    Parameters
    ----------
    mu : (N, 2) tensor
    chol : (N, 3) tensor
    grid : TileGrid

    Returns
    -------
    (4, N) int64 tensor
        Rows ``y0, y1, x0, x1``: kernel i touches tile rows ``y0..y1`` and
        columns ``x0..x1`` (inclusive, clamped to the grid; empty when a last
        index is below its first).
    """
    ny, nx = grid.shape
    oy, ox = grid.offset
    r = bounding_radius(chol)
    x, y = mu[:, 0], mu[:, 1]
    # Tile index ranges in float first: huge or infinite radii must clamp, not overflow.
    x0 = torch.floor((x - r + ox) / grid.tile).clamp(-1, nx)
    x1 = torch.floor((x + r + ox) / grid.tile).clamp(-1, nx)
    y0 = torch.floor((y - r + oy) / grid.tile).clamp(-1, ny)
    y1 = torch.floor((y + r + oy) / grid.tile).clamp(-1, ny)
    return torch.stack([y0.clamp(min=0), y1.clamp(max=ny - 1), x0.clamp(min=0), x1.clamp(max=nx - 1)]).long()


def list_boxes(box: torch.Tensor, active: torch.Tensor, nx: int, num_tiles: int) -> TileBins:
    """Tile lists from per-kernel tile boxes: the PyTorch implementation (any device).

    Parameters
    ----------
    box : (4, N) int64 tensor
        From :func:`tile_boxes`.
    active : (N,) int64 tensor
        The kernel index each box belongs to, ascending.
    nx : int
        Tiles per row.
    num_tiles : int

    Returns
    -------
    TileBins
    """
    device = box.device
    y0, y1, x0, x1 = box
    wx = (x1 - x0 + 1).clamp(min=0)
    wy = (y1 - y0 + 1).clamp(min=0)
    counts = wx * wy
    total = int(counts.sum())
    if total == 0:
        starts = torch.zeros(num_tiles, dtype=torch.long, device=device)
        return TileBins(starts, starts, torch.zeros(0, dtype=torch.long, device=device))

    owner = torch.repeat_interleave(torch.arange(active.numel(), device=device), counts)
    first = torch.cumsum(counts, 0) - counts
    k = torch.arange(total, device=device) - first[owner]
    wxo = wx[owner]
    tile = (y0[owner] + k // wxo) * nx + (x0[owner] + k % wxo)
    # A stable sort keeps kernels in ascending order inside a tile, so sums are
    # accumulated in the same order by every implementation.
    tile, order = torch.sort(tile, stable=True)
    ids = active[owner[order]]
    per_tile = torch.bincount(tile, minlength=num_tiles)
    ends = torch.cumsum(per_tile, 0)
    return TileBins(ends - per_tile, ends, ids)


@njit(cache=True)
def _list_boxes_cpu(box, active, nx, num_tiles):
    """:func:`list_boxes` as a counting sort: the same lists in O(pairs), for CPU arrays."""
    ny = num_tiles // nx
    # Boxes are clamped to the grid already; clamping again keeps a NaN position (cast to a
    # huge negative index) from writing out of bounds.
    counts = np.zeros(num_tiles, np.int64)
    for i in range(active.shape[0]):
        for ty in range(max(box[0, i], 0), min(box[1, i], ny - 1) + 1):
            for tx in range(max(box[2, i], 0), min(box[3, i], nx - 1) + 1):
                counts[ty * nx + tx] += 1
    ends = np.cumsum(counts)
    starts = ends - counts
    fill = starts.copy()
    ids = np.empty(ends[-1], np.int64)  # a grid has at least one tile
    # Kernels are visited in ascending order, so each tile's list comes out ascending, as the stable sort gives.
    for i in range(active.shape[0]):
        for ty in range(max(box[0, i], 0), min(box[1, i], ny - 1) + 1):
            for tx in range(max(box[2, i], 0), min(box[3, i], nx - 1) + 1):
                t = ty * nx + tx
                ids[fill[t]] = active[i]
                fill[t] += 1
    return starts, ends, ids
