"""The steered-kernel image model (SPEC §1).

A model is a set of L kernels over continuous image coordinates ``(x, y)`` in
pixel units, x to the right, y down, with the centre of pixel (row r, column c)
at ``(c + 0.5, r + 0.5)``.  Kernel j has

* a centre ``mu[j] = (x, y)``,
* the lower-triangular Cholesky factor ``B_j = [[b00, 0], [b10, b11]]`` of its
  *precision* matrix, ``Sigma_j^-1 = B_j^T B_j``, stored as ``chol[j] = (b00, b10, b11)``
  with ``b00, b11 > 0``,
* a gate weight ``pi[j]`` (a kernel with ``pi <= 0`` is dead and gets pruned),
* a constant expert ``experts[j]`` with C channels (1 grey, 3 RGB).

The kernel is ``K_j(x) = exp(-1/2 |B_j (x - mu_j)|^2)``.  Working with the
precision factor keeps the Mahalanobis distance a plain squared norm and never
inverts a covariance during fitting.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .kernelfacts import CHI2_99


def _as_tensor(x, dtype=None, device=None) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.to(dtype=dtype or x.dtype, device=device or x.device)
    if dtype is None:
        # NumPy arrays keep float64 if they have it; Python lists follow torch's default.
        explicit64 = isinstance(x, np.ndarray) and x.dtype == np.float64
        dtype = torch.float64 if explicit64 else torch.get_default_dtype()
    return torch.as_tensor(np.asarray(x), dtype=dtype, device=device)


@dataclass(frozen=True, eq=False)
class Model:
    """L steered kernels with constant experts.

    Parameters
    ----------
    mu : (L, 2) tensor
        Kernel centres ``(x, y)`` in pixels.
    chol : (L, 3) tensor
        ``(b00, b10, b11)``, the lower-triangular Cholesky factor of each
        kernel's precision matrix; ``b00`` and ``b11`` must be positive.
    pi : (L,) tensor
        Gate weights.
    experts : (L, C) tensor
        Constant expert value of each kernel, C = 1 (grey) or 3 (RGB).

    All four share one floating dtype and device.  Construction validates the
    values; :meth:`unchecked` skips that for inner loops that build a model per
    iteration from parameters already known to be valid.
    """

    mu: torch.Tensor
    chol: torch.Tensor
    pi: torch.Tensor
    experts: torch.Tensor

    def __init__(self, mu, chol, pi, experts, *, validate: bool = True):
        mu = _as_tensor(mu)
        dtype, device = mu.dtype, mu.device
        if not dtype.is_floating_point:
            mu = mu.to(torch.float32)
            dtype = torch.float32
        object.__setattr__(self, "mu", mu)
        object.__setattr__(self, "chol", _as_tensor(chol, dtype, device))
        object.__setattr__(self, "pi", _as_tensor(pi, dtype, device))
        object.__setattr__(self, "experts", _as_tensor(experts, dtype, device))
        if validate:
            self.validate()

    @classmethod
    def unchecked(cls, mu, chol, pi, experts) -> "Model":
        """Wrap tensors without copying or validating them (for hot loops)."""
        return cls(mu, chol, pi, experts, validate=False)

    # ------------------------------------------------------------------ checks
    def validate(self) -> "Model":
        """Raise ``ValueError`` naming the first bad kernel, else return self."""
        L = self.mu.shape[0] if self.mu.ndim == 2 else -1
        shapes = {"mu": (self.mu, (L, 2)), "chol": (self.chol, (L, 3)), "pi": (self.pi, (L,))}
        if self.mu.ndim != 2 or self.mu.shape[1] != 2:
            raise ValueError(f"mu must have shape (L, 2), got {tuple(self.mu.shape)}")
        for name, (t, shape) in shapes.items():
            if tuple(t.shape) != shape:
                raise ValueError(f"{name} must have shape {shape} for L={L} kernels, got {tuple(t.shape)}")
        if self.experts.ndim != 2 or self.experts.shape[0] != L or self.experts.shape[1] not in (1, 3):
            raise ValueError(
                f"experts must have shape (L, 1) or (L, 3) for L={L} kernels, got {tuple(self.experts.shape)}"
            )
        for name in ("mu", "chol", "pi", "experts"):
            t = getattr(self, name)
            bad = ~torch.isfinite(t.detach())
            if bad.ndim > 1:
                bad = bad.any(dim=1)
            if bad.any():
                j = int(torch.nonzero(bad)[0])
                raise ValueError(f"kernel {j}: {name} is not finite ({t[j].tolist()}); fix or prune that kernel")
        diag = self.chol.detach()[:, [0, 2]]
        bad = (diag <= 0).any(dim=1)
        if bad.any():
            j = int(torch.nonzero(bad)[0])
            raise ValueError(
                f"kernel {j}: Cholesky diagonal must be positive, got b00={float(diag[j, 0])}, "
                f"b11={float(diag[j, 1])}"
            )
        return self

    # -------------------------------------------------------------- properties
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
        return f"Model(kernels={len(self)}, channels={self.channels}, dtype={self.dtype}, device={self.device})"

    # ------------------------------------------------------------ constructors
    @classmethod
    def empty(cls, channels: int = 3, dtype=torch.float32) -> "Model":
        """A model with no kernels (renders as background everywhere)."""
        z = torch.zeros
        return cls(z(0, 2, dtype=dtype), z(0, 3, dtype=dtype), z(0, dtype=dtype), z(0, channels, dtype=dtype))

    @classmethod
    def from_covariance(cls, mu, cov, pi, experts) -> "Model":
        """Build a model from covariance matrices.

        Parameters
        ----------
        mu : (L, 2) array
        cov : (L, 2, 2) array of symmetric positive-definite covariances.
        pi : (L,) array
        experts : (L, C) array
        """
        mu = _as_tensor(mu)
        cov = _as_tensor(cov, mu.dtype, mu.device)
        if cov.ndim != 3 or cov.shape[1:] != (2, 2):
            raise ValueError(f"cov must have shape (L, 2, 2), got {tuple(cov.shape)}")
        return cls(mu, chol_from_covariance(cov), pi, experts)

    @property
    def covariance(self) -> torch.Tensor:
        """(L, 2, 2) covariance matrices ``Sigma = (B^T B)^-1``."""
        return covariance_from_chol(self.chol)

    # ------------------------------------------------------------------ editing
    def select(self, keep) -> "Model":
        """Keep the kernels where the boolean mask (or index array) ``keep`` selects."""
        keep = _as_tensor(keep, device=self.device) if not isinstance(keep, slice) else keep
        if isinstance(keep, torch.Tensor) and keep.dtype != torch.bool:
            keep = keep.long()
        return Model.unchecked(self.mu[keep], self.chol[keep], self.pi[keep], self.experts[keep])

    def pruned(self) -> "Model":
        """Drop the kernels whose gate weight is ``<= 0``."""
        return self.select(self.pi > 0)

    def scale_bandwidth(self, factor: float) -> "Model":
        """Scale every kernel's extent by ``factor``: ``Sigma -> factor^2 Sigma``.

        ``factor < 1`` sharpens (SPEC §6), ``factor > 1`` smooths.
        """
        if not (math.isfinite(factor) and factor > 0):
            raise ValueError(f"bandwidth factor must be a positive finite number, got {factor}")
        return Model.unchecked(self.mu, self.chol / factor, self.pi, self.experts)

    def rescaled(self, sx: float, sy: float) -> "Model":
        """Map the model to coordinates stretched by ``sx`` along x and ``sy`` along y.

        A point ``x`` becomes ``S x`` with ``S = diag(sx, sy)``; the precision factor
        becomes ``B S^-1``, which stays lower-triangular.  Used to render on a raster
        of another resolution.
        """
        mu, chol = rescale(self.mu, self.chol, sx, sy)
        return Model.unchecked(mu, chol, self.pi, self.experts)

    def to(self, dtype=None, device=None) -> "Model":
        f = lambda t: t.to(dtype=dtype or t.dtype, device=device or t.device)  # noqa: E731
        return Model.unchecked(f(self.mu), f(self.chol), f(self.pi), f(self.experts))

    def detach(self) -> "Model":
        return Model.unchecked(self.mu.detach(), self.chol.detach(), self.pi.detach(), self.experts.detach())

    def numpy(self) -> dict[str, np.ndarray]:
        """The four parameter arrays as NumPy, keyed by field name."""
        return {k: getattr(self, k).detach().cpu().numpy() for k in ("mu", "chol", "pi", "experts")}


# ---------------------------------------------------------------- geometry
def rescale(mu: torch.Tensor, chol: torch.Tensor, sx: float, sy: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Centres (L, 2) and precision factors (L, 3) in coordinates stretched by ``diag(sx, sy)``."""
    return mu * mu.new_tensor([sx, sy]), chol * chol.new_tensor([1.0 / sx, 1.0 / sx, 1.0 / sy])


def precision_from_chol(chol: torch.Tensor) -> torch.Tensor:
    """(L, 3) Cholesky factors -> (L, 2, 2) precision matrices ``B^T B``."""
    b00, b10, b11 = chol.unbind(-1)
    p00 = b00 * b00 + b10 * b10
    p01 = b10 * b11
    p11 = b11 * b11
    return torch.stack([torch.stack([p00, p01], -1), torch.stack([p01, p11], -1)], -2)


def covariance_from_chol(chol: torch.Tensor) -> torch.Tensor:
    """(L, 3) Cholesky factors -> (L, 2, 2) covariance matrices ``(B^T B)^-1``."""
    b00, b10, b11 = chol.unbind(-1)
    # B^-1 = [[1/b00, 0], [-b10/(b00 b11), 1/b11]] and Sigma = B^-1 B^-T.
    i00 = 1.0 / b00
    i10 = -b10 / (b00 * b11)
    i11 = 1.0 / b11
    s00 = i00 * i00
    s01 = i00 * i10
    s11 = i10 * i10 + i11 * i11
    return torch.stack([torch.stack([s00, s01], -1), torch.stack([s01, s11], -1)], -2)


def chol_from_covariance(cov: torch.Tensor) -> torch.Tensor:
    """(L, 2, 2) covariances -> (L, 3) lower Cholesky factors of their inverses.

    Raises ``ValueError`` naming the first covariance that is not symmetric
    positive definite.
    """
    a, b, c = cov[:, 0, 0], cov[:, 0, 1], cov[:, 1, 1]
    det = a * c - b * b
    bad = ~((a > 0) & (det > 0) & torch.isfinite(det) & torch.isclose(cov[:, 0, 1], cov[:, 1, 0]))
    if bad.any():
        j = int(torch.nonzero(bad)[0])
        raise ValueError(f"kernel {j}: covariance {cov[j].tolist()} is not symmetric positive definite")
    # Precision P = [[c, -b], [-b, a]] / det; its lower Cholesky factor L has
    # L L^T = P, but we need B with B^T B = P, i.e. the "upper-first" factor:
    # b11 = sqrt(P11), b10 = P01 / b11, b00 = sqrt(P00 - b10^2) = sqrt(det(P)) / b11.
    p01, p11 = -b / det, a / det
    b11 = torch.sqrt(p11)
    b10 = p01 / b11
    b00 = torch.sqrt(1.0 / det) / b11
    return torch.stack([b00, b10, b11], -1)


def bounding_radius(chol: torch.Tensor, chi2: float = CHI2_99) -> torch.Tensor:
    """(L,) half side of the square box around each kernel's confidence ellipse.

    The half side is the ellipse's major semi-axis, ``sqrt(chi2 * lambda_max(Sigma))``
    with ``lambda_max(Sigma) = 1 / lambda_min(B^T B)`` (R paper, Fig. 3b).
    """
    P = precision_from_chol(chol.detach())
    p00, p01, p11 = P[:, 0, 0], P[:, 0, 1], P[:, 1, 1]
    half_tr = 0.5 * (p00 + p11)
    disc = torch.sqrt(torch.clamp(0.25 * (p00 - p11) ** 2 + p01 * p01, min=0.0))
    # lambda_min = det / lambda_max avoids the cancellation of (trace/2 - disc)
    # for very elongated kernels; det(B^T B) = (b00 b11)^2.
    det = (chol[:, 0].detach() * chol[:, 2].detach()) ** 2
    lam_min = torch.clamp(det / (half_tr + disc), min=torch.finfo(P.dtype).tiny)
    return torch.sqrt(chi2 / lam_min)
