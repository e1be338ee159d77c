"""Facts about a model's kernels from its NumPy parameter arrays, without torch.

``smoe info`` reports the mean number of kernels per 16 x 16 tile and the
kernels' bandwidths; computing them here, in NumPy, lets it describe a model
file without loading torch and numba.  Every step is the elementwise operation
of the torch code (:func:`smoe.rasterizer.kernels_per_tile`,
:func:`smoe.model.bounding_radius`, :attr:`smoe.model.Model.covariance`) in the
parameters' own dtype.  Covariances and eigenvalues come out bit-identical;
torch's vectorized square root and scalar division are not always correctly
rounded, so a radius or an axis may differ in its last bit: a kernel count
changes only if a box edge falls on a tile border to that bit (the parity
tests check the counts on random models), a bandwidth in its 16th digit.
"""

from __future__ import annotations

import math

import numpy as np

from .sizes import TILE

__all__ = ["CHI2_99", "bounding_radius", "kernels_per_tile", "bandwidth"]

#: Mahalanobis radius squared of the 99 % confidence ellipse of a 2D Gaussian,
#: the chi-square quantile with 2 degrees of freedom: -2 ln(0.01).
CHI2_99 = -2.0 * math.log(0.01)


def bounding_radius(chol: np.ndarray) -> np.ndarray:
    """(L,) major semi-axis of each kernel's 99 % ellipse, in ``chol``'s dtype (NumPy twin of
    :func:`smoe.model.bounding_radius`, the half side of its tile box).

    Examples
    --------
    >>> float(bounding_radius(np.array([[0.5, 0.0, 1.0]]))[0]) == 2 * math.sqrt(CHI2_99)
    True
    """
    b00, b10, b11 = chol[:, 0], chol[:, 1], chol[:, 2]
    p00, p01, p11 = b00 * b00 + b10 * b10, b10 * b11, b11 * b11
    disc = np.sqrt(0.25 * (p00 - p11) ** 2 + p01 * p01)
    # lambda_min = det / lambda_max avoids the cancellation of (trace/2 - disc) for elongated kernels
    lam_min = np.maximum((b00 * b11) ** 2 / (0.5 * (p00 + p11) + disc), np.finfo(chol.dtype).tiny)
    return np.sqrt(CHI2_99 / lam_min)


def kernels_per_tile(mu: np.ndarray, chol: np.ndarray, pi: np.ndarray, frame: tuple[int, int], *,
                     mode: str = "smoe", tile_offset: tuple[int, int] = (0, 0), tile: int = TILE) -> float:
    """Mean kernels listed per ``tile x tile`` tile of the ``frame = (height, width)`` grid (R Table I).

    Parameters
    ----------
    mu : (L, 2) array
    chol : (L, 3) array
    pi : (L,) array
        In SMoE mode kernels with ``pi <= 0`` are dead and not listed.
    frame : (int, int)
    mode : {"smoe", "rbf"}
    tile_offset : (int, int)
    tile : int
        Tile side in pixels (16 unless the fit chose another).

    Examples
    --------
    >>> one = np.array([[8.0, 8.0]]), np.array([[1.0, 0.0, 1.0]]), np.ones(1)
    >>> kernels_per_tile(*one, (32, 32))
    0.25
    """
    (height, width), (oy, ox) = frame, tile_offset
    ny, nx = max(1, math.ceil((height + oy) / tile)), max(1, math.ceil((width + ox) / tile))
    active = slice(None) if mode == "rbf" else pi > 0
    mu, r = mu[active], bounding_radius(chol[active])

    def tiles(centre, offset: int, n: int) -> np.ndarray:
        # Clamped in float first, as smoe.tiles.tile_boxes does: huge radii must not overflow.
        first = np.clip(np.floor((centre - r + offset) / tile), -1, n).clip(min=0)
        last = np.clip(np.floor((centre + r + offset) / tile), -1, n).clip(max=n - 1)
        return np.maximum(last - first + 1, 0).astype(np.int64)

    listed = int((tiles(mu[:, 1], oy, ny) * tiles(mu[:, 0], ox, nx)).sum())
    return listed / (ny * nx)


def bandwidth(chol: np.ndarray) -> dict | None:
    """Statistics of the kernels' standard deviations along their principal axes, in pixels (None for no kernels).

    Examples
    --------
    >>> bandwidth(np.array([[0.5, 0.0, 1.0]]))["median_major"]
    2.0
    """
    if len(chol) == 0:
        return None
    b00, b10, b11 = chol[:, 0], chol[:, 1], chol[:, 2]
    # Sigma = B^-1 B^-T in chol's dtype, as smoe.model.covariance_from_chol computes it, then float64
    i00, i10, i11 = 1.0 / b00, -b10 / (b00 * b11), 1.0 / b11
    s00, s01, s11 = i00 * i00, i00 * i10, i10 * i10 + i11 * i11
    cov = np.stack([np.stack([s00, s01], -1), np.stack([s01, s11], -1)], -2).astype(np.float64)
    axes = np.sqrt(np.maximum(np.linalg.eigvalsh(cov), 0))  # ascending: minor, major
    minor, major = axes[:, 0], axes[:, 1]
    return {"median_sigma": float(np.median(np.sqrt(minor * major))), "median_major": float(np.median(major)),
            "median_minor": float(np.median(minor)), "min_major": float(major.min()),
            "max_major": float(major.max())}
