"""Trimming to a target: once the fit meets its PSNR, remove the kernels it needs least, and again.

Growth adds kernels a quarter at a time and stops at the first count that
meets the target, long before those kernels have settled; a fixed count fitted
to convergence meets the same target with half to a third of them.
:class:`TrimToTarget` closes that gap inside the same fit: every time the
render meets the target it removes the share ``share`` of the kernels whose
removal costs least (:func:`trim_mask`) and lets Adam, whose moments the
survivors keep, recover.  When a trimmed model fails to meet the target again
within ``patience`` steps the share halves; below ``min_share`` the strategy
is done.  :func:`smoe.fit` returns the last iterate that met the target, so the
answer is the smallest model that did.
"""

from __future__ import annotations

import torch

from .base import FitState, Strategy


def _weighted_sums(rasterize, mu, chol, pi, experts, fields):
    """The render and, per field v (H, W, C), the (L, C) sums ``sum_x g_k(x) v(x)`` of each kernel's weight.

    The gradient of the render with respect to kernel k's expert, weighted by
    v, is that sum: one backward pass per field, through the fit's own
    rasterizer.
    """
    e = experts.detach().clone().requires_grad_(True)
    out = rasterize(mu.detach(), chol.detach(), pi.detach(), e)
    r = out.detach()
    return r, [torch.autograd.grad(out, e, grad_outputs=v(r), retain_graph=True)[0] for v in fields]


def removal_cost(rasterize, mu, chol, pi, experts, mode: str) -> torch.Tensor:
    """(L,) first-order estimate of the squared error (over pixels and channels) that removing each kernel adds.

    For SMoE, ``sum_x g_k ||e_k - r||^2``: how far the kernel's colour is from
    the render it shares with its neighbours, over the pixels it carries, so a
    kernel whose neighbours render the same colour costs nothing.  The
    estimate assumes the neighbours take over; it misses the hole a kernel
    that is alone where it acts leaves (:func:`trim_mask` checks for those).
    An RBF kernel adds to the others, so removing it costs about its colour
    energy over its weight, ``||e_k||^2 sum_x w_k``.
    """
    ones = torch.ones_like
    fields = (ones,) if mode == "rbf" else (ones, lambda r: r, lambda r: r * r)
    _, (mass, *moments) = _weighted_sums(rasterize, mu, chol, pi, experts, fields)
    ek = experts.detach()
    if mode == "rbf":
        return (ek * ek * mass).sum(1)
    shared, energy = moments
    return (ek * ek * mass - 2 * ek * shared + energy).sum(1).clamp(min=0)


def trim_mask(rasterize, mu, chol, pi, experts, target, mode: str, k: int) -> torch.Tensor:
    """(L,) bool mask keeping all but ``k`` kernels: those whose removal, measured, costs least.

    The ``2 k`` kernels of lowest :func:`removal_cost` are removed together in
    one render; the error that adds at each pixel is charged to the removed
    kernels in proportion to their weight there, and the ``k`` charged least
    go.  A kernel that leaves a hole is charged the hole.
    """
    n = len(mu)
    candidates = torch.argsort(removal_cost(rasterize, mu, chol, pi, experts, mode))[:min(n - 1, 2 * k)]
    without = torch.ones(n, dtype=torch.bool, device=mu.device)
    without[candidates] = False
    with torch.no_grad():
        reduced = rasterize(mu[without], chol[without], pi[without], experts[without])

    def added_error(r):
        added = (reduced - target).square().sum(2, keepdim=True) - (r - target).square().sum(2, keepdim=True)
        return added.expand_as(r) / r.shape[2]

    _, (charge,) = _weighted_sums(rasterize, mu, chol, pi, experts, (added_error,))
    keep = torch.ones(n, dtype=torch.bool, device=mu.device)
    keep[candidates[torch.argsort(charge[candidates].sum(1))[:k]]] = False
    return keep


class TrimToTarget(Strategy):
    """Each time the render meets ``target_psnr``, remove the ``share`` of kernels that cost least.

    Parameters
    ----------
    target_psnr : float
        PSNR in dB the trimmed model must keep meeting.
    share : float
        Share of the live kernels removed at a time, in (0, 1); it halves
        whenever a trimmed model misses the target for ``patience`` steps.
    patience : int
        Steps a trimmed model has to meet the target again.
    min_share : float
        The share below which trimming stops.
    """

    def __init__(self, target_psnr: float, share: float = 0.1, *, patience: int = 100, min_share: float = 0.01):
        self.target, self.share = float(target_psnr), float(share)
        self.patience, self.min_share = int(patience), float(min_share)
        self.since = None  # the step of the last trim, None before the target was first met
        self.done = False

    def after_step(self, state: FitState) -> None:
        if self.done or state.last:
            return
        if state.psnr >= self.target:
            self._trim(state)
        elif self.since is not None and state.iteration - self.since >= self.patience:
            self.share /= 2
            self.since = state.iteration
            self.done = self.share < self.min_share

    def settled(self) -> bool:
        return self.done

    def _trim(self, state: FitState) -> None:
        leaves = state.leaves
        k = round(self.share * len(leaves))
        if k < 1 or k >= len(leaves):
            self.done = True
            return
        keep = trim_mask(state.rasterize, leaves.mu, leaves.cholesky(), leaves.pi, leaves.experts, state.target,
                         state.mode, k)
        leaves.keep(keep, state.optimizer)
        self.since = state.iteration
