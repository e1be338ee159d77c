"""How gradient descent parameterises the kernels, shared by the global fit and the AS-SMoE local fits.

Both optimizers move the same four quantities with Adam, one parameter group
each, in the order of :data:`GROUPS`:

* ``mu``: centres, in pixels;
* ``chol``: the precision Cholesky factor with its diagonal in log space,
  ``(log b00, b10, log b11)`` (:func:`to_log_chol`), which keeps the diagonal
  positive and makes a step relative to the kernel's size;
* ``pi``: raw gate weights;
* ``experts``: the constant experts.

Each group has its own learning rate, read from a settings object's
``lr_<group>`` field (:func:`learning_rates`); the centres' rate decays
exponentially from ``lr_mu`` to ``lr_mu_final`` over the run
(:func:`decay_factor`).
"""

from __future__ import annotations

import numpy as np
import torch

#: Adam parameter groups, in order; a settings object names their rates ``lr_<group>``.
GROUPS = ("mu", "chol", "pi", "experts")
#: Adam's moment decays and epsilon (PyTorch's defaults), used by both optimizers.
ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8


def _diagonal(width: int) -> tuple[int, ...]:
    """Columns of a stored factor that hold B's diagonal: (b00, b10, b11) in 2D, (b00, b10, b11, b20, b21, b22) in 3D."""
    return (0, 2) if width == 3 else (0, 2, 5)


def to_log_chol(chol):
    """(L, 3) Cholesky factors ``(b00, b10, b11)`` -> ``(log b00, b10, log b11)``; NumPy or torch.

    Torch tensors may also be (L, 6) space-time factors (:mod:`smoe.video.model`), whose
    diagonal ``b00, b11, b22`` goes to log space the same way.
    """
    if isinstance(chol, torch.Tensor):
        diag = _diagonal(chol.shape[1])
        return torch.stack([chol[:, i].log() if i in diag else chol[:, i] for i in range(chol.shape[1])], 1)
    chol = np.asarray(chol)
    return np.stack([np.log(chol[:, 0]), chol[:, 1], np.log(chol[:, 2])], 1).astype(chol.dtype, copy=False)


def from_log_chol(lc):
    """(L, 3) ``(log b00, b10, log b11)`` -> Cholesky factors ``(b00, b10, b11)``; NumPy or torch.

    NumPy's float32 exp runs every element of a contiguous array through the
    same SIMD code, so exponentiating the diagonal as one contiguous block
    keeps a kernel's value independent of its position in a batch.
    """
    if isinstance(lc, torch.Tensor):
        diag = _diagonal(lc.shape[1])
        return torch.stack([lc[:, i].exp() if i in diag else lc[:, i] for i in range(lc.shape[1])], 1)
    diag = np.exp(np.ascontiguousarray(lc[:, [0, 2]]))
    return np.stack([diag[:, 0], lc[:, 1], diag[:, 1]], 1).astype(np.float32)


def learning_rates(settings) -> dict[str, float]:
    """Initial learning rate of each group of :data:`GROUPS`, from ``settings.lr_<group>``."""
    return {group: float(getattr(settings, f"lr_{group}")) for group in GROUPS}


def decay_factor(lr_start: float, lr_final: float, steps: int) -> float:
    """Per-step factor taking a rate from ``lr_start`` to ``lr_final`` in ``steps`` steps (1 if either is 0)."""
    if lr_start > 0 and lr_final > 0:
        return (lr_final / lr_start) ** (1.0 / steps)
    return 1.0


class KernelLeaves:
    """The leaf tensors Adam updates during a fit, one per group of :data:`GROUPS`, and the Model they describe.

    Strategies (:mod:`smoe.strategy`) change the kernel set between steps with
    :meth:`keep` and :meth:`extend`, which carry Adam's moments along so the
    optimizer never sees a stale tensor.
    """

    def __init__(self, model):
        self.mu = model.mu.detach().clone().requires_grad_()
        self.chol = to_log_chol(model.chol.detach()).requires_grad_()
        self.pi = model.pi.detach().clone().requires_grad_()
        self.experts = model.experts.detach().clone().requires_grad_()

    def __len__(self) -> int:
        return self.mu.shape[0]

    def leaves(self) -> list[torch.Tensor]:
        return [self.mu, self.chol, self.pi, self.experts]

    def cholesky(self) -> torch.Tensor:
        return from_log_chol(self.chol)

    def model(self):
        """The kernels as a detached :class:`smoe.Model` (or :class:`smoe.video.VideoModel` for 3D leaves)."""
        if self.mu.shape[1] == 3:
            from .video.model import VideoModel as kind
        else:
            from .model import Model as kind

        return kind.unchecked(self.mu.detach(), self.cholesky().detach(), self.pi.detach(), self.experts.detach())

    def optimizer(self, rates: dict[str, float]) -> torch.optim.Adam:
        """Adam over the four leaves, one group each, at ``rates[group]``."""
        return torch.optim.Adam([{"params": [leaf], "lr": rates[g]} for g, leaf in zip(GROUPS, self.leaves())],
                                betas=ADAM_BETAS, eps=ADAM_EPS)

    def keep(self, keep: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
        """Drop the kernels not in the boolean mask ``keep`` (L,), from the leaves and from Adam's state."""
        self._replace(optimizer, lambda i, old: old.detach()[keep], lambda v: v[keep])

    def extend(self, model, optimizer: torch.optim.Optimizer) -> None:
        """Append the kernels of ``model`` with fresh (zero) Adam moments."""
        added = [model.mu, to_log_chol(model.chol), model.pi, model.experts]  # in the order of GROUPS
        self._replace(optimizer, lambda i, old: torch.cat([old.detach(), added[i].to(old)]),
                      lambda v: torch.cat([v, v.new_zeros((len(model),) + v.shape[1:])]))

    def _replace(self, optimizer, leaf, moment) -> None:
        """Put ``leaf(group index, old leaf)`` in each group's place, its Adam moments mapped by ``moment``."""
        for i, group in enumerate(optimizer.param_groups):
            old = group["params"][0]
            new = leaf(i, old).clone().requires_grad_()
            state = optimizer.state.pop(old, None)
            if state is not None:
                optimizer.state[new] = {k: (moment(v) if torch.is_tensor(v) and v.dim() > 0 else v)
                                        for k, v in state.items()}
            group["params"][0] = new
        self.mu, self.chol, self.pi, self.experts = (g["params"][0] for g in optimizer.param_groups)
