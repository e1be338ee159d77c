"""The hook interface between :func:`smoe.fit` and the strategies."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from ..parameters import KernelLeaves


@dataclass
class FitState:
    """What a strategy sees after a gradient step.

    leaves : the kernels being fitted (:class:`smoe.parameters.KernelLeaves`)
    optimizer : the Adam optimizer over ``leaves``
    target : (H, W, C) image being fitted
    render : (H, W, C) the model's render before this step, detached
    iteration : steps taken so far (1 after the first)
    last : True on the fit's last step
    mode : "smoe" or "rbf"
    psnr : PSNR of ``render`` against ``target`` in dB (None where the fit does not compute it)
    rasterize : renders ``(mu, chol, pi, experts)`` as the fit does, differentiably (None likewise)
    """

    leaves: KernelLeaves
    optimizer: torch.optim.Optimizer
    target: torch.Tensor
    render: torch.Tensor
    iteration: int
    last: bool
    mode: str
    psnr: float | None = None
    rasterize: Callable | None = None


class Strategy:
    """Changes the model between gradient steps; subclasses override :meth:`after_step` (and :meth:`view`)."""

    def view(self, mu, chol, pi, experts):
        """The parameters the fit renders, given the kernels' own (identity unless overridden).

        A quantizer renders through its rounding here, so the loss is that of
        the model a decoder will see while the gradient still moves the
        kernels' own parameters.
        """
        return mu, chol, pi, experts

    def after_step(self, state: FitState) -> None:
        """Called after every optimizer step, in the order the strategies were given."""

    def settled(self) -> bool:
        """False while the strategy still means to change the model's size: stop rules on convergence wait."""
        return True
