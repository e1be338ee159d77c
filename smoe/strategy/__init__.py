"""Strategies: what changes the kernel set while a fit runs (after gsplat's ``strategy/``).

:func:`smoe.fit` is a plain loop of gradient steps; everything that edits the
model between steps is a :class:`Strategy` whose :meth:`~Strategy.after_step`
sees the :class:`FitState` and may move, add or remove kernels through it:

* :class:`~smoe.strategy.extent.BoundExtent`: keeps every kernel's 99 %
  ellipse within a radius, so tile lists stay short (``max_reach``);
* :class:`~smoe.strategy.growth.GrowByError`: starts from part of the budget
  and adds kernels where the residual is largest (``grow_start``, and
  ``--target-psnr`` without ``-n``);
* :class:`~smoe.strategy.trim.TrimToTarget`: once the fit meets its target
  PSNR, removes the kernels that cost least, again each time it meets it
  (``trim``, and ``--target-psnr`` without ``-n``);
* :class:`~smoe.strategy.prune.PruneDead`: removes SMoE kernels whose gate
  reached zero (``prune_every``);
* :class:`~smoe.strategy.quantize.QuantizeStraightThrough`: renders through the
  codec's rounding (its :meth:`~Strategy.view`), for the encoder's fine-tuning.

:func:`strategies_for` builds the list a :class:`smoe.spec.FitSpec` asks for,
in that order, so a spec alone decides a fit; the quantizer is passed to
:func:`smoe.fit` by the codec, which records its steps in the bitstream.
"""

from __future__ import annotations

import math

from .base import FitState, Strategy
from .extent import BoundExtent
from .growth import GrowByError
from .prune import PruneDead
from .quantize import QuantizeStraightThrough
from .trim import TrimToTarget

__all__ = ["FitState", "Strategy", "BoundExtent", "GrowByError", "TrimToTarget", "PruneDead", "QuantizeStraightThrough",
           "strategies_for"]

#: Growth events a fit's ``iters`` must leave room for, at least twice the 7 that a quarter of the budget
#: needs to grow to all of it at 25 % per event.
GROWTH_EVENTS = 16


def strategies_for(spec, n_start: int, frame: tuple[int, int]) -> list[Strategy]:
    """The strategies a validated ``spec`` asks for, for a fit of a ``frame`` (H, W) from ``n_start`` kernels."""
    out: list[Strategy] = []
    area = frame[0] * frame[1]
    if spec.max_reach is not None and spec.trim is not None:
        out.append(BoundExtent(spec.max_reach, area))  # the final count is what the fit finds: follow the live one
    elif spec.max_reach is not None:
        out.append(BoundExtent(spec.max_reach * math.sqrt(area / (spec.n_kernels or n_start))))
    if spec.n_kernels is not None and n_start < spec.n_kernels:
        # A short fit grows faster, so that it reaches the budget within its first half.
        every = max(1, min(spec.grow_every, spec.iters // GROWTH_EVENTS))
        out.append(GrowByError(spec.n_kernels, every=every, seed=spec.seed, target_psnr=spec.target_psnr))
    if spec.trim is not None:
        out.append(TrimToTarget(spec.target_psnr, spec.trim))
    if spec.mode == "smoe":
        out.append(PruneDead(spec.prune_every))
    return out
