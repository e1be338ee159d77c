"""Reading ``.npz`` archives from strangers: bounded, without pickle, without trust.

``np.load`` believes what an archive says: it inflates a member before it
knows how large it is and raises whatever its zip and pickle layers raise.
This reader parses the zip structure itself and checks it before inflating a
byte:

* the central directory must agree with each member's local header (name,
  method, sizes, CRC), members must not overlap and must lie inside the file;
* only the stored and deflate methods and zip versions up to 4.5 are read, no
  encryption, at most :data:`MAX_MEMBERS` members;
* a member's ``.npy`` header is parsed by a small parser of our own (a dict
  literal of ``descr``, ``fortran_order`` and ``shape``), never evaluated and
  never unpickled; the declared uncompressed size must equal what the header
  implies, and the caller compares the header with its own caps first;
* data are inflated in chunks of :data:`CHUNK` bytes, so a caller can check
  values as they stream by (:meth:`Npz.chunks`) before allocating an array,
  and the CRC and length are checked at the end of each pass.

Every problem raises :class:`ArchiveError` (a ``ValueError``) with a one-line
message without the file name; :mod:`smoe.modelfile` adds it.

Examples
--------
>>> import io, numpy as np
>>> buffer = io.BytesIO()
>>> np.savez_compressed(buffer, x=np.arange(3.0))
>>> npz = Npz(buffer, len(buffer.getvalue()))
>>> npz.header("x").shape
(3,)
>>> npz.read("x")
array([0., 1., 2.])
"""

from __future__ import annotations

import re
import struct
import zlib
from dataclasses import dataclass

import numpy as np

__all__ = ["ArchiveError", "Npz", "NpyHeader", "MAX_MEMBERS", "CHUNK"]

#: Most members an archive may list.
MAX_MEMBERS = 16
#: Bytes inflated (and handed to a value check) at a time.
CHUNK = 1 << 20
#: Longest ``.npy`` header accepted (NumPy writes 128 bytes for our arrays).
MAX_NPY_HEADER = 4096

_EOCD = struct.Struct("<4sHHHHIIH")                       # end of central directory
_CENTRAL = struct.Struct("<4sHHHHHHIIIHHHHHII")          # central directory entry
_LOCAL = struct.Struct("<4sHHHHHIIIHH")                   # local file header
_ZIP64_EXTRA = 0x0001
_MAX_VERSION = 45                                         # 4.5: zip64 sizes, what NumPy writes
_STORED, _DEFLATED = 0, 8
_ENCRYPTED = 0x0001 | 0x0040                              # traditional and strong encryption bits
_NPY_MAGIC = b"\x93NUMPY"
_NPY_ITEM = re.compile(r"\s*'(\w+)'\s*:\s*('[^']*'|True|False|\([\d\s,]*\))\s*(?:,|$)")
_DESCR = re.compile(r"[<>|=]?[a-zA-Z]\d{0,4}")


class ArchiveError(ValueError):
    """The archive is malformed, unsupported or inconsistent; the message says how."""


@dataclass
class _Member:
    method: int
    crc: int
    packed: int      # compressed size
    size: int        # uncompressed size
    data_at: int     # offset of the member's data in the file


@dataclass(frozen=True)
class NpyHeader:
    """What a ``.npy`` member declares: its dtype, shape and memory order."""

    dtype: np.dtype
    shape: tuple[int, ...]
    fortran_order: bool
    length: int      # bytes before the data

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=object)) * self.dtype.itemsize


class Npz:
    """The members of an ``.npz`` archive, read through the checks above.

    Parameters
    ----------
    handle : binary file object
        Open for reading, seekable; it stays the caller's to close.
    size : int
        Length of the file in bytes.

    Attributes
    ----------
    names : tuple of str
        Member names without the ``.npy`` suffix.
    """

    def __init__(self, handle, size: int):
        self._handle = handle
        self._members = _directory(handle, size)
        self._headers: dict[str, NpyHeader] = {}
        self.names = tuple(self._members)

    def header(self, name: str) -> NpyHeader:
        """Parse (once) and return the ``.npy`` header of member ``name``."""
        if name not in self._headers:
            member = self._members[name]
            head = b"".join(self._inflate(member, stop=MAX_NPY_HEADER + 12))
            header = _npy_header(head, name)
            if header.length + header.nbytes != member.size:
                raise ArchiveError(f"member {name!r} holds {member.size} bytes but its header describes "
                                   f"{header.length + header.nbytes}")
            self._headers[name] = header
        return self._headers[name]

    def chunks(self, name: str, row_bytes: int = 1):
        """Yield the data of member ``name`` as bytes objects of whole rows of ``row_bytes`` bytes.

        Length and CRC are checked when the stream ends, after the last chunk;
        a mismatch raises :class:`ArchiveError`.
        """
        header = self.header(name)
        skip, carry = header.length, b""
        for piece in self._inflate(self._members[name]):
            if skip:
                cut = min(skip, len(piece))
                piece, skip = piece[cut:], skip - cut
            piece = carry + piece
            whole = len(piece) - len(piece) % row_bytes
            carry = piece[whole:]
            if whole:
                yield piece[:whole]
        if carry:
            raise ArchiveError(f"member {name!r} ends inside a row")

    def read(self, name: str) -> np.ndarray:
        """Member ``name`` as an array of its declared dtype (native byte order) and shape."""
        header = self.header(name)
        flat = np.empty(header.nbytes // max(1, header.dtype.itemsize), dtype=header.dtype.newbyteorder("="))
        view = flat.view(np.uint8)
        at = 0
        for piece in self.chunks(name):
            view[at:at + len(piece)] = np.frombuffer(piece, dtype=np.uint8)
            at += len(piece)
        if header.dtype.byteorder not in ("=", "|", _NATIVE):
            flat.byteswap(inplace=True)
        if header.fortran_order and header.ndim > 1:
            return np.ascontiguousarray(flat.reshape(header.shape[::-1]).T)
        return flat.reshape(header.shape)

    def _inflate(self, member: _Member, stop: int | None = None):
        """Yield the uncompressed bytes of a member in chunks of at most :data:`CHUNK` bytes.

        With ``stop``, end quietly once that many bytes came out (to read a
        header); otherwise check the length and CRC at the end.
        """
        self._handle.seek(member.data_at)
        left, done, crc, pending = member.packed, 0, 0, b""
        inflater = zlib.decompressobj(-15) if member.method == _DEFLATED else None
        while True:
            if not pending and left:
                pending = self._handle.read(min(CHUNK, left))
                if not pending:
                    raise ArchiveError("file ends inside a member's data (truncated)")
                left -= len(pending)
            if inflater is None:
                out, pending = pending, b""
            else:
                out, pending = self._inflate_step(inflater, pending, member.size - done)
            if not (out or pending or left):
                break
            done += len(out)
            if done > member.size:
                raise ArchiveError("member inflates to more than its declared size")
            crc = zlib.crc32(out, crc)
            yield out
            if stop is not None and done >= stop:
                return
        if done != member.size or (inflater is not None and not inflater.eof):
            raise ArchiveError("member is shorter than its declared size (truncated or corrupt)")
        if crc != member.crc:
            raise ArchiveError("member fails its CRC check (corrupt)")

    @staticmethod
    def _inflate_step(inflater, pending: bytes, room: int) -> tuple[bytes, bytes]:
        try:
            # One byte more than the room left, so that an overlong member shows.
            out = inflater.decompress(pending, min(CHUNK, room + 1))
        except zlib.error as exc:
            raise ArchiveError(f"corrupt compressed data ({exc})") from None
        if inflater.eof and (inflater.unconsumed_tail or inflater.unused_data):
            raise ArchiveError("compressed data end before the member does (corrupt)")
        return out, inflater.unconsumed_tail


_NATIVE = "<" if np.little_endian else ">"


# =================================================================== zip layout
def _directory(handle, size: int) -> dict[str, _Member]:
    """Parse and cross-check the central directory; member name (without .npy) -> _Member."""
    tail_at = max(0, size - _EOCD.size - 0xFFFF)
    handle.seek(tail_at)
    tail = handle.read(size - tail_at)
    at = tail.rfind(b"PK\x05\x06")
    if at < 0 or at + _EOCD.size > len(tail):
        raise ArchiveError("no zip end record (truncated or not a zip archive)")
    _, disk, cd_disk, here, total, cd_size, cd_at, _ = _EOCD.unpack_from(tail, at)
    end_at = tail_at + at
    if disk or cd_disk or here != total:
        raise ArchiveError("multi-part zip archives are not supported")
    if total > MAX_MEMBERS:
        raise ArchiveError(f"archive lists {total} members; a model file has at most {MAX_MEMBERS}")
    if cd_size > total * (_CENTRAL.size + 3 * 0xFFFF):
        raise ArchiveError("central directory is larger than its entries can be (corrupt)")
    if cd_at + cd_size > end_at:
        raise ArchiveError("central directory lies outside the file (truncated or corrupt)")
    handle.seek(cd_at)
    directory = handle.read(cd_size)
    members, spans, pos = {}, [], 0
    for _ in range(total):
        raw, member, pos, local_at = _central_entry(directory, pos)
        data_end = _check_local(handle, local_at, raw, member)
        name = raw[:-4] if raw.endswith(".npy") else raw
        if name in members:
            raise ArchiveError(f"member {name!r} is listed twice")
        if data_end > cd_at:
            raise ArchiveError(f"member {name!r} runs into the central directory (corrupt)")
        spans.append((local_at, data_end))
        members[name] = member
    spans.sort()
    if any(b[0] < a[1] for a, b in zip(spans, spans[1:])):
        raise ArchiveError("members overlap (a crafted archive)")
    return members


def _central_entry(directory: bytes, pos: int):
    if pos + _CENTRAL.size > len(directory):
        raise ArchiveError("central directory is truncated")
    (sig, _, version, flags, method, _, _, crc, packed, size, n_name, n_extra, n_comment, disk, _, _,
     local_at) = _CENTRAL.unpack_from(directory, pos)
    if sig != b"PK\x01\x02":
        raise ArchiveError("corrupt central directory entry")
    _check_method(version, flags, method)
    if disk:
        raise ArchiveError("multi-part zip archives are not supported")
    start = pos + _CENTRAL.size
    if start + n_name + n_extra + n_comment > len(directory):
        raise ArchiveError("central directory is truncated")
    name = _name(directory[start:start + n_name])
    extra = directory[start + n_name:start + n_name + n_extra]
    size, packed, local_at = _zip64(extra, [size, packed, local_at])
    member = _Member(method, crc, packed, size, data_at=-1)
    return name, member, start + n_name + n_extra + n_comment, local_at


def _check_local(handle, local_at: int, name: str, member: _Member) -> int:
    """Compare a member's local header with its central entry; fills in data_at, returns its data's end."""
    handle.seek(local_at)
    raw = handle.read(_LOCAL.size)
    if len(raw) < _LOCAL.size:
        raise ArchiveError(f"local header of {name!r} lies outside the file (truncated)")
    sig, version, flags, method, _, _, crc, packed, size, n_name, n_extra = _LOCAL.unpack(raw)
    if sig != b"PK\x03\x04":
        raise ArchiveError(f"local header of {name!r} is missing (corrupt)")
    _check_method(version, flags, method)
    rest = handle.read(n_name + n_extra)
    if len(rest) < n_name + n_extra or _name(rest[:n_name]) != name:
        raise ArchiveError(f"local header of {name!r} does not match the central directory")
    if not flags & 0x0008:  # without a data descriptor, the local sizes and CRC must be the real ones
        size, packed = _zip64(rest[n_name:], [size, packed])
        if (method, crc, packed, size) != (member.method, member.crc, member.packed, member.size):
            raise ArchiveError(f"local header of {name!r} does not match the central directory")
    elif method != member.method:
        raise ArchiveError(f"local header of {name!r} does not match the central directory")
    data_at = local_at + _LOCAL.size + n_name + n_extra
    if member.method == _STORED and member.packed != member.size:
        raise ArchiveError(f"stored member {name!r} has different packed and unpacked sizes")
    member.data_at = data_at
    return data_at + member.packed


def _check_method(version: int, flags: int, method: int) -> None:
    if version > _MAX_VERSION:
        raise ArchiveError(f"member needs zip version {version / 10:.1f}; this reader supports up to 4.5")
    if flags & _ENCRYPTED:
        raise ArchiveError("encrypted members are not supported")
    if method not in (_STORED, _DEFLATED):
        raise ArchiveError(f"compression method {method} is not supported (only stored and deflate)")


def _name(raw: bytes) -> str:
    try:
        name = raw.decode("ascii")
    except UnicodeDecodeError:
        raise ArchiveError("member name is not ASCII") from None
    if not name or len(name) > 255:
        raise ArchiveError("member name is empty or too long")
    return name


def _zip64(extra: bytes, fields: list[int]) -> list[int]:
    """Replace the 0xFFFFFFFF fields by the values of the zip64 extra field.

    ``fields`` are in the extra field's order: uncompressed size, compressed
    size, local header offset.
    """
    wanted = [i for i, value in enumerate(fields) if value == 0xFFFFFFFF]
    if not wanted:
        return fields
    pos = 0
    while pos + 4 <= len(extra):
        kind, length = struct.unpack_from("<HH", extra, pos)
        body = extra[pos + 4:pos + 4 + length]
        if kind == _ZIP64_EXTRA:
            if len(body) < 8 * len(wanted):
                break
            for k, i in enumerate(wanted):
                fields[i] = struct.unpack_from("<Q", body, 8 * k)[0]
            return fields
        pos += 4 + length
    raise ArchiveError("zip64 sizes are missing (corrupt)")


# ===================================================================== npy header
def _npy_header(head: bytes, name: str) -> NpyHeader:
    """Parse the start of a ``.npy`` member: magic, version, and the header dict literal."""
    if head[:6] != _NPY_MAGIC or len(head) < 10:
        raise ArchiveError(f"member {name!r} is not a NumPy array")
    major = head[6]
    if major == 1:
        length, start = struct.unpack_from("<H", head, 8)[0], 10
    elif major in (2, 3) and len(head) >= 12:
        length, start = struct.unpack_from("<I", head, 8)[0], 12
    else:
        raise ArchiveError(f"member {name!r} has .npy version {major}; only 1 to 3 are read")
    if length > MAX_NPY_HEADER:
        raise ArchiveError(f"member {name!r} has a .npy header of {length} bytes (more than {MAX_NPY_HEADER})")
    if len(head) < start + length:
        raise ArchiveError(f"member {name!r} ends inside its .npy header")
    text = head[start:start + length].decode("utf-8" if major == 3 else "latin-1", "replace").strip()
    items = _dict_items(text, name)
    if set(items) != {"descr", "fortran_order", "shape"}:
        raise ArchiveError(f"member {name!r} has a .npy header without descr, fortran_order and shape")
    descr = items["descr"].strip("'")
    if descr.lstrip("<>|=") == "O":
        raise ArchiveError(f"array {name!r} holds pickled Python objects; refusing to load it "
                           "(a model file holds numbers only)")
    if not _DESCR.fullmatch(descr) or not items["shape"].startswith("("):
        raise ArchiveError(f"member {name!r} has an unsupported .npy dtype or shape")
    try:
        dtype = np.dtype(descr)
    except (TypeError, ValueError):
        raise ArchiveError(f"member {name!r} has an unknown dtype {descr!r}") from None
    if dtype.itemsize == 0:
        raise ArchiveError(f"member {name!r} has a dtype of 0 bytes ({descr!r})")
    shape = _shape(items["shape"], name)
    return NpyHeader(dtype, shape, items["fortran_order"] == "True", start + length)


def _shape(text: str, name: str) -> tuple[int, ...]:
    """``(3, 2)``, ``(5,)`` or ``()`` -> a tuple of at most 4 sizes of at most 12 digits each."""
    parts = [part.strip() for part in text[1:-1].split(",")]
    if parts[-1] == "" and len(parts) > 1:
        parts.pop()
    if parts == [""]:
        parts = []
    if len(parts) > 4 or not all(part.isdigit() and len(part) <= 12 for part in parts):
        raise ArchiveError(f"member {name!r} has an unsupported .npy shape {text}")
    return tuple(int(part) for part in parts)


def _dict_items(text: str, name: str) -> dict[str, str]:
    if not (text.startswith("{") and text.endswith("}")):
        raise ArchiveError(f"member {name!r} has a malformed .npy header")
    body, items, pos = text[1:-1], {}, 0
    while body[pos:].strip():
        match = _NPY_ITEM.match(body, pos)
        if match is None or match.group(1) in items:
            raise ArchiveError(f"member {name!r} has a malformed .npy header")
        items[match.group(1)] = match.group(2)
        pos = match.end()
    return items
