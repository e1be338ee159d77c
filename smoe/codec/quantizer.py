"""Quantization of a model's kernels to the integers a bitstream codes (docs/bitstream.md).

Each kernel becomes a handful of integers, each a rounded quantity divided by
its own step size (:class:`Steps`):

=========== ============================================ ===========
symbols     quantity                                     step
=========== ============================================ ===========
``ix, iy``  centre + :data:`MARGIN`, clamped to the grid  ``position``
``d0, d1``  ``log b00``, ``log b11``                      ``log_diag``
``shear``   ``b10 / sqrt(b00 * b11)``                    ``shear``
``gate``    ``log pi`` (SMoE only)                        ``gate``
``y``       luma of the expert (grey: the expert)         ``luma``
``cb, cr``  chroma of the expert (RGB only)               ``chroma``
=========== ============================================ ===========

The shear is measured against the geometric mean of the diagonal, so one
step is the same relative change for a kernel of any size, and the gate in
log space, because an SMoE kernel's weight is its gate relative to its
neighbours'.  Colour is coded in YCbCr (ITU-R BT.601, no offsets), which
measured better than RGB at equal bits.  In RBF mode the gate is folded into
the expert (the render is ``sum pi K m``) and not coded.

:func:`dequantize` is the decoder's definition of the model; the encoder
reports the render of exactly that function's output, so what is decoded is
what was measured.  :func:`quantize_view` is the same mapping in PyTorch
with straight-through rounding (the forward pass sees the quantized
kernels, the gradient passes as if rounding were the identity), which the
encoder's fine-tuning renders through.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from ..validate import check_finite

__all__ = ["Steps", "MARGIN", "quantize", "dequantize", "quantize_view", "symbol_names"]

#: Pixels beyond the frame on every side where a centre may lie; centres further out are clamped to it.
MARGIN = 16.0
#: Smallest gate that is coded; a live SMoE gate below it is raised to it (its log would run off the scale).
MIN_GATE = 1e-4
#: Largest |symbol| of a kernel quantity: beyond it a step size is absurdly small for the value it codes.
MAX_SYMBOL = 32767

# BT.601 luma weights; Cb and Cr are (B - Y) / 1.772 and (R - Y) / 1.402.
_KR, _KB = 0.299, 0.114
_KG = 1.0 - _KR - _KB
_CB, _CR = 2.0 * (1.0 - _KB), 2.0 * (1.0 - _KR)


@dataclass(frozen=True)
class Steps:
    """Quantizer step sizes, one per quantity (the defaults measured best per bit on Kodak).

    Parameters
    ----------
    position : float
        Centre step in pixels.
    log_diag : float
        Step of the log Cholesky diagonal (a relative size step).
    shear : float
        Step of ``b10 / sqrt(b00 * b11)``.
    gate : float
        Step of ``log pi``.
    luma, chroma : float
        Steps of the expert's Y and of its Cb and Cr, in image units (1 = full range).
    """

    position: float = 0.5
    log_diag: float = 0.08
    shear: float = 0.08
    gate: float = 0.1
    luma: float = 1 / 64
    chroma: float = 1 / 64

    def __post_init__(self):
        for name, value in asdict(self).items():
            check_finite(f"{name} step", value, low=1e-4, high=16.0)

    def scaled(self, factor: float) -> "Steps":
        """Every step times ``factor`` (> 1 coarser, fewer bits)."""
        return Steps(**{k: v * factor for k, v in asdict(self).items()})

    def astuple(self) -> tuple[float, ...]:
        return tuple(asdict(self).values())


def symbol_names(channels: int, mode: str) -> tuple[str, ...]:
    """Names of the integer symbols of one kernel, in the order :func:`quantize` returns their columns."""
    colour = ("y", "cb", "cr") if channels == 3 else ("y",)
    return ("ix", "iy", "d0", "d1", "shear") + (("gate",) if mode == "smoe" else ()) + colour


def grid_size(frame: tuple[int, int], step: float) -> tuple[int, int]:
    """Cells ``(nx, ny)`` of the centre grid of a ``frame`` (H, W), margins included."""
    h, w = frame
    return int(math.floor((w + 2 * MARGIN) / step)) + 1, int(math.floor((h + 2 * MARGIN) / step)) + 1


def quantize(arrays: dict[str, np.ndarray], frame: tuple[int, int], mode: str, steps: Steps) -> np.ndarray:
    """The integer symbols of every kernel.

    Parameters
    ----------
    arrays : dict of (L, 2) ``mu``, (L, 3) ``chol``, (L,) ``pi``, (L, C) ``experts``
        A model's parameters (:meth:`smoe.model.Model.numpy`); SMoE gates must be positive (prune first).
    frame : (int, int)
    mode : {"smoe", "rbf"}
    steps : Steps

    Returns
    -------
    (L, S) int64 array, columns named by :func:`symbol_names`.

    Raises
    ------
    ValueError
        A value whose symbol would exceed :data:`MAX_SYMBOL` (a step far too small for it).
    """
    mu, chol = np.asarray(arrays["mu"], np.float64), np.asarray(arrays["chol"], np.float64)
    pi, experts = np.asarray(arrays["pi"], np.float64), np.asarray(arrays["experts"], np.float64)
    nx, ny = grid_size(frame, steps.position)
    cols = [np.clip(np.round((mu[:, 0] + MARGIN) / steps.position), 0, nx - 1),
            np.clip(np.round((mu[:, 1] + MARGIN) / steps.position), 0, ny - 1)]
    d0, d1 = np.round(np.log(chol[:, 0]) / steps.log_diag), np.round(np.log(chol[:, 2]) / steps.log_diag)
    root = np.exp(0.5 * (d0 + d1) * steps.log_diag)  # what the decoder divides by: the quantized diagonal
    cols += [d0, d1, np.round(chol[:, 1] / root / steps.shear)]
    if mode == "smoe":
        cols.append(np.round(np.log(np.maximum(pi, MIN_GATE)) / steps.gate))
    else:
        experts = experts * pi[:, None]
    cols += [np.round(c / s) for c, s in zip(_to_ycc(experts), (steps.luma, steps.chroma, steps.chroma))]
    symbols = np.stack(cols, 1)
    names = symbol_names(experts.shape[1], mode)
    bad = np.abs(symbols[:, 2:]) > MAX_SYMBOL
    if bad.any():
        j, k = np.argwhere(bad)[0]
        raise ValueError(f"kernel {j}: {names[k + 2]} needs a symbol beyond +-{MAX_SYMBOL} at these step sizes; "
                         "use coarser steps")
    return symbols.astype(np.int64)


def dequantize(symbols: np.ndarray, channels: int, mode: str, steps: Steps) -> dict[str, np.ndarray]:
    """The float32 parameters that (L, S) ``symbols`` stand for: the decoder's model, by definition.

    Returns a dict of ``mu``, ``chol``, ``pi`` and ``experts`` as :class:`smoe.model.Model` takes them.
    """
    s = np.asarray(symbols, np.float64)
    mu = np.stack([s[:, 0] * steps.position - MARGIN, s[:, 1] * steps.position - MARGIN], 1)
    b00, b11 = np.exp(s[:, 2] * steps.log_diag), np.exp(s[:, 3] * steps.log_diag)
    chol = np.stack([b00, s[:, 4] * steps.shear * np.exp(0.5 * (s[:, 2] + s[:, 3]) * steps.log_diag), b11], 1)
    if mode == "smoe":
        pi, first = np.exp(s[:, 5] * steps.gate), 6
    else:
        pi, first = np.ones(len(s)), 5
    colour = [s[:, first] * steps.luma]
    if channels == 3:
        colour += [s[:, first + 1] * steps.chroma, s[:, first + 2] * steps.chroma]
    experts = _from_ycc(colour)
    return {"mu": mu.astype(np.float32), "chol": chol.astype(np.float32), "pi": pi.astype(np.float32),
            "experts": experts.astype(np.float32)}


def _to_ycc(experts):
    """(L, C) experts -> list of C columns: Y (grey: the value), then Cb and Cr for RGB."""
    if experts.shape[1] == 1:
        return [experts[:, 0]]
    r, g, b = experts[:, 0], experts[:, 1], experts[:, 2]
    y = _KR * r + _KG * g + _KB * b
    return [y, (b - y) / _CB, (r - y) / _CR]


def _from_ycc(colour):
    """Inverse of :func:`_to_ycc`: a list of columns -> (L, C) array or tensor."""
    stack = np.stack if isinstance(colour[0], np.ndarray) else _torch().stack
    if len(colour) == 1:
        return stack([colour[0]], 1)
    y, cb, cr = colour
    r, b = y + _CR * cr, y + _CB * cb
    return stack([r, (y - _KR * r - _KB * b) / _KG, b], 1)


def _torch():
    import torch  # here, not at the top: reading a bitstream for `smoe info` must not load torch

    return torch


def _ste_round(x):
    return x + (x.round() - x).detach()


def quantize_view(mu, chol, pi, experts, frame: tuple[int, int], mode: str, steps: Steps):
    """:func:`dequantize` of :func:`quantize` in PyTorch, with straight-through rounding.

    Parameters
    ----------
    mu : (L, 2) tensor
    chol : (L, 3) tensor
    pi : (L,) tensor
    experts : (L, C) tensor

    Returns
    -------
    The four tensors as the decoder would see them, differentiable with respect
    to the inputs (the rounding passes gradients through unchanged).
    """
    torch = _torch()
    nx, ny = grid_size(frame, steps.position)
    hi = torch.tensor([(nx - 1) * steps.position - MARGIN, (ny - 1) * steps.position - MARGIN], dtype=mu.dtype,
                      device=mu.device)
    mu_q = _ste_round((torch.minimum(mu.clamp(min=-MARGIN), hi) + MARGIN) / steps.position) * steps.position - MARGIN
    d0 = _ste_round(chol[:, 0].log() / steps.log_diag) * steps.log_diag
    d1 = _ste_round(chol[:, 2].log() / steps.log_diag) * steps.log_diag
    root = torch.exp(0.5 * (d0 + d1))
    chol_q = torch.stack([d0.exp(), _ste_round(chol[:, 1] / root / steps.shear) * steps.shear * root, d1.exp()], 1)
    if mode == "smoe":
        pi_q = torch.exp(_ste_round(pi.clamp(min=MIN_GATE).log() / steps.gate) * steps.gate)
    else:
        experts, pi_q = experts * pi[:, None], torch.ones_like(pi)
    colour = [_ste_round(c / s) * s for c, s in zip(_to_ycc(experts), (steps.luma, steps.chroma, steps.chroma))]
    return mu_q, chol_q, pi_q, _from_ycc(colour)
