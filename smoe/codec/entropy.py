"""Entropy coding of integer symbols with per-file parametric models, through ``constriction``.

Every quantity of a bitstream is coded with one model for the whole file: a
quantized Laplace or Gaussian distribution over the integers ``low..high``
with a mean and a scale, whichever codes that file's symbols in fewer bits,
or a constant when all symbols are equal.  A model costs 9 bytes
(:data:`MODEL_BYTES`) in the file.  The coder is constriction's range coder
(``constriction.stream.queue``), which codes symbols in the order the
decoder reads them; its output is a sequence of 32-bit words.

Raw bits (the low bits of centre gaps, :mod:`smoe.codec.positions`) are coded
in the same stream with uniform models of at most :data:`RAW_CHUNK` bits.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

__all__ = ["SymbolModel", "fit_model", "Encoder", "Decoder", "MODEL_BYTES", "RAW_CHUNK", "CodingError"]

#: Bytes of a stored model: family (u8), low and high (i16), mean and scale (float16).
MODEL_BYTES = 9
#: Most raw bits coded as one uniform symbol (constriction's uniform alphabets stay below 2**24).
RAW_CHUNK = 16
_FAMILIES = ("constant", "laplace", "gaussian")
_LAYOUT = struct.Struct("<Bhhee")
_MIN_SCALE = 0.05  # a narrower distribution over integers is a constant in all but name


class CodingError(ValueError):
    """Coded data or a stored model that cannot be decoded."""


@dataclass(frozen=True)
class SymbolModel:
    """A distribution over the integers ``low..high``: ``family`` is one of constant, laplace, gaussian."""

    family: str
    low: int
    high: int
    mean: float = 0.0
    scale: float = 1.0

    def to_bytes(self) -> bytes:
        return _LAYOUT.pack(_FAMILIES.index(self.family), self.low, self.high, self.mean, self.scale)

    @classmethod
    def from_bytes(cls, data: bytes) -> "SymbolModel":
        family, low, high, mean, scale = _LAYOUT.unpack(data)
        if family >= len(_FAMILIES):
            raise CodingError(f"unknown model family {family}")
        if high < low or (family == 0) != (high == low):
            raise CodingError(f"model range {low}..{high} does not fit its family {_FAMILIES[family]}")
        if family and not (np.isfinite(mean) and np.isfinite(scale) and scale >= _MIN_SCALE / 2):
            raise CodingError(f"model mean {mean} or scale {scale} is not usable")
        return cls(_FAMILIES[family], low, high, float(mean), float(scale))

    def _constriction(self):
        import constriction

        models = constriction.stream.model
        if self.family == "laplace":
            return models.QuantizedLaplace(self.low, self.high, self.mean, self.scale)
        return models.QuantizedGaussian(self.low, self.high, self.mean, self.scale)


def _rounded(model: SymbolModel) -> SymbolModel:
    """``model`` with mean and scale as stored (float16), so encoder and decoder use the same numbers."""
    mean, scale = np.float16(model.mean), np.float16(max(model.scale, _MIN_SCALE))
    return SymbolModel(model.family, model.low, model.high, float(mean), float(scale))


def fit_model(symbols: np.ndarray) -> SymbolModel:
    """The per-file model that codes ``symbols`` (1-D ints) in the fewest bits.

    Examples
    --------
    >>> fit_model(np.array([3, 3, 3])).family
    'constant'
    >>> fit_model(np.array([0, 1, -1, 0, 2, 0, -3])).family in ("laplace", "gaussian")
    True
    """
    symbols = np.asarray(symbols, np.int64)
    low, high = int(symbols.min()), int(symbols.max())
    if low == high:
        return SymbolModel("constant", low, high)
    median = float(np.median(symbols))
    candidates = [_rounded(SymbolModel("laplace", low, high, median, float(np.abs(symbols - median).mean()))),
                  _rounded(SymbolModel("gaussian", low, high, float(symbols.mean()), float(symbols.std())))]
    return min(candidates, key=lambda m: _bits(m, symbols))


def _bits(model: SymbolModel, symbols: np.ndarray) -> int:
    enc = Encoder()
    enc.symbols(symbols, model)
    return enc.bits()


class Encoder:
    """Collects symbols, then :meth:`words` gives the coded stream."""

    def __init__(self):
        import constriction

        self._coder = constriction.stream.queue.RangeEncoder()

    def symbols(self, values: np.ndarray, model: SymbolModel) -> None:
        """Code ``values`` (1-D ints within the model's range) with ``model``."""
        values = np.asarray(values, np.int32)
        if model.family != "constant" and len(values):
            self._coder.encode(values, model._constriction())

    def raw(self, values: np.ndarray, bits: np.ndarray) -> None:
        """Code the low ``bits[i]`` bits of each ``values[i]`` (both 1-D; bits 0 codes nothing)."""
        import constriction

        values, bits = np.asarray(values, np.uint64), np.asarray(bits, np.int64)
        for shift in range(0, int(bits.max(initial=0)), RAW_CHUNK):
            take = bits > shift
            width = np.minimum(bits[take] - shift, RAW_CHUNK)
            chunk = (values[take] >> np.uint64(shift)) & ((np.uint64(1) << width.astype(np.uint64)) - np.uint64(1))
            self._coder.encode(chunk.astype(np.int32), constriction.stream.model.Uniform(),
                               (1 << width).astype(np.int32))

    def bits(self) -> int:
        return int(self._coder.num_bits())

    def words(self) -> bytes:
        return np.asarray(self._coder.get_compressed(), "<u4").tobytes()


class Decoder:
    """Reads symbols back from coded words, in the order they were coded."""

    def __init__(self, data: bytes):
        import constriction

        if len(data) % 4:
            raise CodingError(f"coded data of {len(data)} bytes is not a whole number of 32-bit words")
        self._coder = constriction.stream.queue.RangeDecoder(np.frombuffer(data, "<u4").astype(np.uint32))

    def symbols(self, count: int, model: SymbolModel) -> np.ndarray:
        if model.family == "constant" or count == 0:
            return np.full(count, model.low, np.int64)
        return self._call(self._coder.decode, model._constriction(), count).astype(np.int64)

    def raw(self, bits: np.ndarray) -> np.ndarray:
        import constriction

        bits = np.asarray(bits, np.int64)
        out = np.zeros(len(bits), np.uint64)
        for shift in range(0, int(bits.max(initial=0)), RAW_CHUNK):
            take = bits > shift
            width = np.minimum(bits[take] - shift, RAW_CHUNK)
            chunk = self._call(self._coder.decode, constriction.stream.model.Uniform(),
                               (1 << width).astype(np.int32))
            out[take] |= chunk.astype(np.uint64) << np.uint64(shift)
        return out

    @staticmethod
    def _call(fn, *args):
        try:
            return np.asarray(fn(*args))
        except (ValueError, RuntimeError, OverflowError, AssertionError) as exc:  # constriction on corrupt data
            raise CodingError(f"coded data is corrupt ({' '.join(str(exc).split())})") from exc
