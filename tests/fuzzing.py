"""Mutated model files and images from seeds, and the harness that feeds them to smoe.

Every case starts from a small valid file written by smoe itself (a model by
:func:`smoe.save_model`, an image by :func:`smoe.imageio.write_image` or
Pillow, a bitstream by :func:`smoe.codec.bitstream.write_bitstream`) and is mutated by one recipe chosen by the case's seed: byte flips,
truncation, patched zip / ``.npy`` / image header fields, zip bombs, deep or
huge JSON, absurd parameter values, and so on.  A case passes when loading it
gives a valid result (a model or image that renders / holds finite values
within the limits) or the documented error (:class:`smoe.ModelFileError`,
:class:`smoe.imageio.ImageError`) with a one-line message naming the file;
anything else (another exception, a hang past the time limit, running out of
the memory cap) is a failure.

Cases run in batches in worker subprocesses whose address space is capped
(:data:`MEMORY_CAP` above the worker's size after importing smoe) with a time
limit per case (:data:`CASE_SECONDS`; bitstreams, which strangers send to a
decoder, under the tighter :data:`BITSTREAM_MEMORY_CAP` and
:data:`BITSTREAM_CASE_SECONDS`).

Long campaign, before a release::

    SMOE_FUZZ_CASES=20000 SMOE_FUZZ_IMAGES=5000 SMOE_FUZZ_BITSTREAMS=50000 python tests/fuzzing.py campaign

prints cases / valid / clean errors / failures per kind, the slowest case and
the first failures.
"""

from __future__ import annotations

import functools
import importlib
import io
import json
import os
import random
import resource
import signal
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
#: Address space a worker may add to what it maps after importing smoe.
MEMORY_CAP = 3 << 29  # 1.5 GiB
#: Seconds a single case may take in a worker.
CASE_SECONDS = 10.0
#: Cases per worker subprocess.
BATCH = 500
#: A decoder of bitstreams from strangers may add no more than this to its address space, nor take longer per file.
BITSTREAM_MEMORY_CAP = 500 << 20
BITSTREAM_CASE_SECONDS = 2.0


# ================================================================ zip building
def npy_bytes(array: np.ndarray) -> bytes:
    """An array as the bytes of a ``.npy`` file, as NumPy writes it."""
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def npy_header_bytes(descr: str, shape: tuple, fortran: bool = False, pad_to: int = 128) -> bytes:
    """A version 1.0 ``.npy`` header written by hand (for headers NumPy would not write)."""
    text = f"{{'descr': '{descr}', 'fortran_order': {fortran}, 'shape': {shape}, }}"
    text = text.ljust(max(pad_to, len(text) + 11) - 11) + "\n"
    if len(text) + 10 > 0xFFFF:
        return b"\x93NUMPY\x02\x00" + struct.pack("<I", len(text)) + text.encode("latin-1")
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text.encode("latin-1")


def zip_bytes(members: dict, *, method: int = 8) -> bytes:
    """A zip archive of ``name -> bytes or (header, zero_count)`` members, zip64 local sizes as NumPy writes.

    A ``(header, zero_count)`` member is ``header`` followed by that many zero
    bytes, compressed in a stream so that a 2 GiB bomb costs little memory.
    """
    out, central = bytearray(), bytearray()
    for name, body in members.items():
        packed, size, crc = _compress(body, method)
        raw = (name if name.endswith(".npy") or "." in name else name + ".npy").encode()
        extra = struct.pack("<HHQQ", 1, 16, size, len(packed))
        local_at = len(out)
        out += struct.pack("<4sHHHHHIIIHH", b"PK\x03\x04", 45, 0, method, 0, 0x21, crc, 0xFFFFFFFF,
                           0xFFFFFFFF, len(raw), len(extra)) + raw + extra + packed
        small = size < 0xFFFFFFFF and len(packed) < 0xFFFFFFFF
        cextra = b"" if small else struct.pack("<HHQQ", 1, 16, size, len(packed))
        central += struct.pack("<4sHHHHHHIIIHHHHHII", b"PK\x01\x02", 45, 45, 0, method, 0, 0x21, crc,
                               len(packed) if small else 0xFFFFFFFF, size if small else 0xFFFFFFFF,
                               len(raw), len(cextra), 0, 0, 0, 0x1800000, local_at) + raw + cextra
    cd_at = len(out)
    out += central + struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, len(members), len(members), len(central),
                                 cd_at, 0)
    return bytes(out)


def _compress(body, method: int) -> tuple[bytes, int, int]:
    if isinstance(body, tuple):
        header, zeros = body
        packer = zlib.compressobj(9, zlib.DEFLATED, -15)
        head = packer.compress(header) + packer.flush(zlib.Z_FULL_FLUSH)
        return head + _zeros(zeros), len(header) + zeros, _crc_zeros(zlib.crc32(header), zeros)
    if method == 0:
        return body, len(body), zlib.crc32(body)
    packer = zlib.compressobj(6, zlib.DEFLATED, -15)
    return packer.compress(body) + packer.flush(), len(body), zlib.crc32(body)


_BLOCK = 1 << 22


@functools.lru_cache(maxsize=16)
def _zeros(count: int) -> bytes:
    """Raw deflate blocks of ``count`` zero bytes, ending the stream.

    After a full flush a deflate stream refers to nothing before it, so one
    compressed block of zeros repeats to any length cheaply.
    """
    packer = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = packer.compress(bytes(_BLOCK)) + packer.flush(zlib.Z_FULL_FLUSH)
    last = zlib.compressobj(9, zlib.DEFLATED, -15)
    tail = last.compress(bytes(count % _BLOCK)) + last.flush()
    return block * (count // _BLOCK) + tail


@functools.lru_cache(maxsize=64)
def _crc_zeros(crc: int, count: int) -> int:
    block = bytes(_BLOCK)
    for _ in range(count // _BLOCK):
        crc = zlib.crc32(block, crc)
    return zlib.crc32(bytes(count % _BLOCK), crc)


# ============================================================ valid base files
def base_members(index: int) -> tuple[dict, dict]:
    """Arrays and metadata of one of four small valid models (written by save_model, read back)."""
    from smoe.model import Model
    from smoe.fitted import FittedModel
    from smoe.modelfile import save_model
    from smoe.spec import FitSpec

    rng = np.random.default_rng(index)
    n, channels = (30, 3, 12, 0)[index % 4], (3, 1, 3, 1)[index % 4]
    dtype = (np.float32, np.float64)[index % 2]
    mu = rng.random((n, 2)) * [50, 40]
    chol = np.stack([0.1 + 0.3 * rng.random(n), 0.1 * (rng.random(n) - 0.5), 0.1 + 0.3 * rng.random(n)], 1)
    model = Model(mu.astype(dtype), chol.astype(dtype), (0.1 + rng.random(n)).astype(dtype),
                  rng.random((n, channels)).astype(dtype))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.npz"
        mode, scope = ("smoe", "rbf")[index % 2], ("raster", "global")[index // 2 % 2]
        save_model(path, FittedModel(model, (40, 50), mode, scope, spec=FitSpec(iters=10, seed=index)))
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
        data = path.read_bytes()
    meta = json.loads(arrays.pop("meta").tobytes())
    return {"arrays": arrays, "meta": meta, "file": data}, meta


def model_file(arrays: dict, meta, /, **overrides) -> bytes:
    """A model archive from arrays and metadata (a dict, raw bytes or an array)."""
    if isinstance(meta, dict):
        meta = json.dumps(meta).encode()
    meta_array = meta if isinstance(meta, np.ndarray) else np.frombuffer(meta, np.uint8)
    members = {name: npy_bytes(a) for name, a in arrays.items()}
    members["meta"] = npy_bytes(meta_array)
    members.update(overrides)
    return zip_bytes({k: v for k, v in members.items() if v is not None})


def base_images() -> list[bytes]:
    """Small valid images in the formats smoe reads: PNG 8/16 bit, JPEG, GIF, TIFF 8/16 bit, BMP."""
    from PIL import Image

    from smoe.imageio import write_image

    rng = np.random.default_rng(7)
    rgb = rng.random((17, 24, 3)).astype(np.float32)
    grey = rng.random((13, 20)).astype(np.float32)
    files = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, image, bits in (("a.png", rgb, 8), ("b.png", grey, 16), ("c.png", rgb, 16), ("d.jpg", rgb, 8),
                                  ("e.tif", rgb, 16), ("f.tif", grey, 8), ("g.bmp", rgb, 8)):
            write_image(Path(tmp) / name, image, bits=bits)
            files.append((Path(tmp) / name).read_bytes())
    codes = (rgb * 255).astype(np.uint8)
    for fmt, options in (("GIF", {}), ("PNG", {"optimize": True}), ("JPEG", {"progressive": True}),
                         ("TIFF", {"compression": "tiff_deflate"}), ("PNG", {"interlace": 1})):
        buffer = io.BytesIO()
        picture = Image.fromarray(codes)
        (picture.convert("P") if fmt == "GIF" else picture).save(buffer, fmt, **options)
        files.append(buffer.getvalue())
    return files


# ================================================================== mutations
_EXTREMES = (0, 1, 2, 7, 0x7F, 0xFF, 0x100, 0xFFFF, 0x10000, 0x7FFFFFFF, 0xFFFFFFFF, 1 << 40)


def flip_bytes(data: bytes, rng: random.Random, count: int | None = None) -> bytes:
    out = bytearray(data)
    for _ in range(count or rng.randint(1, 8)):
        out[rng.randrange(len(out))] = rng.randrange(256)
    return bytes(out)


def truncate(data: bytes, rng: random.Random) -> bytes:
    return data[:rng.randrange(len(data))]


def patch_int(data: bytes, at: int, size: int, value: int, order: str = "<") -> bytes:
    """Overwrite an unsigned integer field of ``size`` bytes (wrapping ``value``)."""
    if at < 0 or at + size > len(data):
        return data
    code = {1: "B", 2: "H", 4: "I", 8: "Q"}[size]
    return data[:at] + struct.pack(order + code, value % (1 << 8 * size)) + data[at + size:]


def _patch_zip_field(data: bytes, rng: random.Random) -> bytes:
    """Patch one field of a local header, central entry or end record."""
    sig = rng.choice([b"PK\x03\x04", b"PK\x01\x02", b"PK\x05\x06"])
    spots = [i for i in range(len(data)) if data.startswith(sig, i)]
    if not spots:
        return flip_bytes(data, rng)
    at = rng.choice(spots)
    fields = {b"PK\x03\x04": [(4, 2), (6, 2), (8, 2), (14, 4), (18, 4), (22, 4), (26, 2), (28, 2)],
              b"PK\x01\x02": [(4, 2), (6, 2), (8, 2), (10, 2), (16, 4), (20, 4), (24, 4), (28, 2), (30, 2),
                              (32, 2), (34, 2), (42, 4)],
              b"PK\x05\x06": [(4, 2), (6, 2), (8, 2), (10, 2), (12, 4), (16, 4), (20, 2)]}[sig]
    offset, size = rng.choice(fields)
    value = rng.choice(_EXTREMES) if rng.random() < 0.6 else rng.randrange(1 << 8 * size)
    return patch_int(data, at + offset, size, value)


def _bad_meta(meta: dict, rng: random.Random):
    choice = rng.randrange(12)
    if choice == 0:
        depth = rng.choice([40, 1000, 100_000])
        return ("[" * depth + "]" * depth).encode()
    if choice == 1:
        return json.dumps({**meta, "settings": {"n": 0}}).replace("0}", "9" * rng.choice([41, 5000]) + "}").encode()
    if choice == 2:
        return json.dumps({**meta, "height": rng.choice([10**19, 200_000, 2**31, -1, 0, 1.5, "64", None]),
                           "width": rng.choice([10**19, 200_000, 1, 10**8, 64])}).encode()
    if choice == 3:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64)))
    if choice == 4:
        key = rng.choice(list(meta))
        return json.dumps({k: v for k, v in meta.items() if k != key}).encode()
    if choice == 5:
        key = rng.choice(list(meta))
        return json.dumps({**meta, key: rng.choice([None, [], {}, "x", -3, 2**70, 1e308, True])}).encode()
    if choice == 6:
        return json.dumps({**meta, "format_version": rng.choice([0, 2, 99, 10**30])}).encode()
    if choice == 7:
        return json.dumps({**meta, "settings": {"s": "x" * rng.choice([10, 2 << 20])}}).encode()
    if choice == 8:
        return flip_bytes(json.dumps(meta).encode(), rng)
    if choice == 9:
        return json.dumps({**meta, "channels": rng.choice([0, 2, 4, 3, 1])}).encode()
    if choice == 10:
        return json.dumps(meta).encode()[:rng.randrange(1, 40)]
    return b'{"a": ' * 50 + b"1" + b"}" * 50


def _bad_values(arrays: dict, rng: random.Random) -> dict:
    arrays = {k: v.copy() for k, v in arrays.items()}
    names = [k for k, v in arrays.items() if v.size]
    if not names:
        return arrays
    name = rng.choice(names)
    target = arrays[name]
    value = rng.choice([np.nan, np.inf, -np.inf, 1e38, -1e38, 1e15, 9.9e14, -1e16, 0.0, -0.2, 1e-30, 3e38, 1e300])
    if target.dtype == np.float32 and abs(value) > 3e38:
        value = np.float32(np.inf)
    target.flat[rng.randrange(target.size)] = value
    return arrays


def _bad_npy_header(arrays: dict, meta: dict, rng: random.Random) -> bytes:
    name = rng.choice(["mu", "chol", "pi", "experts", "meta"])
    choice = rng.randrange(9)
    array = arrays.get(name, np.frombuffer(json.dumps(meta).encode(), np.uint8))
    body = npy_bytes(array)[128:] if len(npy_bytes(array)) > 128 else b""
    if choice == 0:
        header = npy_header_bytes(array.dtype.str, array.shape, pad_to=rng.choice([30_000, 70_000]))
    elif choice == 1:
        header = npy_header_bytes(rng.choice(["|O", "<c8", "<f2", "<i8", "|b1", "<U4", "V8", "<f16", "zz"]),
                                  array.shape)
    elif choice == 2:
        shape = tuple(rng.choice([0, 1, 2, 3, 30, 10**12, 2**63, 2**24]) for _ in range(rng.randint(0, 3)))
        header = npy_header_bytes(array.dtype.str, shape)
    elif choice == 3:
        header = npy_header_bytes(array.dtype.str, array.shape, fortran=True)
    elif choice == 4:
        header = b"\x93NUMPY" + bytes([rng.choice([0, 4, 9, 255]), 0]) + npy_bytes(array)[8:128]
    elif choice == 5:
        header = npy_bytes(array)[:10] + b"{'descr': __import__('os').system('true')}".ljust(118) + b"\n"
    elif choice == 6:
        text = npy_bytes(array)[10:128].replace(b"'shape'", b"'shapes'")
        header = npy_bytes(array)[:10] + text
    elif choice == 7:  # a bomb: the header claims the most kernels, the data are zeros
        n = rng.choice([1 << 24, (1 << 24) + 1, 1 << 22])
        columns = {"mu": (2,), "chol": (3,), "pi": (), "experts": (3,)}.get(name, ())
        shape = (n, *columns)
        dtype = np.dtype(array.dtype if name != "meta" else np.uint8)
        count = int(np.prod(shape)) * dtype.itemsize
        fields = {k: npy_bytes(v) for k, v in arrays.items()}
        fields[name] = (npy_header_bytes(dtype.str, shape), count)
        return fields
    else:
        header = npy_bytes(array)[:rng.randrange(1, 128)]
        body = b""
    return {name: header + body}


def _bomb_member(arrays: dict, meta: dict, rng: random.Random) -> bytes:
    """A member that declares a huge size of zeros."""
    name = rng.choice(["mu", "meta", "chol"])
    size = rng.choice([1 << 31, 1 << 26, 3 << 20])
    dims = {"mu": (size // 8, 2), "chol": (size // 12, 3), "meta": (size,)}[name]
    dtype = "|u1" if name == "meta" else "<f4"
    count = int(np.prod(dims)) * (1 if name == "meta" else 4)
    return model_file(arrays, meta, **{name: (npy_header_bytes(dtype, dims), count)})


def _shuffled_members(arrays: dict, meta: dict, rng: random.Random) -> bytes:
    """Members removed, doubled, added or replaced by junk."""
    members = {k: npy_bytes(v) for k, v in arrays.items()}
    members["meta"] = npy_bytes(np.frombuffer(json.dumps(meta).encode(), np.uint8))
    for _ in range(rng.randint(1, 3)):
        action, key = rng.randrange(3), rng.choice(list(members))
        if action == 0:
            members.pop(key)
        elif action == 1:
            members[f"x{rng.randrange(99)}"] = members[key]
        else:
            members[key] = bytes(rng.randrange(256) for _ in range(rng.randrange(200)))
    return zip_bytes(members, method=rng.choice([0, 8]))


def _doubled_entry(data: bytes, rng: random.Random) -> bytes:
    """A central directory entry listed twice (members then overlap), sometimes patched too."""
    at = data.find(b"PK\x01\x02")
    end = data.find(b"PK\x01\x02", at + 4)
    if at < 0 or end < 0:
        return data
    doubled = data[:end] + data[at:]
    return _patch_zip_field(doubled, rng) if rng.random() < 0.3 else doubled


_MODEL_RECIPES = (
    lambda b, rng: flip_bytes(b["file"], rng),
    lambda b, rng: truncate(b["file"], rng),
    lambda b, rng: _patch_zip_field(b["file"], rng),
    lambda b, rng: model_file(b["arrays"], _bad_meta(b["meta"], rng)),
    lambda b, rng: model_file(_bad_values(b["arrays"], rng), b["meta"]),
    lambda b, rng: model_file(b["arrays"], b["meta"], **_bad_npy_header(b["arrays"], b["meta"], rng)),
    lambda b, rng: _bomb_member(b["arrays"], b["meta"], rng),
    lambda b, rng: _shuffled_members(b["arrays"], b["meta"], rng),
    lambda b, rng: flip_bytes(b["file"], rng, count=rng.randint(20, 200)),
    lambda b, rng: _doubled_entry(b["file"], rng),
    lambda b, rng: _patch_zip_field(_patch_zip_field(b["file"], rng), rng),
    lambda b, rng: model_file(_bad_values(_bad_values(b["arrays"], rng), rng),
                              _bad_meta(b["meta"], rng) if rng.random() < 0.3 else b["meta"]),
)

_IMAGE_RECIPES = (
    flip_bytes,
    truncate,
    lambda data, rng: _patch_dimensions(data, rng),
    lambda data, rng: flip_bytes(data, rng, count=rng.randint(10, 100)),
    lambda data, rng: _patch_dimensions(truncate(data, rng) if rng.random() < 0.3 else data, rng),
    lambda data, rng: _cut(data, rng),
)


def mutate_model(seed: int, bases: list) -> bytes:
    """The model file of fuzz case ``seed``: one recipe of :data:`_MODEL_RECIPES` on one base model."""
    rng = random.Random(seed)
    return _MODEL_RECIPES[rng.randrange(len(_MODEL_RECIPES))](bases[seed % len(bases)][0], rng)


def mutate_image(seed: int, bases: list) -> bytes:
    """The image file of fuzz case ``seed``: one recipe of :data:`_IMAGE_RECIPES` on one base image."""
    rng = random.Random(seed)
    return _IMAGE_RECIPES[rng.randrange(len(_IMAGE_RECIPES))](bases[seed % len(bases)], rng)


def _cut(data: bytes, rng: random.Random) -> bytes:
    """Up to 64 bytes removed from the middle."""
    at = rng.randrange(len(data))
    return data[:at] + data[at + rng.randint(1, 64):]


def _patch_dimensions(data: bytes, rng: random.Random) -> bytes:
    """Patch a size field of the format's header (or a random field of a TIFF directory)."""
    big = rng.choice([0, 1, 65, 1000, 65535, 100_000, 2**31 - 1, 2**32 - 1])
    if data.startswith(b"\x89PNG"):
        return patch_int(data, 16 + 4 * rng.randrange(2), 4, big, ">")
    if data.startswith(b"GIF"):
        spots = [6, 8] + ([data.index(b",") + 5, data.index(b",") + 7] if b"," in data else [])
        return patch_int(data, rng.choice(spots), 2, big)
    if data.startswith(b"BM"):
        return patch_int(data, rng.choice([18, 22, 28, 30, 34]), 4, big)
    if data.startswith(b"\xff\xd8"):
        for marker in (b"\xff\xc0", b"\xff\xc2"):
            if marker in data:
                return patch_int(data, data.index(marker) + rng.choice([5, 7]), 2, big, ">")
        return flip_bytes(data, rng)
    if data[:2] in (b"II", b"MM"):
        order = "<" if data[:2] == b"II" else ">"
        ifd = struct.unpack(order + "I", data[4:8])[0]
        count = struct.unpack(order + "H", data[ifd:ifd + 2])[0] if ifd + 2 <= len(data) else 0
        if not count:
            return flip_bytes(data, rng)
        entry = ifd + 2 + 12 * rng.randrange(min(count, 64))
        return patch_int(data, entry + rng.choice([2, 4, 8]), 4, big, order)
    return flip_bytes(data, rng)


# ================================================================= bitstreams
def base_bitstreams() -> list[bytes]:
    """Small valid bitstreams (RGB and grey, SMoE and RBF) of random quantized kernels."""
    from smoe.codec.bitstream import Header, write_bitstream
    from smoe.codec.quantizer import Steps, quantize

    out = []
    for i, (channels, mode, n) in enumerate([(3, "smoe", 40), (1, "smoe", 25), (3, "rbf", 30), (3, "smoe", 1)]):
        g = np.random.default_rng(i)
        h, w = 24 + 8 * i, 40 - 4 * i
        arrays = {"mu": g.uniform(-2, [w + 2, h + 2], (n, 2)), "pi": g.uniform(0.2, 1.5, n),
                  "chol": np.stack([g.uniform(0.1, 1, n), g.uniform(-0.3, 0.3, n), g.uniform(0.1, 1, n)], 1),
                  "experts": g.uniform(0, 1, (n, channels))}
        steps = Steps()
        header = Header((h, w), channels, mode, "raster", 16, (0, i), n, steps)
        out.append(write_bitstream(header, quantize(arrays, (h, w), mode, steps))[0])
    return out


def _with_crc(data: bytes) -> bytes:
    """``data`` with its last four bytes replaced by the CRC-32 of the rest, so the checks behind the CRC run."""
    return data[:-4] + struct.pack("<I", zlib.crc32(data[:-4])) if len(data) >= 4 else data


def _sections(data: bytes) -> list[tuple[int, int]]:
    """(start, end) of each section of a valid bitstream."""
    spans, at = [], 48
    while at + 5 <= len(data) - 4:
        length = struct.unpack("<I", data[at + 1:at + 5])[0]
        spans.append((at, at + 5 + length))
        at += 5 + length
    return spans


def _splice(data: bytes, other: bytes, rng: random.Random) -> bytes:
    """A section of ``data`` replaced by a section of ``other`` (or dropped, or doubled)."""
    mine, theirs = _sections(data), _sections(other)
    a, b = mine[rng.randrange(len(mine))]
    choice = rng.randrange(3)
    if choice == 0:
        c, d = theirs[rng.randrange(len(theirs))]
        return data[:a] + other[c:d] + data[b:]
    return data[:a] + (b"" if choice == 1 else data[a:b] * 2) + data[b:]


def _patch_bitstream_header(data: bytes, rng: random.Random) -> bytes:
    field = rng.choice([(4, 1), (5, 1), (6, 1), (7, 1), (8, 4), (12, 4), (16, 1), (17, 1), (19, 1), (20, 4),
                        (24 + 4 * rng.randrange(6), 4)])
    at, size = field
    value = rng.choice([0, 1, 2, 3, 17, 255, 65535, 2**24, 2**31 - 1, 2**32 - 1]) % (1 << (8 * size))
    if at >= 24 and rng.random() < 0.5:
        return data[:at] + struct.pack("<f", rng.choice([0.0, -1.0, 1e-9, 1e9, float("nan"), float("inf"), 20.0]))\
            + data[at + 4:]
    return patch_int(data, at, size, value)


_BITSTREAM_RECIPES = (
    lambda data, other, rng: flip_bytes(data, rng),
    lambda data, other, rng: _with_crc(flip_bytes(data, rng, count=rng.randint(1, 4))),
    lambda data, other, rng: truncate(data, rng),
    lambda data, other, rng: _with_crc(truncate(data, rng)),
    lambda data, other, rng: _with_crc(_cut(data, rng)),
    lambda data, other, rng: _with_crc(_splice(data, other, rng)),
    lambda data, other, rng: _with_crc(_patch_bitstream_header(data, rng)),
    lambda data, other, rng: _with_crc(data[:48] + bytes(rng.randrange(256) for _ in range(rng.randint(0, 400)))),
)


def mutate_bitstream(seed: int, bases: list) -> bytes:
    """The bitstream of fuzz case ``seed``: one recipe of :data:`_BITSTREAM_RECIPES` (most keep the CRC valid)."""
    rng = random.Random(seed)
    data, other = bases[seed % len(bases)], bases[(seed // len(bases)) % len(bases)]
    return _BITSTREAM_RECIPES[rng.randrange(len(_BITSTREAM_RECIPES))](data, other, rng)


def _check_bitstream(path: Path) -> str:
    from smoe.codec import BitstreamError, decode, read_file

    try:
        fitted = decode(read_file(path), str(path))
    except BitstreamError as exc:
        return _clean(exc, path)
    h, w = fitted.frame
    if h * w <= 1 << 16:
        pixels = fitted.render()
        assert np.isfinite(pixels).all(), "accepted bitstream renders non-finite pixels"
    return "valid"


# ==================================================================== running
def _check_model(path: Path) -> str:
    import torch

    from smoe.limits import MAX_OUTPUT_PIXELS
    from smoe.modelfile import ModelFileError, read_model_file
    from smoe.rasterizer import render

    try:
        fitted, meta = read_model_file(path)
    except ModelFileError as exc:
        return _clean(exc, path)
    model = fitted.model
    h, w = meta["height"], meta["width"]
    assert h * w <= MAX_OUTPUT_PIXELS, f"frame {w}x{h} above the limit was accepted"
    if h * w <= 1 << 16:
        with torch.no_grad():
            for dtype in (torch.float32, torch.float64):
                pixels = render(model.to(dtype=dtype), h, w, mode=meta["mode"], scope=meta["scope"])
                assert torch.isfinite(pixels).all(), f"accepted model renders non-finite pixels in {dtype}"
    return "valid"


def _check_image(path: Path) -> str:
    import warnings

    from smoe.imageio import ImageError, read_image
    from smoe.limits import MAX_IMAGE_PIXELS

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            image = read_image(path)
    except ImageError as exc:
        return _clean(exc, path)
    assert image.dtype == np.float32 and image.ndim in (2, 3), f"bad array {image.dtype} {image.shape}"
    assert image.shape[0] * image.shape[1] <= MAX_IMAGE_PIXELS, "image above the pixel limit was decoded"
    assert np.isfinite(image).all() and image.min() >= 0 and image.max() <= 1, "samples outside [0, 1]"
    return "valid"


def _warm_up(data: bytes) -> Path:
    path = Path(tempfile.mkdtemp()) / "warm.smoe"
    path.write_bytes(data)
    return path


def _clean(exc: Exception, path: Path) -> str:
    text = str(exc)
    assert "\n" not in text, f"message of more than one line: {text!r}"
    assert str(path) in text, f"message does not name the file: {text!r}"
    return "clean"


class _CaseTimeout(Exception):
    pass


def _on_alarm(signum, frame):
    raise _CaseTimeout()


def worker(kind: str, start: int, count: int) -> None:
    """Run cases ``start .. start + count - 1`` of ``kind``; print one JSON line per case."""
    for module in ("smoe.imageio", "smoe.modelfile", "smoe.rasterizer", "smoe.codec"):  # part of the baseline
        importlib.import_module(module)

    bases, mutate, check, cap, limit, suffix = {
        "model": lambda: ([base_members(i) for i in range(4)], mutate_model, _check_model, MEMORY_CAP, CASE_SECONDS,
                          ".npz"),
        "image": lambda: (base_images(), mutate_image, _check_image, MEMORY_CAP, CASE_SECONDS, ".img"),
        "bitstream": lambda: (base_bitstreams(), mutate_bitstream, _check_bitstream, BITSTREAM_MEMORY_CAP,
                              BITSTREAM_CASE_SECONDS, ".smoe"),
    }[kind]()
    if kind == "bitstream":
        check(_warm_up(bases[0]))  # first decode and render compile and load what every later one reuses
    mapped = int(open("/proc/self/status").read().split("VmSize:")[1].split()[0]) * 1024
    resource.setrlimit(resource.RLIMIT_AS, (mapped + cap, resource.RLIM_INFINITY))
    signal.signal(signal.SIGALRM, _on_alarm)
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(start, start + count):
            path = Path(tmp) / f"case{seed}{suffix}"
            path.write_bytes(mutate(seed, bases))
            began = time.perf_counter()
            signal.setitimer(signal.ITIMER_REAL, limit)
            try:
                outcome, detail = check(path), ""
            except _CaseTimeout:
                outcome, detail = "failure", f"took more than {limit} s"
            except BaseException as exc:  # noqa: BLE001  anything else is what the fuzzing looks for
                outcome, detail = "failure", f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
            seconds = time.perf_counter() - began
            print(json.dumps({"seed": seed, "outcome": outcome, "detail": detail, "seconds": seconds}), flush=True)
            path.unlink()


def run(kind: str, cases: int, *, first: int = 0, batch: int = BATCH) -> dict:
    """Run ``cases`` cases of ``kind`` ("model" or "image") in worker subprocesses; a summary dict.

    A worker that dies or hangs marks its unfinished cases as failures.
    """
    summary = {"cases": 0, "valid": 0, "clean": 0, "failure": 0, "slowest": (0.0, None), "failures": []}
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    start, end = first, first + cases
    while start < end:
        count = min(batch, end - start)
        command = [sys.executable, str(Path(__file__).resolve()), "worker", kind, str(start), str(count)]
        try:
            done = subprocess.run(command, capture_output=True, text=True, env=env,
                                  timeout=60 + count * CASE_SECONDS)
            lines, tail = done.stdout.splitlines(), " ".join(done.stderr[-300:].split())
        except subprocess.TimeoutExpired as exc:
            lines, tail = (exc.stdout or b"").decode().splitlines(), "worker hung"
        seen = {row["seed"] for row in map(json.loads, lines) if not _count(summary, row)}
        missing = sorted(set(range(start, start + count)) - seen)
        if missing:  # the case in flight killed its worker; go on after it
            _count(summary, {"seed": missing[0], "outcome": "failure", "detail": f"worker died: {tail}",
                             "seconds": 0.0})
            start = missing[0] + 1
        else:
            start += count
    return summary


def _count(summary: dict, row: dict) -> None:
    """Add one case's row to the summary."""
    summary["cases"] += 1
    summary[row["outcome"]] += 1
    if row["seconds"] > summary["slowest"][0]:
        summary["slowest"] = (row["seconds"], row["seed"])
    if row["outcome"] == "failure":
        summary["failures"].append((row["seed"], row["detail"]))


def _campaign() -> int:
    totals = {"model": int(os.environ.get("SMOE_FUZZ_CASES", 20000)),
              "image": int(os.environ.get("SMOE_FUZZ_IMAGES", os.environ.get("SMOE_FUZZ_CASES", 5000))),
              "bitstream": int(os.environ.get("SMOE_FUZZ_BITSTREAMS", 50000))}
    failed = 0
    for kind, cases in totals.items():
        began = time.perf_counter()
        s = run(kind, cases)
        failed += s["failure"]
        print(f"{kind}: {s['cases']} cases, {s['valid']} valid, {s['clean']} clean errors, {s['failure']} failures; "
              f"slowest case {s['slowest'][1]} took {s['slowest'][0]:.2f} s; {time.perf_counter() - began:.0f} s in all")
        for seed, detail in s["failures"][:20]:
            print(f"  case {seed}: {detail}")
    return 1 if failed else 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["worker"]:
        worker(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    elif sys.argv[1:2] == ["campaign"]:
        sys.exit(_campaign())
    else:
        sys.exit("usage: python tests/fuzzing.py campaign   (SMOE_FUZZ_CASES, SMOE_FUZZ_IMAGES set the counts)")
