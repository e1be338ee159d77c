"""Rendering a kernel model to pixels, differentiably.

Two regression functions over the same kernels (SPEC §1):

* ``mode="smoe"``: ``y(x) = sum_j m_j pi_j K_j(x) / sum_i pi_i K_i(x)`` (gating network);
* ``mode="rbf"``:  ``y(x) = sum_j m_j K_j(x)`` (the GaussianImage model).

Two scopes:

* ``scope="global"``: every kernel acts on every pixel;
* ``scope="raster"``: 16 x 16 tiles, each kernel listed for the tiles its 99 %
  box touches (:mod:`smoe.tiles`), gates normalised per tile.

Pixels that no kernel reaches (summed gate weight below ``1e-30``) render as 0.
In SMoE mode, kernels with ``pi <= 0`` are dead and ignored; RBF ignores ``pi``.

Two implementations stand behind :func:`rasterize`: the fused numba kernel
(:mod:`smoe.fused_cpu`, used for CPU tensors) and the plain PyTorch reference
(:mod:`smoe.reference`, used on other devices and as the test oracle).
"""

from __future__ import annotations

import math

import torch

from . import fused_cpu, reference
from .model import Model, rescale
from .tiles import TileGrid, active_kernels, bin_kernels
from .spec import MODES, SCOPES
from .sizes import TILE, check_tile_size
from .validate import check_choice

BACKENDS = ("auto", "cpu", "torch")


def rasterize(mu, chol, pi, experts, height: int, width: int, *, mode: str = "smoe", scope: str = "raster",
              tile_offset: tuple[int, int] = (0, 0), extent: tuple[int, int] | None = None,
              sharpen: float = 1.0, backend: str = "auto", tile: int = TILE) -> torch.Tensor:
    """Render raw kernel parameters on a pixel raster.

    Parameters
    ----------
    mu : (L, 2) tensor
        Centres ``(x, y)``; pixel (r, c) has its centre at ``(c + 0.5, r + 0.5)``.
    chol : (L, 3) tensor
        Precision Cholesky factors ``(b00, b10, b11)``.
    pi : (L,) tensor
        Gate weights.
    experts : (L, C) tensor
        Constant experts.
    height, width : int
        Output size in pixels.
    mode : {"smoe", "rbf"}
    scope : {"raster", "global"}
    tile_offset : (int, int)
        ``(oy, ox)`` shift of the tile grid, each in ``[0, tile)``.
    extent : (int, int), optional
        ``(height, width)`` of the frame the parameters live in (the fitted
        image); the output raster covers that frame.  Defaults to the output
        size.  Tiles are laid out in that frame, so every output size samples
        the same function.
    sharpen : float
        Bandwidth factor f applied to every kernel after binning
        (``Sigma -> f^2 Sigma``; f < 1 sharpens, SPEC §6).  Tiles keep the
        kernel lists of the unedited model, so sharpening never leaves tiles
        that no kernel reaches.
    backend : {"auto", "cpu", "torch"}
        ``"auto"`` picks the fused kernel for CPU tensors and the PyTorch
        reference otherwise.
    tile : int
        Side of the square tiles in pixels of the fitted frame, a power of two
        from 4 to 64 (default 16, the R paper's).

    Returns
    -------
    (height, width, C) tensor, differentiable with respect to all four inputs.
    """
    check_choice("mode", mode, MODES)
    check_choice("scope", scope, SCOPES)
    check_choice("backend", backend, BACKENDS)
    if height < 1 or width < 1:
        raise ValueError(f"image size must be positive, got {height}x{width}")
    if not (math.isfinite(sharpen) and sharpen > 0):
        raise ValueError(f"sharpen must be a positive finite factor, got {sharpen}")
    h0, w0 = (height, width) if extent is None else extent
    if h0 < 1 or w0 < 1:
        raise ValueError(f"extent must be positive, got {h0}x{w0}")
    sy, sx = height / h0, width / w0
    grid = TileGrid(int(height), int(width), tuple(int(o) for o in tile_offset), tile=check_tile_size(tile),
                    scale=(sy, sx))
    if backend == "auto":
        backend = "cpu" if mu.device.type == "cpu" else "torch"
    if backend == "cpu" and mu.device.type != "cpu":
        raise ValueError(f"backend='cpu' needs CPU tensors, got {mu.device}; use backend='torch'")
    # Tiles are binned in the model's own frame, pixels are evaluated in the output frame.
    needs_bins = backend == "cpu" or scope == "raster"
    bins = bin_kernels(mu, chol, pi, grid, mode=mode, scope=scope) if needs_bins else None
    if (sy, sx) != (1.0, 1.0):
        mu, chol = rescale(mu, chol, sx, sy)
    if sharpen != 1.0:
        chol = chol / sharpen
    if backend == "cpu":
        return fused_cpu.rasterize_cpu(mu, chol, pi, experts, grid, bins, mode=mode)
    if scope == "global":
        return reference.rasterize_global(mu, chol, pi, experts, grid.height, grid.width,
                                          active_kernels(pi, mode), mode=mode)
    return reference.rasterize_tiles(mu, chol, pi, experts, grid, bins, mode=mode)


def render(model: Model, height: int, width: int, *, mode: str = "smoe", scope: str = "raster",
           extent: tuple[int, int] | None = None, tile_offset: tuple[int, int] = (0, 0),
           sharpen: float = 1.0, backend: str = "auto", tile: int = TILE) -> torch.Tensor:
    """Render a model on a ``height x width`` pixel raster.

    Parameters
    ----------
    model : Model
    height, width : int
        Output size in pixels.
    mode, scope, tile_offset, sharpen, backend, tile
        As in :func:`rasterize`.
    extent : (int, int), optional
        ``(height, width)`` of the image the model was fitted on.  The output
        raster covers that same area, so ``extent=(h, w)`` with an output of
        ``(2h, 2w)`` renders at twice the resolution (super-resolution).
        Defaults to the output size (scale 1).  Tiles are ``tile x tile`` pixels
        of that fitted frame, so raster scope shows no seams at other scales.

    Returns
    -------
    (height, width, C) tensor.
    """
    return rasterize(model.mu, model.chol, model.pi, model.experts, height, width, mode=mode, scope=scope,
                     tile_offset=tile_offset, extent=extent, sharpen=sharpen, backend=backend, tile=tile)


def kernels_per_tile(model: Model, height: int, width: int, *, mode: str = "smoe",
                     tile_offset: tuple[int, int] = (0, 0), tile: int = TILE) -> float:
    """Average number of kernels listed per ``tile x tile`` tile (R Table I, "Avg. kernel")."""
    grid = TileGrid(int(height), int(width), tuple(tile_offset), tile=check_tile_size(tile))
    return bin_kernels(model.mu, model.chol, model.pi, grid, mode=mode).mean_kernels_per_tile()
