"""Error-guided growth: start with part of the budget, add kernels where the residual is largest.

Every ``every`` steps, while the model has fewer than ``cap`` kernels, a
share ``rate`` of its size is added at pixels drawn with probability
following the smoothed squared residual, so new kernels land on the edges and
texture the model still misses (Image-GS grows the same way).  A new SMoE
kernel takes the image value under it as expert and the median live gate; a
new RBF kernel, which adds to what is there, takes the residual under it.
Its size follows the spacing the residual density gives
(:func:`smoe.initializers.content.sample_kernels`).
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

from ..initializers.content import sample_kernels
from ..model import Model
from .base import FitState, Strategy


class GrowByError(Strategy):
    """Add ``rate`` x the current count every ``every`` steps, up to ``cap`` kernels.

    Parameters
    ----------
    cap : int
        Most kernels the model may have.
    every : int
        Steps between additions.
    seed : int
        Seeds where the new kernels go.
    rate : float
        Kernels added at a time, as a share of the current count.
    target_psnr : float, optional
        Growth ends for good once the render meets this PSNR in dB.
    """

    def __init__(self, cap: int, *, every: int = 50, seed: int = 0, rate: float = 0.25,
                 target_psnr: float | None = None):
        self.cap, self.every, self.rate, self.target = int(cap), int(every), float(rate), target_psnr
        self.rng = np.random.default_rng(seed)
        self.full = self.met = False

    def after_step(self, state: FitState) -> None:
        n = len(state.leaves)
        self.met = self.met or self.target is not None and state.psnr >= self.target
        self.full = n >= self.cap
        if state.last or state.iteration % self.every or self.full or self.met:
            return
        k = min(self.cap - n, max(1, round(self.rate * n)))
        state.leaves.extend(self._new_kernels(state, k), state.optimizer)

    def settled(self) -> bool:
        return self.full or self.met

    def _new_kernels(self, state: FitState, k: int) -> Model:
        target = state.target.detach().cpu().numpy()
        residual = target - state.render.detach().cpu().numpy()
        energy = ndimage.gaussian_filter(np.square(residual).sum(axis=2), 1.0) + 1e-12
        grown = sample_kernels(energy, k, target, self.rng, total=len(state.leaves) + k)
        pi, experts = grown.pi, grown.experts
        if state.mode == "smoe":
            live = state.leaves.pi.detach()
            pi = torch.full_like(pi, float(live[live > 0].median()) if (live > 0).any() else 1.0)
        else:
            rows = np.clip(grown.mu[:, 1].long().numpy(), 0, target.shape[0] - 1)
            cols = np.clip(grown.mu[:, 0].long().numpy(), 0, target.shape[1] - 1)
            experts = torch.from_numpy(residual[rows, cols]).to(experts)
        return Model.unchecked(grown.mu, grown.chol, pi, experts)
