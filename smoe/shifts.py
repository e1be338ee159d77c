"""Tile-grid offsets of the models that multi-model denoising averages (R paper, Section V).

A shift step ``s`` (a divisor of 16) gives the full grid of 2D offsets
``{0, s, 2s, ...}^2``, i.e. ``(16/s)^2`` models: 64, 16, 4, 1 for
s = 2, 4, 8, 16, as in the paper.  A model count H that is
such a square uses that grid.  Any other H (the paper also reports 8 models)
takes H offsets evenly spaced in raster order over the 16 x 16 offset square,
index ``j_k = floor(256 k / H)``, and shears each row by 5 columns (mod 16), a
rank-1-lattice layout: for H = 8 that is (0, 0), (2, 10), (4, 4), (6, 14),
(8, 8), (10, 2), (12, 12), (14, 6), so every model cuts its tiles along a
different row *and* a different column (all offsets are multiples of the shift
step 2).  The shear is a bijection of the offset square, so offsets are
always distinct.

Light to import (no NumPy, no torch), so the command line checks a model
count before it loads the fitting machinery.

Examples
--------
>>> shift_offsets(4)
[(0, 0), (0, 8), (8, 0), (8, 8)]
"""

from __future__ import annotations

import math
from numbers import Integral

from .denoising_preset import DEFAULT_MODELS, MAX_MODELS
from .sizes import TILE

__all__ = ["shift_offsets", "check_models"]

# Columns each row of the generic offset layout is sheared by; 5 is coprime with 16,
# so the shear permutes columns, and it spreads 8 offsets over 8 rows and 8 columns.
_SHEAR = 5


def shift_offsets(models: int | None = None, shift_step: int | None = None) -> list[tuple[int, int]]:
    """Tile-grid offsets ``(oy, ox)`` of the averaged models.

    Parameters
    ----------
    models : int, optional
        Number of models H, 1 <= H <= 256.  H in {1, 4, 16, 64, 256} gives the
        full grid of the shift step ``16 / sqrt(H)``; any other H the sheared
        layout described in the module docstring.
    shift_step : int, optional
        Shift step s in pixels, a divisor of 16: the full grid of
        ``(16 / s)^2`` offsets.  If both are given they must agree.

    Returns
    -------
    list of H distinct ``(oy, ox)`` tuples with ``0 <= oy, ox < 16``; the
    first is always ``(0, 0)``.
    """
    if models is None and shift_step is None:
        models = DEFAULT_MODELS
    if shift_step is not None:
        step = _check_shift_step(shift_step)
        n = TILE // step
        if models is not None and check_models(models) != n * n:
            raise ValueError(f"shift step {step} gives {n * n} models, not {models}; give only one of models "
                             "and shift_step")
        return [(oy * step, ox * step) for oy in range(n) for ox in range(n)]
    h = check_models(models)
    side = math.isqrt(h)
    if side * side == h and TILE % side == 0:
        return shift_offsets(shift_step=TILE // side)
    offsets = []
    for k in range(h):
        j = (k * MAX_MODELS) // h
        oy, ox = divmod(j, TILE)
        offsets.append((oy, (ox + _SHEAR * oy) % TILE))
    return offsets


def check_models(models, *, allow_zero: bool = False) -> int:
    """A model count from 1 (0 with ``allow_zero``, as ``chroma_models``) to :data:`MAX_MODELS`; returns it."""
    low, name = (0, "chroma_models") if allow_zero else (1, "models")
    if isinstance(models, bool) or not isinstance(models, Integral) or not low <= models <= MAX_MODELS:
        raise ValueError(f"{name} must be a whole number from {low} to {MAX_MODELS} (the distinct shifts of a "
                         f"{TILE}x{TILE} tile grid), got {models!r}")
    return int(models)


def _check_shift_step(step) -> int:
    if isinstance(step, bool) or not isinstance(step, Integral) or step < 1 or TILE % step:
        raise ValueError(f"shift step must divide the tile size {TILE} (1, 2, 4, 8 or 16 pixels), got {step!r}")
    return int(step)
