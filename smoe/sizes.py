"""Pixel sizes every module agrees on: the tile side, the output-pixel limit, output raster sizes.

:func:`output_size` is the one place an output raster's size is computed
(``smoe render``, :meth:`smoe.fitted.FittedModel.render`, :func:`smoe.upscale`),
so the limit :data:`MAX_OUTPUT_PIXELS` is applied there, before any memory is
committed.  Light to import: no torch, no numba.
"""

from __future__ import annotations

import math

from .validate import is_real, is_whole

__all__ = ["TILE", "MAX_OUTPUT_PIXELS", "output_size", "check_output_pixels", "check_tile_offset", "check_tile_size",
           "TILE_SIZES"]

#: Side of the square tiles of rasterized rendering, in pixels of the fitted frame (R paper, Section IV).
TILE = 16
#: Tile sides a fit may choose instead (``FitSpec.tile_size``, ``smoe fit --tile-size``).
TILE_SIZES = (4, 8, 16, 32, 64)
#: Largest output raster (width x height) smoe renders; bigger requests are refused before any work
#: (a float32 RGB raster of this size takes 1.2 GB, and rendering it several times more).
MAX_OUTPUT_PIXELS = 100_000_000


def check_tile_size(tile) -> int:
    """Refuse a tile side that is not a power of two from 4 to 64; returns it as an int.

    Examples
    --------
    >>> check_tile_size(32)
    32
    """
    if not (is_whole(tile) and int(tile) in TILE_SIZES):
        raise ValueError(f"tile size must be a power of two from 4 to 64 ({', '.join(map(str, TILE_SIZES))}), "
                         f"got {tile!r}")
    return int(tile)


def check_tile_offset(offset, tile: int = TILE) -> tuple[int, int]:
    """Refuse a tile-grid shift that is not two whole numbers ``(oy, ox)`` in ``[0, tile)``; returns it as ints.

    Examples
    --------
    >>> check_tile_offset([3, 7])
    (3, 7)
    """
    if not (isinstance(offset, (tuple, list)) and len(offset) == 2 and all(is_whole(o) and 0 <= o < tile
                                                                           for o in offset)):
        raise ValueError(f"tile_offset must be two whole numbers (oy, ox) from 0 to {tile - 1}, got {offset!r}")
    return int(offset[0]), int(offset[1])


def check_output_pixels(height: int, width: int) -> tuple[int, int]:
    """Refuse an output raster above :data:`MAX_OUTPUT_PIXELS`; returns ``(height, width)``.

    Examples
    --------
    >>> check_output_pixels(1080, 1920)
    (1080, 1920)
    """
    if height * width > MAX_OUTPUT_PIXELS:
        raise ValueError(f"output of {width}x{height} = {height * width / 1e6:.0f} megapixels exceeds the limit of "
                         f"{MAX_OUTPUT_PIXELS // 1_000_000} megapixels; use a smaller scale or size")
    return height, width


def output_size(frame: tuple[int, int], *, scale: float | None = None,
                size: tuple[int, int] | None = None) -> tuple[int, int]:
    """Output raster ``(height, width)`` for a model fitted on a ``frame = (height, width)`` image.

    Parameters
    ----------
    frame : (int, int)
        ``(height, width)`` of the fitted image.
    scale : float, optional
        Any real factor > 0 (2.5 and 0.5 work too); sizes round to the nearest
        pixel, at least 1.
    size : (int, int), optional
        Explicit ``(height, width)``; give ``scale`` or ``size``, not both.
        Neither means the fitted size.

    Returns
    -------
    (int, int), at most :data:`MAX_OUTPUT_PIXELS` pixels.

    Raises
    ------
    ValueError
        A bad scale or size, both given, or an output above the limit.

    Examples
    --------
    >>> output_size((24, 32), scale=2.5)
    (60, 80)
    >>> output_size((24, 32), size=(10, 20))
    (10, 20)
    """
    if scale is not None and size is not None:
        raise ValueError("give either scale or size, not both")
    if size is not None:
        if len(size) != 2 or not all(is_whole(s) and s >= 1 for s in size):
            raise ValueError(f"output size must be two positive whole numbers (height, width), got {size!r}")
        return check_output_pixels(int(size[0]), int(size[1]))
    if scale is None:
        scale = 1.0
    if not (is_real(scale) and math.isfinite(scale) and scale > 0):
        raise ValueError(f"scale must be a positive finite number, got {scale!r}")
    return check_output_pixels(max(1, round(frame[0] * scale)), max(1, round(frame[1] * scale)))
