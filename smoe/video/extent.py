"""Keeping kernels long in time: a floor on the temporal extent of every kernel.

Fitted to frames alone, nothing ties a kernel to the instants between them,
and a kernel that covers one frame can vanish before the next: rendered
between frames, such a model cross-fades two stills, which is worse than
blending the frames themselves.  :class:`FloorTimeExtent` keeps every
kernel's standard deviation along t, at a fixed pixel, at least
``min_sigma_t`` frames, so each kernel has to explain several frames at once.
(On carphone, fitting the even frames and rendering the odd ones,
``benchmarks/video.py``, a floor of 0.5 frames gains 0.9 dB over none; 1 and 2
frames gain no more.)

With precision ``B^T B`` (``B`` lower triangular over x, y, t) the last row of
``B`` is the regression of t on (x, y): at a fixed pixel the kernel lasts
with standard deviation ``1 / b22`` around its passage, so the floor is a cap
on ``b22``, one clamp of one column of the log-Cholesky leaf.
"""

from __future__ import annotations

import math

import torch

from ..strategy.base import FitState, Strategy
from .model import DIAGONAL

#: Column of the t-t diagonal entry b22 in the (L, 6) Cholesky rows.
_B22 = DIAGONAL[2]


def time_sigma(chol: torch.Tensor) -> torch.Tensor:
    """(L,) standard deviation along t at a fixed pixel, in frames, of kernels with Cholesky rows ``chol`` (L, 6)."""
    return 1.0 / chol[:, _B22]


class FloorTimeExtent(Strategy):
    """After every step, lengthen along t each kernel shorter than ``min_sigma_t`` frames (standard deviation)."""

    def __init__(self, min_sigma_t: float):
        self.log_cap = -math.log(float(min_sigma_t))

    def after_step(self, state: FitState) -> None:
        with torch.no_grad():
            state.leaves.chol[:, _B22].clamp_(max=self.log_cap)
