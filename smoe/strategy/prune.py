"""Removing dead kernels: SMoE gates that the fit drove to zero (SPEC §2)."""

from __future__ import annotations

from .base import FitState, Strategy


class PruneDead(Strategy):
    """Every ``every`` steps and on the last one, drop the kernels whose gate ``pi <= 0``.

    A dead kernel already renders as nothing; removing it from the tensors
    makes the model, the tile lists and every later step smaller.
    """

    def __init__(self, every: int):
        self.every = every

    def after_step(self, state: FitState) -> None:
        if state.iteration % self.every and not state.last:
            return
        keep = state.leaves.pi.detach() > 0
        if not keep.all():
            state.leaves.keep(keep, state.optimizer)
