"""Tuned defaults of super-resolution (:mod:`smoe.superres`), with the measurements that chose them.

They live beside the task and apart from its code so that ``smoe upscale
--help`` can show them without loading torch; :mod:`smoe.superres` imports
and re-exports both names.
"""

from __future__ import annotations

from .spec import CLASSIC_RATES, STRATEGIES_OFF, FitSpec

__all__ = ["PRESET", "DEFAULT_DENSITY"]

#: Initial kernels per input pixel.  Upscaling needs a model that interpolates the input.
#: kodim23 reduced 4x (192 x 128), rendered 4x: one grid kernel per pixel scored 29.01 dB after
#: 100 iterations (bicubic 28.89, Lanczos 29.02); with 300 iterations and the learning rates used
#: before the shipped fit defaults, 1/2, 1/4 and 1/8 kernels per pixel scored 28.95, 28.69 and
#: 28.22.  kodim05: 21.95 dB with 1 and 21.84 with 1/2 (bicubic 21.81).
DEFAULT_DENSITY = 1.0
#: The fit of :func:`smoe.superres.upscale`; ``n_kernels`` None means :data:`DEFAULT_DENSITY` kernels per pixel.
#: Steps: at one kernel per pixel 30 already gave 28.99 dB, 100 gave 29.01.  Initializer: the
#: regular grid puts one kernel on every pixel at density 1 and keeps kernels small (half the
#: spacing), so each tile lists few kernels; 5 px random kernels made each step about 10x slower.
PRESET = FitSpec(n_kernels=None, init="grid", iters=100, scope="raster", **STRATEGIES_OFF, **CLASSIC_RATES)
