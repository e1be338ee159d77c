"""Kernel order and centre coding: kernels sorted along a Z-order (Morton) curve, centres coded as gaps.

Quantized centres ``(ix, iy)`` interleave into one Morton code per kernel;
sorting by it puts kernels that are close in the image close in the stream,
and the codes, ascending, are coded as gaps ``g >= 0`` from the previous
one (the first from 0).  A gap is split Elias-gamma style into its bit
length ``k`` (0 for a gap of 0), entropy coded with a per-file model, and its
``k - 1`` bits below the leading one, coded raw.  A dense region gives short
gaps, so centres cost about ``log2(cells per kernel) + 1.5`` bits.
"""

from __future__ import annotations

import numpy as np

from .entropy import Decoder, Encoder, SymbolModel, fit_model

__all__ = ["morton", "unmorton", "encode_centres", "decode_centres", "MAX_AXIS_BITS"]

#: Bits per axis of the centre grid: 2**21 cells is 0.5 M pixels at the finest step, far beyond any frame.
MAX_AXIS_BITS = 21
_B = np.uint64
# (shift, mask) steps that move bit i of a 32-bit value to bit 2i
_MASKS = ((16, 0x0000FFFF0000FFFF), (8, 0x00FF00FF00FF00FF), (4, 0x0F0F0F0F0F0F0F0F), (2, 0x3333333333333333),
          (1, 0x5555555555555555))


def _spread(v: np.ndarray) -> np.ndarray:
    """Put bit i of each value at bit 2i."""
    v = np.asarray(v, np.uint64) & _B((1 << MAX_AXIS_BITS) - 1)
    for shift, mask in _MASKS:
        v = (v | (v << _B(shift))) & _B(mask)
    return v


def _squeeze(v: np.ndarray) -> np.ndarray:
    """Inverse of :func:`_spread`."""
    v = np.asarray(v, np.uint64) & _B(_MASKS[-1][1])
    for (shift, _), (_, mask) in zip(_MASKS[::-1], _MASKS[-2::-1] + ((0, 0xFFFFFFFF),)):
        v = (v | (v >> _B(shift))) & _B(mask)
    return v


def morton(ix: np.ndarray, iy: np.ndarray) -> np.ndarray:
    """Morton codes of grid cells (non-negative ints below ``2**MAX_AXIS_BITS``): x bits even, y bits odd."""
    return _spread(ix) | (_spread(iy) << _B(1))


def unmorton(code: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(ix, iy)`` of Morton codes (inverse of :func:`morton`)."""
    code = np.asarray(code, np.uint64)
    return _squeeze(code).astype(np.int64), _squeeze(code >> _B(1)).astype(np.int64)


def encode_centres(encoder: Encoder, codes: np.ndarray) -> SymbolModel:
    """Code ascending Morton ``codes`` as gaps; returns the model of the gap lengths, which the file stores."""
    gaps = np.diff(np.asarray(codes, np.uint64), prepend=_B(0))
    lengths = _bit_length(gaps)
    model = fit_model(lengths) if len(gaps) else SymbolModel("constant", 0, 0)
    encoder.symbols(lengths, model)
    encoder.raw(gaps, np.maximum(lengths - 1, 0))
    return model


def decode_centres(decoder: Decoder, count: int, model: SymbolModel) -> np.ndarray:
    """The ``count`` ascending Morton codes coded by :func:`encode_centres`."""
    from .entropy import CodingError

    if model.low < 0 or model.high > 2 * MAX_AXIS_BITS:
        raise CodingError(f"gap lengths {model.low}..{model.high} exceed the {2 * MAX_AXIS_BITS}-bit grid")
    lengths = decoder.symbols(count, model)
    low = decoder.raw(np.maximum(lengths - 1, 0))
    lead = np.where(lengths > 0, _B(1) << np.maximum(lengths - 1, 0).astype(np.uint64), _B(0))
    codes = np.cumsum(lead | low, dtype=np.uint64)
    if count and (codes[-1] >> _B(2 * MAX_AXIS_BITS) or (np.diff(codes.astype(np.float64)) < 0).any()):
        raise CodingError("centre codes run beyond the grid")
    return codes


def _bit_length(v: np.ndarray) -> np.ndarray:
    """Bits of each non-negative int up to its leading one (0 for 0)."""
    v = np.asarray(v, np.uint64)
    out = np.zeros(len(v), np.int64)
    for shift in (32, 16, 8, 4, 2, 1):
        big = (v >> _B(shift)) > 0
        out[big] += shift
        v = np.where(big, v >> _B(shift), v)
    return out + (v > 0)
