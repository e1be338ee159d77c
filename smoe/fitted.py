"""A fitted model that knows how it is rendered.

A :class:`FittedModel` carries, beside the kernels, everything a render needs
that the kernels do not say: the regression mode and scope it was fitted
with, the frame (the size of the image it was fitted on, in whose pixel
coordinates the kernels live and whose 16 x 16 tiles the raster scope uses)
and the tile offset.  So ``smoe.render(fitted)`` reproduces the fit, and
``smoe.render(fitted, scale=2.5)``, ``size=(h, w)`` or ``sharpen=0.9`` render
it elsewhere, with nothing passed twice.  :func:`smoe.fit` returns one
(``FitResult.fitted``), :func:`smoe.load_model` reads one back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .sizes import TILE, check_tile_offset, check_tile_size, output_size
from .spec import MODES, SCOPES, FitSpec
from .validate import check_choice, check_finite, is_whole

if TYPE_CHECKING:
    from .model import Model

__all__ = ["FittedModel", "render"]


@dataclass(frozen=True)
class FittedModel:
    """A model with the frame, mode, scope and tile offset it was fitted with.

    Parameters
    ----------
    model : Model
        The kernels, in the pixel coordinates of ``frame``.
    frame : (int, int)
        ``(height, width)`` of the image the model was fitted on.
    mode : {"smoe", "rbf"}
    scope : {"raster", "global"}
    tile_offset : (int, int)
        ``(oy, ox)`` shift of the tile grid the model was fitted with.
    spec : FitSpec, optional
        The resolved specification of the fit, when known (a version-1 model
        file does not record one).
    tile : int
        Side of the raster tiles it was fitted with (16 unless the fit chose another).

    Examples
    --------
    >>> import smoe
    >>> image = np.random.default_rng(0).random((32, 48, 3)).astype(np.float32)
    >>> fitted = smoe.fit(image, 100, iters=5).fitted
    >>> fitted.render().shape, fitted.render(scale=2).shape
    ((32, 48, 3), (64, 96, 3))
    """

    model: Model
    frame: tuple[int, int]
    mode: str = "smoe"
    scope: str = "raster"
    tile_offset: tuple[int, int] = (0, 0)
    spec: FitSpec | None = None
    tile: int = TILE

    def __post_init__(self):
        check_choice("mode", self.mode, MODES)
        check_choice("scope", self.scope, SCOPES)
        if not (len(self.frame) == 2 and all(is_whole(s) and s >= 1 for s in self.frame)):
            raise ValueError(f"frame must be (height, width), two positive whole numbers, got {self.frame!r}")
        tile = check_tile_size(self.tile)
        tile_offset = check_tile_offset(self.tile_offset, tile)
        if self.spec is not None and not isinstance(self.spec, FitSpec):
            raise ValueError(f"spec must be a FitSpec or None, got {type(self.spec).__name__}")
        # Plain ints, so that equality, JSON and TileGrid see the same values however they were given.
        object.__setattr__(self, "frame", (int(self.frame[0]), int(self.frame[1])))
        object.__setattr__(self, "tile_offset", tile_offset)
        object.__setattr__(self, "tile", tile)

    @property
    def height(self) -> int:
        return self.frame[0]

    @property
    def width(self) -> int:
        return self.frame[1]

    def render(self, scale: float | None = None, size: tuple[int, int] | None = None, *, sharpen: float = 1.0,
               backend: str = "auto") -> np.ndarray:
        """Render on a raster covering the fitted frame: its own size, ``scale`` times it, or ``size``.

        Parameters
        ----------
        scale : float, optional
            Any factor > 0; sizes round to the nearest pixel.
        size : (int, int), optional
            Output ``(height, width)`` instead (the aspect may change).
        sharpen : float
            Bandwidth factor f applied to every kernel (f < 1 sharpens, 1 is off).
        backend : {"auto", "cpu", "torch"}

        Returns
        -------
        (H', W', C) array in the model's dtype, not clipped.

        Raises
        ------
        ValueError
            A bad scale, size or factor, or an output above
            :data:`smoe.sizes.MAX_OUTPUT_PIXELS`, before any rendering.
        """
        import torch

        from .rasterizer import render as render_model

        h, w = output_size(self.frame, scale=scale, size=size)
        sharpen = check_finite("sharpen", sharpen, low=0, low_open=True)
        with torch.no_grad():
            out = render_model(self.model, h, w, mode=self.mode, scope=self.scope, extent=self.frame,
                               tile_offset=self.tile_offset, sharpen=sharpen, backend=backend, tile=self.tile)
        return out.cpu().numpy()

    def kernels_per_tile(self) -> float:
        """Mean kernels listed per tile at the fitted size (R Table I); the kernel count in global scope."""
        if self.scope != "raster":
            return float(len(self.model))
        from .rasterizer import kernels_per_tile

        return kernels_per_tile(self.model, *self.frame, mode=self.mode, tile_offset=self.tile_offset, tile=self.tile)


def render(fitted: FittedModel, scale: float | None = None, size: tuple[int, int] | None = None, *,
           sharpen: float = 1.0, backend: str = "auto") -> np.ndarray:
    """Render a fitted model (see :meth:`FittedModel.render`); ``smoe.render``.

    Examples
    --------
    >>> import smoe
    >>> image = np.random.default_rng(0).random((32, 48)).astype(np.float32)
    >>> fitted = smoe.fit(image, 100, iters=5).fitted
    >>> smoe.render(fitted, size=(20, 30), sharpen=0.9).shape
    (20, 30, 1)
    """
    if not isinstance(fitted, FittedModel):
        raise TypeError(f"render takes a FittedModel (from smoe.fit(...).fitted or smoe.load_model), got "
                        f"{type(fitted).__name__}; render a bare Model with smoe.rasterizer.render(model, h, w)")
    return fitted.render(scale, size, sharpen=sharpen, backend=backend)
