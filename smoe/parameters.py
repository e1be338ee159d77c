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


def to_log_chol(chol):
    """(L, 3) Cholesky factors ``(b00, b10, b11)`` -> ``(log b00, b10, log b11)``; NumPy or torch."""
    if isinstance(chol, torch.Tensor):
        return torch.stack([chol[:, 0].log(), chol[:, 1], chol[:, 2].log()], 1)
    chol = np.asarray(chol)
    return np.stack([np.log(chol[:, 0]), chol[:, 1], np.log(chol[:, 2])], 1).astype(chol.dtype, copy=False)


def from_log_chol(lc):
    """(L, 3) ``(log b00, b10, log b11)`` -> Cholesky factors ``(b00, b10, b11)``; NumPy or torch.

    NumPy's float32 exp runs every element of a contiguous array through the
    same SIMD code, so exponentiating the diagonal as one contiguous block
    keeps a kernel's value independent of its position in a batch.
    """
    if isinstance(lc, torch.Tensor):
        return torch.stack([lc[:, 0].exp(), lc[:, 1], lc[:, 2].exp()], 1)
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
