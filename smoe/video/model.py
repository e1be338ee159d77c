"""The space-time kernel model: steered Gaussians over (x, y, t).

A video model is a set of L kernels over continuous clip coordinates
``(x, y, t)``: x and y in pixels as in 2D (:mod:`smoe.model`), t in frames,
with the centre of pixel (row r, column c) of frame f at
``(c + 0.5, r + 0.5, f + 0.5)``.  Kernel j has

* a centre ``mu[j] = (x, y, t)``,
* the lower-triangular Cholesky factor ``B_j`` of its precision matrix,
  ``Sigma_j^-1 = B_j^T B_j`` with
  ``B_j = [[b00, 0, 0], [b10, b11, 0], [b20, b21, b22]]``, stored as
  ``chol[j] = (b00, b10, b11, b20, b21, b22)`` with ``b00, b11, b22 > 0``,
* a gate weight ``pi[j]`` (``pi <= 0``: dead),
* a constant expert ``experts[j]`` with C channels (1 grey, 3 RGB).

``K_j(x) = exp(-1/2 |B_j (x - mu_j)|^2)``, as in 2D.  A kernel whose
covariance is long along t and tilted in (x, t) follows a moving edge over
many frames.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..model import _as_tensor

#: Mahalanobis radius squared of the 99 % confidence ellipsoid of a 3D Gaussian:
#: the chi-square quantile with 3 degrees of freedom (11.345).
CHI2_99_3D = 11.344866730144373
#: Entries of ``chol`` that lie on the diagonal of B (b00, b11, b22).
DIAGONAL = (0, 2, 5)


@dataclass(frozen=True, eq=False)
class VideoModel:
    """L space-time kernels with constant experts.

    Parameters
    ----------
    mu : (L, 3) tensor
        Centres ``(x, y, t)`` in pixels and frames.
    chol : (L, 6) tensor
        ``(b00, b10, b11, b20, b21, b22)``, the lower-triangular Cholesky
        factor of each kernel's precision; the diagonal must be positive.
    pi : (L,) tensor
        Gate weights.
    experts : (L, C) tensor
        Constant experts, C = 1 or 3.

    Examples
    --------
    >>> m = VideoModel([[8.0, 8.0, 2.0]], [[0.5, 0.0, 0.5, 0.0, 0.0, 0.25]], [1.0], [[0.2, 0.4, 0.6]])
    >>> len(m), m.channels
    (1, 3)
    """

    mu: torch.Tensor
    chol: torch.Tensor
    pi: torch.Tensor
    experts: torch.Tensor

    def __init__(self, mu, chol, pi, experts, *, validate: bool = True):
        mu = _as_tensor(mu)
        if not mu.dtype.is_floating_point:
            mu = mu.to(torch.float32)
        dtype, device = mu.dtype, mu.device
        object.__setattr__(self, "mu", mu)
        object.__setattr__(self, "chol", _as_tensor(chol, dtype, device))
        object.__setattr__(self, "pi", _as_tensor(pi, dtype, device))
        object.__setattr__(self, "experts", _as_tensor(experts, dtype, device))
        if validate:
            self.validate()

    @classmethod
    def unchecked(cls, mu, chol, pi, experts) -> "VideoModel":
        """Wrap tensors without copying or validating them (for hot loops)."""
        return cls(mu, chol, pi, experts, validate=False)

    @classmethod
    def empty(cls, channels: int = 3, dtype=torch.float32) -> "VideoModel":
        """A model with no kernels."""
        z = torch.zeros
        return cls(z(0, 3, dtype=dtype), z(0, 6, dtype=dtype), z(0, dtype=dtype), z(0, channels, dtype=dtype))

    def validate(self) -> "VideoModel":
        """Raise ``ValueError`` naming the first bad kernel, else return self."""
        if self.mu.ndim != 2 or self.mu.shape[1] != 3:
            raise ValueError(f"mu of a video model must have shape (L, 3) for (x, y, t), got {tuple(self.mu.shape)}")
        L = self.mu.shape[0]
        for name, shape in (("chol", (L, 6)), ("pi", (L,))):
            if tuple(getattr(self, name).shape) != shape:
                raise ValueError(f"{name} must have shape {shape} for L={L} kernels, "
                                 f"got {tuple(getattr(self, name).shape)}")
        if self.experts.ndim != 2 or self.experts.shape[0] != L or self.experts.shape[1] not in (1, 3):
            raise ValueError(f"experts must have shape (L, 1) or (L, 3) for L={L} kernels, "
                             f"got {tuple(self.experts.shape)}")
        for name in ("mu", "chol", "pi", "experts"):
            t = getattr(self, name).detach()
            bad = ~torch.isfinite(t)
            if bad.ndim > 1:
                bad = bad.any(dim=1)
            if bad.any():
                j = int(torch.nonzero(bad)[0])
                raise ValueError(f"kernel {j}: {name} is not finite ({t[j].tolist()}); fix or prune that kernel")
        diag = self.chol.detach()[:, list(DIAGONAL)]
        bad = (diag <= 0).any(dim=1)
        if bad.any():
            j = int(torch.nonzero(bad)[0])
            raise ValueError(f"kernel {j}: Cholesky diagonal must be positive, got {diag[j].tolist()}")
        return self

    def __len__(self) -> int:
        return int(self.mu.shape[0])

    @property
    def channels(self) -> int:
        return int(self.experts.shape[1])

    @property
    def dtype(self) -> torch.dtype:
        return self.mu.dtype

    @property
    def device(self) -> torch.device:
        return self.mu.device

    def __repr__(self) -> str:
        return (f"VideoModel(kernels={len(self)}, channels={self.channels}, dtype={self.dtype}, "
                f"device={self.device})")

    def select(self, keep) -> "VideoModel":
        """Keep the kernels a boolean mask or index array selects."""
        if isinstance(keep, torch.Tensor) and keep.dtype != torch.bool:
            keep = keep.long()
        return VideoModel.unchecked(self.mu[keep], self.chol[keep], self.pi[keep], self.experts[keep])

    def pruned(self) -> "VideoModel":
        """Drop the kernels whose gate weight is ``<= 0``."""
        return self.select(self.pi > 0)

    def to(self, dtype=None, device=None) -> "VideoModel":
        f = lambda t: t.to(dtype=dtype or t.dtype, device=device or t.device)  # noqa: E731
        return VideoModel.unchecked(f(self.mu), f(self.chol), f(self.pi), f(self.experts))

    def detach(self) -> "VideoModel":
        return VideoModel.unchecked(self.mu.detach(), self.chol.detach(), self.pi.detach(), self.experts.detach())

    def numpy(self) -> dict[str, np.ndarray]:
        """The four parameter arrays as NumPy, keyed by field name."""
        return {k: getattr(self, k).detach().cpu().numpy() for k in ("mu", "chol", "pi", "experts")}

    @classmethod
    def cat(cls, models) -> "VideoModel":
        """All kernels of several models (same dtype and channels), in order."""
        models = list(models)
        return cls.unchecked(*(torch.cat([getattr(m, k) for m in models]) for k in ("mu", "chol", "pi", "experts")))


# ---------------------------------------------------------------- geometry
def rescale(mu: torch.Tensor, chol: torch.Tensor, sx: float, sy: float,
            st: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Centres (L, 3) and factors (L, 6) in coordinates stretched by ``diag(sx, sy, st)``.

    The precision factor becomes ``B S^-1``: column k of B is divided by the
    k-th scale, which keeps it lower-triangular.
    """
    col = chol.new_tensor([1 / sx, 1 / sx, 1 / sy, 1 / sx, 1 / sy, 1 / st])
    return mu * mu.new_tensor([sx, sy, st]), chol * col


def inverse_factor(chol: torch.Tensor) -> torch.Tensor:
    """(L, 6) factors B -> (L, 3, 3) lower-triangular ``B^-1`` (closed form)."""
    b00, b10, b11, b20, b21, b22 = chol.unbind(-1)
    z = torch.zeros_like(b00)
    i00, i11, i22 = 1 / b00, 1 / b11, 1 / b22
    i10 = -b10 * i00 * i11
    i21 = -b21 * i11 * i22
    i20 = -(b20 * i00 + b21 * i10) * i22
    return torch.stack([torch.stack([i00, z, z], -1), torch.stack([i10, i11, z], -1),
                        torch.stack([i20, i21, i22], -1)], -2)


def covariance_from_chol(chol: torch.Tensor) -> torch.Tensor:
    """(L, 6) factors -> (L, 3, 3) covariances ``(B^T B)^-1 = B^-1 B^-T``."""
    inv = inverse_factor(chol)
    return inv @ inv.transpose(-1, -2)


def chol_from_covariance(cov: torch.Tensor) -> torch.Tensor:
    """(L, 3, 3) symmetric positive-definite covariances -> (L, 6) factors B with ``B^T B = cov^-1``.

    Raises ``ValueError`` naming the first covariance that is not positive definite.
    """
    if cov.ndim != 3 or cov.shape[1:] != (3, 3):
        raise ValueError(f"cov must have shape (L, 3, 3), got {tuple(cov.shape)}")
    # B^T B = P with B lower-triangular is the Cholesky factorisation of P with the
    # axes reversed: flip P, take its lower factor, and flip back.
    prec = torch.linalg.inv(cov)
    flipped = prec.flip(-1, -2)
    lower, info = torch.linalg.cholesky_ex(flipped)
    if bool((info != 0).any()) or not bool(torch.isfinite(lower).all()):
        j = int(torch.nonzero((info != 0) | ~torch.isfinite(lower).flatten(1).all(1))[0])
        raise ValueError(f"kernel {j}: covariance {cov[j].tolist()} is not symmetric positive definite")
    b = lower.flip(-1, -2).transpose(-1, -2)
    return torch.stack([b[:, 0, 0], b[:, 1, 0], b[:, 1, 1], b[:, 2, 0], b[:, 2, 1], b[:, 2, 2]], -1)


def half_extents(chol: torch.Tensor, chi2: float = CHI2_99_3D) -> torch.Tensor:
    """(L, 3) half sides along x, y, t of the box around each kernel's confidence ellipsoid.

    The ellipsoid ``|B d|^2 <= chi2`` reaches ``sqrt(chi2 * Sigma_kk)`` along axis k.
    """
    inv = inverse_factor(chol.detach())
    return torch.sqrt(chi2 * inv.square().sum(-1))


def isotropic_chol(sigma_xy, sigma_t) -> torch.Tensor:
    """(L, 6) factors of axis-aligned kernels with standard deviations ``sigma_xy`` (x, y) and ``sigma_t``."""
    sxy = torch.as_tensor(sigma_xy)
    st = torch.as_tensor(sigma_t, dtype=sxy.dtype).expand_as(sxy)
    z = torch.zeros_like(sxy)
    return torch.stack([1 / sxy, z, 1 / sxy, z, z, 1 / st], -1)

