"""Rendering a space-time model to frames, differentiably.

The regression functions of 2D (:mod:`smoe.rasterizer`) over kernels in
(x, y, t): ``mode="smoe"`` normalises the gates per space-time block,
``mode="rbf"`` sums the kernels.  Blocks are ``tile x tile`` pixels by
``tile_t`` frames (:mod:`smoe.video.tiles`).  Frames are asked for by clip
time (frame f is ``f + 0.5``), so one call renders the fitted frames, frames
between them, or a window of a long clip.

Two implementations: the fused numba kernel (:mod:`smoe.video.fused_cpu`,
for CPU tensors) and the PyTorch reference (:mod:`smoe.video.reference`,
any device, the tests' oracle).
"""

from __future__ import annotations

import numpy as np
import torch

from ..rasterizer import BACKENDS
from ..sizes import TILE, check_tile_size
from ..spec import MODES
from ..tiles import TileGrid
from ..validate import check_choice
from . import fused_cpu, reference
from .fitted import TILE_T, check_tile_t
from .model import VideoModel, rescale
from .tiles import VideoGrid, bin_video


def video_grid(height: int, width: int, times, *, extent: tuple[int, int] | None = None, tile: int = TILE,
               tile_t: int = TILE_T) -> VideoGrid:
    """The blocks over an output of ``len(times)`` frames of ``height x width`` pixels (see :func:`rasterize_video`)."""
    if height < 1 or width < 1:
        raise ValueError(f"frame size must be positive, got {height}x{width}")
    h0, w0 = (height, width) if extent is None else extent
    if h0 < 1 or w0 < 1:
        raise ValueError(f"extent must be positive, got {h0}x{w0}")
    space = TileGrid(int(height), int(width), (0, 0), tile=check_tile_size(tile), scale=(height / h0, width / w0))
    return VideoGrid(space, np.asarray(times, dtype=np.float64), check_tile_t(tile_t))


def rasterize_video(mu, chol, pi, experts, height: int, width: int, times, *, mode: str = "smoe",
                    extent: tuple[int, int] | None = None, tile: int = TILE, tile_t: int = TILE_T,
                    backend: str = "auto") -> torch.Tensor:
    """Render raw space-time kernel parameters at the clip times ``times``.

    Parameters
    ----------
    mu : (L, 3) tensor
        Centres ``(x, y, t)``.
    chol : (L, 6) tensor
        Precision Cholesky factors ``(b00, b10, b11, b20, b21, b22)``.
    pi : (L,) tensor
    experts : (L, C) tensor
    height, width : int
        Output frame size in pixels.
    times : (F,) array
        Non-decreasing clip times of the output frames; frame f of the
        fitted clip is ``f + 0.5``.
    mode : {"smoe", "rbf"}
    extent : (int, int), optional
        ``(height, width)`` of the fitted frames; default the output size.
        A larger output renders the same function more densely.
    tile, tile_t : int
        Block size: ``tile x tile`` pixels of the fitted frame by ``tile_t`` frames.
    backend : {"auto", "cpu", "torch"}

    Returns
    -------
    (F, height, width, C) tensor, differentiable with respect to the four inputs.

    Examples
    --------
    >>> import torch
    >>> mu = torch.tensor([[8.0, 8.0, 2.0]])
    >>> chol = torch.tensor([[0.3, 0.0, 0.3, 0.0, 0.0, 0.5]])
    >>> out = rasterize_video(mu, chol, torch.ones(1), torch.ones(1, 3), 16, 16, [0.5, 1.5, 2.5])
    >>> tuple(out.shape)
    (3, 16, 16, 3)
    """
    check_choice("mode", mode, MODES)
    check_choice("backend", backend, BACKENDS)
    grid = video_grid(height, width, times, extent=extent, tile=tile, tile_t=tile_t)
    if backend == "auto":
        backend = "cpu" if mu.device.type == "cpu" else "torch"
    if backend == "cpu" and mu.device.type != "cpu":
        raise ValueError(f"backend='cpu' needs CPU tensors, got {mu.device}; use backend='torch'")
    # Blocks are binned in the model's frame; voxels are evaluated in the output's.
    bins = bin_video(mu, chol, pi, grid, mode=mode)
    sy, sx = grid.space.scale
    if (sy, sx) != (1.0, 1.0):
        mu, chol = rescale(mu, chol, sx, sy)
    if backend == "cpu":
        return fused_cpu.rasterize_video_cpu(mu, chol, pi, experts, grid, bins, mode=mode)
    return reference.rasterize_blocks(mu, chol, pi, experts, grid, bins, mode=mode)


def render_video(model: VideoModel, height: int, width: int, times, *, mode: str = "smoe",
                 extent: tuple[int, int] | None = None, tile: int = TILE, tile_t: int = TILE_T,
                 backend: str = "auto") -> torch.Tensor:
    """Render a :class:`VideoModel` at clip ``times`` (see :func:`rasterize_video`).  Returns (F, H, W, C)."""
    return rasterize_video(model.mu, model.chol, model.pi, model.experts, height, width, times, mode=mode,
                           extent=extent, tile=tile, tile_t=tile_t, backend=backend)


def kernels_per_block(model: VideoModel, height: int, width: int, frames: int, *, mode: str = "smoe",
                      tile: int = TILE, tile_t: int = TILE_T, first: int = 0) -> float:
    """Mean number of kernels listed per space-time block over frames ``first .. first + frames - 1``."""
    grid = video_grid(height, width, np.arange(first, first + frames) + 0.5, tile=tile, tile_t=tile_t)
    return bin_video(model.mu, model.chol, model.pi, grid, mode=mode).mean_kernels_per_tile()
