"""The ``.smoe`` bitstream: writing and reading it (the layout is documented in docs/bitstream.md).

A bitstream is a 48-byte header, four sections and a CRC-32::

    header   magic "SMoE", version, channels, mode, scope, height, width,
             tile side and offset, section count, kernel count, six step sizes
    section  id (u8), payload length (u32), payload: stored models, then coded words
    ...      1 centres, 2 shape, 3 gates (SMoE only), 4 colour
    crc      CRC-32 (zlib) of every byte before it

Reading trusts nothing: the CRC, the version, every header field and the
section sizes are checked before anything proportional to a declared size
is allocated, and the kernel count must be backed by the data (at most
:data:`KERNELS_PER_BYTE` per coded byte), so a small hostile file costs
little memory and time.  Every failure is a :class:`BitstreamError`, a
:class:`smoe.modelfile.ModelFileError`, with a one-line message.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

import numpy as np

from ..limits import MAX_KERNELS, check_frame
from ..modelfile import ModelFileError
from ..sizes import TILE_SIZES
from .entropy import MODEL_BYTES, CodingError, Decoder, Encoder, SymbolModel, fit_model
from .positions import MAX_AXIS_BITS, decode_centres, encode_centres, morton, unmorton
from .quantizer import Steps, grid_size, symbol_names

__all__ = ["MAGIC", "VERSION", "Header", "BitstreamError", "write_bitstream", "read_bitstream", "SECTIONS",
           "KERNELS_PER_BYTE", "overhead_bytes"]

MAGIC = b"SMoE"
#: The bitstream version this code writes and the newest it reads.
VERSION = 1
#: Most kernels a coded byte may carry: a real kernel costs tens of bits, so a larger claim is a hostile file.
KERNELS_PER_BYTE = 8
_HEADER = struct.Struct("<4sBBBBIIBBBBI6f")
_SECTION = struct.Struct("<BI")
_CRC = struct.Struct("<I")
_MODES, _SCOPES = ("smoe", "rbf"), ("raster", "global")
#: Section id -> (name, the symbols it codes); centres code ``ix, iy`` as Morton gaps with one model.
SECTIONS = {1: ("centres", ("ix", "iy")), 2: ("shape", ("d0", "d1", "shear")), 3: ("gates", ("gate",)),
            4: ("colour", ("y", "cb", "cr"))}


class BitstreamError(ModelFileError):
    """A bitstream that cannot be decoded; the message says why."""


@dataclass(frozen=True)
class Header:
    """What a bitstream's header declares."""

    frame: tuple[int, int]
    channels: int
    mode: str
    scope: str
    tile: int
    tile_offset: tuple[int, int]
    kernels: int
    steps: Steps

    @property
    def names(self) -> tuple[str, ...]:
        return symbol_names(self.channels, self.mode)

    def sections(self) -> list[tuple[int, str, tuple[str, ...]]]:
        """(id, name, symbol names) of the sections this header's stream holds, in order."""
        names = self.names
        return [(i, name, tuple(s for s in symbols if s in names)) for i, (name, symbols) in SECTIONS.items()
                if any(s in names for s in symbols)]


def overhead_bytes(channels: int, mode: str) -> int:
    """Bytes of a stream that are not coded symbols: header, CRC, section heads and stored models."""
    sections = Header((1, 1), channels, mode, "raster", 16, (0, 0), 0, Steps()).sections()
    models = sum(1 if name == "centres" else len(columns) for _, name, columns in sections)
    return _HEADER.size + _CRC.size + len(sections) * _SECTION.size + models * MODEL_BYTES


def write_bitstream(header: Header, symbols: np.ndarray) -> tuple[bytes, dict[str, int]]:
    """Code (L, S) integer ``symbols`` (columns named by ``header.names``) in Morton order.

    Returns
    -------
    data : bytes
        The bitstream.
    sizes : dict
        Bytes of the header (with the CRC) and of each section, by name.
    """
    names = header.names
    codes = morton(symbols[:, 0], symbols[:, 1])
    order = np.argsort(codes, kind="stable")
    symbols, codes = symbols[order], codes[order]
    body, sizes = [], {"header": _HEADER.size + _CRC.size}
    for sid, name, columns in header.sections():
        enc = Encoder()
        if name == "centres":
            models = [encode_centres(enc, codes)]
        else:
            models = []
            for column in columns:
                values = symbols[:, names.index(column)]
                models.append(fit_model(values) if len(values) else SymbolModel("constant", 0, 0))
                enc.symbols(values, models[-1])
        payload = b"".join(m.to_bytes() for m in models) + enc.words()
        body.append(_SECTION.pack(sid, len(payload)) + payload)
        sizes[name] = _SECTION.size + len(payload)
    head = _HEADER.pack(MAGIC, VERSION, header.channels, _MODES.index(header.mode), _SCOPES.index(header.scope),
                        *header.frame, header.tile, *header.tile_offset, len(body), header.kernels,
                        *header.steps.astuple())
    data = head + b"".join(body)
    if header.kernels > KERNELS_PER_BYTE * max(1, len(data) - _HEADER.size):
        raise ValueError(f"{header.kernels} kernels code into only {len(data)} bytes, more than "
                         f"{KERNELS_PER_BYTE} per byte, which a decoder refuses; the model is degenerate")
    return data + _CRC.pack(zlib.crc32(data)), sizes


def read_bitstream(data: bytes, name: str = "bitstream") -> tuple[Header, np.ndarray, dict[str, int]]:
    """Check and decode a bitstream: its header, (L, S) integer symbols in stream order, section sizes.

    Raises
    ------
    BitstreamError
        Naming ``name`` and the first problem found.
    """
    try:
        return _read(memoryview(data))
    except (CodingError, ValueError, struct.error) as exc:
        raise BitstreamError(f"{name}: {' '.join(str(exc).split())}") from exc


def _read(data: memoryview):
    if len(data) < len(MAGIC) or bytes(data[:4]) != MAGIC:
        raise ValueError("not an smoe bitstream (wrong magic bytes); give a file written by 'smoe encode'")
    if len(data) < _HEADER.size + _CRC.size:
        raise ValueError(f"truncated: {len(data)} bytes, shorter than a header")
    version = data[4]
    if version > VERSION:
        raise ValueError(f"bitstream version {version} is newer than this smoe reads ({VERSION}); upgrade smoe")
    if version < 1:
        raise ValueError(f"unknown bitstream version {version}")
    (crc,) = _CRC.unpack(data[-_CRC.size:])
    if zlib.crc32(data[:-_CRC.size]) != crc:
        raise ValueError("CRC mismatch: the file is truncated or corrupt")
    header, count = _header(data)
    sections, at, end = {}, _HEADER.size, len(data) - _CRC.size
    expected = header.sections()
    if count != len(expected):
        raise ValueError(f"header declares {count} sections, a {header.mode} model with {header.channels} "
                         f"channel(s) has {len(expected)}")
    for sid, name, columns in expected:
        if at + _SECTION.size > end:
            raise ValueError(f"truncated before section {name}")
        got, length = _SECTION.unpack(data[at:at + _SECTION.size])
        if got != sid:
            raise ValueError(f"section {got} found where section {sid} ({name}) belongs")
        at += _SECTION.size
        if length > end - at:
            raise ValueError(f"section {name} declares {length} bytes, only {end - at} follow")
        sections[name] = (bytes(data[at:at + length]), columns)
        at += length
    if at != end:
        raise ValueError(f"section sizes add up to {at - _HEADER.size} bytes, the body holds {end - _HEADER.size}")
    if header.kernels > KERNELS_PER_BYTE * (end - _HEADER.size):
        raise ValueError(f"header declares {header.kernels} kernels, more than {end - _HEADER.size} coded "
                         f"bytes can hold")
    symbols = np.zeros((header.kernels, len(header.names)), np.int64)
    for name, (payload, columns) in sections.items():
        _decode_section(header, name, payload, columns, symbols)
    sizes = {"header": _HEADER.size + _CRC.size}
    sizes.update({name: _SECTION.size + len(p) for name, (p, _) in sections.items()})
    return header, symbols, sizes


def _header(data: memoryview) -> tuple[Header, int]:
    (_, _, channels, mode, scope, height, width, tile, oy, ox, count, kernels,
     *steps) = _HEADER.unpack(data[:_HEADER.size])
    if channels not in (1, 3):
        raise ValueError(f"header declares {channels} channels (1 or 3)")
    if mode >= len(_MODES) or scope >= len(_SCOPES):
        raise ValueError(f"unknown mode {mode} or scope {scope} in the header")
    check_frame(height, width)
    if tile not in TILE_SIZES or oy >= tile or ox >= tile:
        raise ValueError(f"tile {tile} with offset ({oy}, {ox}) is not valid")
    if kernels > MAX_KERNELS:
        raise ValueError(f"header declares {kernels} kernels, above the limit of {MAX_KERNELS}")
    steps = Steps(*steps)
    nx, ny = grid_size((height, width), steps.position)
    if max(nx, ny) > 1 << MAX_AXIS_BITS:
        raise ValueError(f"centre grid of {nx}x{ny} cells exceeds {1 << MAX_AXIS_BITS} per side")
    header = Header((height, width), channels, _MODES[mode], _SCOPES[scope], tile, (oy, ox), kernels, steps)
    return header, count


def _decode_section(header: Header, name: str, payload: bytes, columns, symbols: np.ndarray) -> None:
    n_models = 1 if name == "centres" else len(columns)
    if len(payload) < n_models * MODEL_BYTES:
        raise ValueError(f"section {name} is shorter than its {n_models} model(s)")
    models = [SymbolModel.from_bytes(payload[i * MODEL_BYTES:(i + 1) * MODEL_BYTES]) for i in range(n_models)]
    dec = Decoder(payload[n_models * MODEL_BYTES:])
    names, count = header.names, header.kernels
    if name == "centres":
        ix, iy = unmorton(decode_centres(dec, count, models[0]))
        nx, ny = grid_size(header.frame, header.steps.position)
        if count and (ix.max() >= nx or iy.max() >= ny):
            raise ValueError(f"a centre lies outside the {nx}x{ny}-cell grid")
        symbols[:, 0], symbols[:, 1] = ix, iy
        return
    for column, model in zip(columns, models):
        symbols[:, names.index(column)] = dec.symbols(count, model)
