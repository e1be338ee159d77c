"""Keeping kernels local: a bound on the reach of every kernel.

A kernel is listed for every tile its 99 % box touches (:mod:`smoe.tiles`), so
the cost of a step grows with the kernels' extent.  Left alone, SMoE kernels
widen during a fit (the gates, not the kernels, draw the edges), and the
kernels per 16 x 16 tile of a 10 000-kernel Kodak fit grow from about 80 to
over 200.  :class:`BoundExtent` projects each kernel back after every step:
only the axes longer than ``max_radius`` are shortened to it, and the
orientation is kept, so an elongated edge kernel stays one.  (Scaling the
whole kernel instead shrinks the minor axis at every step the optimizer tries
to widen it, and the fit degrades.)
"""

from __future__ import annotations

import math

import torch

from ..model import CHI2_99, bounding_radius, precision_from_chol
from ..parameters import to_log_chol
from .base import FitState, Strategy


def bound_precision(chol: torch.Tensor, max_radius: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Cholesky factors (L, 3) whose 99 % ellipse has a major semi-axis of at most ``max_radius`` px.

    Returns ``(index, new_chol)``: the rows that changed and their new factors.
    Each eigenvalue of the precision below ``chi2_99 / max_radius^2`` is raised
    to it, the eigenvectors kept: an axis within the bound is untouched.
    """
    # The closed-form radius picks the few kernels to change; the eigendecomposition of all of them
    # would cost a sixth of a fit step.
    index = torch.nonzero(bounding_radius(chol) > max_radius).squeeze(1)
    if index.numel() == 0:
        return index, chol[:0]
    # float64: recovering b00 from p00 - b10^2 cancels badly in float32 for elongated kernels
    lam, vec = torch.linalg.eigh(precision_from_chol(chol[index].double()))
    P = vec @ torch.diag_embed(lam.clamp(min=CHI2_99 / max_radius ** 2)) @ vec.transpose(1, 2)
    # P = B^T B with B = [[b00, 0], [b10, b11]]: p11 = b11^2, p01 = b10 b11, p00 = b00^2 + b10^2.
    b11 = P[:, 1, 1].sqrt()
    b10 = P[:, 0, 1] / b11
    b00 = (P[:, 0, 0] - b10 * b10).clamp(min=torch.finfo(P.dtype).tiny).sqrt()
    return index, torch.stack([b00, b10, b11], 1).to(chol.dtype)


class BoundExtent(Strategy):
    """After every step, shorten the axes of each kernel that reach beyond ``max_radius`` px.

    With ``area`` (the frame's pixel count) given, ``max_radius`` is in kernel
    spacings of the live model, ``sqrt(area / kernels)``, so the bound follows
    a model whose size the fit is still choosing (a fit to a target PSNR).
    """

    def __init__(self, max_radius: float, area: float | None = None):
        self.max_radius = float(max_radius)
        self.area = area

    def after_step(self, state: FitState) -> None:
        leaves = state.leaves
        radius = self.max_radius if self.area is None else self.max_radius * math.sqrt(self.area / max(1, len(leaves)))
        with torch.no_grad():
            index, chol = bound_precision(leaves.cholesky(), radius)
            if index.numel():
                leaves.chol[index] = to_log_chol(chol)
