"""Image encoders of our own, for what Pillow cannot write.

Pillow writes 16-bit samples only for grey images, refuses rows of more than
about 89 megapixels of RGB and spends more time choosing PNG filters than it
saves in bytes.  :func:`png` writes 8- or 16-bit PNG files of any size,
filtering in row bands so that temporaries stay small; :func:`tiff16` writes an
uncompressed 16-bit baseline TIFF.

Examples
--------
>>> import numpy as np
>>> png(np.zeros((2, 3, 1), np.uint8))[:8]
b'\\x89PNG\\r\\n\\x1a\\n'
"""

from __future__ import annotations

import struct
import zlib

import numpy as np

__all__ = ["png", "tiff16", "BAND_SAMPLES"]

#: Samples filtered and compressed at a time (whole rows, at least one).
BAND_SAMPLES = 1 << 20


def png(codes: np.ndarray, level: int = 6) -> bytes:
    """(H, W, C) uint8 or uint16, C in {1, 3} -> bytes of a PNG of that depth, filtered in row bands.

    Every row gets the "Sub" filter and the stream is zlib at ``level``;
    temporaries stay one band of about :data:`BAND_SAMPLES` samples plus the
    compressed output, so rows of any width (a 1 x 10**8 render) are written.

    Examples
    --------
    >>> import numpy as np
    >>> len(png(np.zeros((4, 4, 3), np.uint16))) > 0
    True
    """
    h, w, c = codes.shape
    depth = 8 * codes.dtype.itemsize
    rows = codes.astype(">u2" if depth == 16 else np.uint8, copy=False).reshape(h, w * c).view(np.uint8)
    # "Sub" filter on every row: each byte minus the same byte of the previous
    # pixel; smooth images compress far better than with no filter.
    step = c * depth // 8
    packer, parts = zlib.compressobj(level), []
    band = max(1, BAND_SAMPLES // rows.shape[1])
    for r0 in range(0, h, band):
        block = rows[r0:r0 + band]
        scanlines = np.empty((block.shape[0], block.shape[1] + 1), np.uint8)
        scanlines[:, 0] = 1
        scanlines[:, 1:step + 1] = block[:, :step]
        scanlines[:, step + 1:] = block[:, step:] - block[:, :-step]  # uint8 arithmetic wraps mod 256
        parts.append(packer.compress(scanlines))
    parts.append(packer.flush())
    header = struct.pack(">IIBBBBB", w, h, depth, 0 if c == 1 else 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", b"".join(parts))
        + _chunk(b"IEND", b"")
    )


def _chunk(kind: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


def tiff16(codes: np.ndarray) -> bytes:
    """(H, W, C) uint16, C in {1, 3} -> bytes of an uncompressed little-endian baseline TIFF."""
    h, w, c = codes.shape
    pixels = codes.astype("<u2").tobytes()
    if len(pixels) >= 2**32 - 4096:
        raise ValueError(f"image of {h}x{w}x{c} is too large for a 16-bit TIFF; write a PNG")
    short, long_, rational = 3, 4, 5
    n_tags = 13
    extra_at = 8 + 2 + 12 * n_tags + 4
    bits_at = extra_at                      # BitsPerSample array when C > 2
    resolution_at = bits_at + 2 * c         # two RATIONALs of 72/1
    data_at = resolution_at + 16
    bits_value = struct.pack("<H", 16) * c if c <= 2 else struct.pack("<I", bits_at)
    tags = [
        (256, long_, 1, struct.pack("<I", w)),
        (257, long_, 1, struct.pack("<I", h)),
        (258, short, c, bits_value),
        (259, short, 1, struct.pack("<H", 1)),                   # no compression
        (262, short, 1, struct.pack("<H", 1 if c == 1 else 2)),  # BlackIsZero / RGB
        (273, long_, 1, struct.pack("<I", data_at)),
        (277, short, 1, struct.pack("<H", c)),
        (278, long_, 1, struct.pack("<I", h)),                   # one strip
        (279, long_, 1, struct.pack("<I", len(pixels))),
        (282, rational, 1, struct.pack("<I", resolution_at)),
        (283, rational, 1, struct.pack("<I", resolution_at + 8)),
        (284, short, 1, struct.pack("<H", 1)),                   # interleaved samples
        (296, short, 1, struct.pack("<H", 1)),                   # no absolute unit
    ]
    assert len(tags) == n_tags
    ifd = struct.pack("<H", n_tags) + b"".join(
        struct.pack("<HHI", tag, kind, count) + value.ljust(4, b"\0") for tag, kind, count, value in tags
    ) + struct.pack("<I", 0)
    extra = struct.pack("<H", 16) * c + struct.pack("<IIII", 72, 1, 72, 1)
    out = b"II*\0" + struct.pack("<I", 8) + ifd + extra
    assert len(out) == data_at
    return out + pixels
