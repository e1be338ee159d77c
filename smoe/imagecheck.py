"""Does an image file hold the pixels its header promises?  Checks made before decoding.

Pillow trusts a header's size and pads what the data do not cover: a TIFF
whose height field was raised loads with black rows below its only strip, a
GIF whose screen was enlarged loads with background around its frame, and a
PNG whose compressed stream ends early loads with black rows.  With
``ImageFile.LOAD_TRUNCATED_IMAGES`` off Pillow refuses data that end in the
middle of a stream, but not these.  :func:`check_image` refuses them:

* the header's size against the decompression-bomb limit
  (:data:`smoe.limits.MAX_IMAGE_PIXELS`), before anything is decoded;
* the decoder tiles of the first frame must cover the whole image;
* a PNG's compressed stream must inflate to exactly the bytes its header
  implies (counted in chunks, nothing kept);
* a JPEG must decode without a recoverable error in libjpeg-turbo's strict
  mode (through simplejpeg): libjpeg pads a short scan and only warns.

:func:`pillow_warnings` turns Pillow's warnings about truncated data into
errors and lets the others through.  All problems raise ``ValueError`` with a
one-line message without the file name; :mod:`smoe.imageio` adds it.

Examples
--------
>>> import io
>>> import simplejpeg
from PIL import Image
>>> buffer = io.BytesIO()
>>> Image.new("L", (8, 4)).save(buffer, "PNG")
>>> check_image(Image.open(buffer), buffer.getvalue())
"""

from __future__ import annotations

import contextlib
import struct
import warnings
import zlib

import simplejpeg
from PIL import Image

from .limits import MAX_IMAGE_PIXELS, check_pixels

__all__ = ["check_image", "pillow_warnings"]

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
# Adam7 passes: (first row, first column, row step, column step).
_ADAM7 = ((0, 0, 8, 8), (0, 4, 8, 8), (4, 0, 8, 4), (0, 2, 4, 4), (2, 0, 4, 2), (0, 1, 2, 2), (1, 0, 2, 1))
_CHUNK = 1 << 20
#: simplejpeg output colour space for a JPEG colour space (anything else decodes to RGB).
_JPEG_TARGET = {"Gray": "GRAY", "CMYK": "CMYK", "YCCK": "CMYK"}


def check_image(image: Image.Image, data: bytes) -> None:
    """Refuse an opened (not yet decoded) image whose data cannot fill its header's size.

    Parameters
    ----------
    image : PIL.Image.Image
        Fresh from ``Image.open``, tiles not yet decoded.
    data : bytes
        The whole file.

    Raises
    ------
    ValueError
        Too many pixels, tiles that leave part of the image uncovered, or a
        PNG stream of the wrong length.
    """
    width, height = image.size
    check_pixels(height, width, MAX_IMAGE_PIXELS, "image")
    tiles = list(getattr(image, "tile", None) or ())
    if tiles:
        covered = sum(_area(tile.extents, width, height) for tile in tiles)
        if covered < width * height:
            raise ValueError(f"pixel data cover {covered} of the {width}x{height} pixels the header claims "
                             "(truncated or inconsistent file)")
    if image.format == "PNG" and data.startswith(_PNG_SIGNATURE):
        _check_png_stream(data)
    if image.format == "JPEG":
        _check_jpeg_data(data)


def _area(extents, width: int, height: int) -> int:
    x0, y0, x1, y1 = (int(v) for v in extents)
    return max(0, min(x1, width) - max(x0, 0)) * max(0, min(y1, height) - max(y0, 0))


def _check_png_stream(data: bytes) -> None:
    """The IDAT stream must inflate to the filtered scanlines of the IHDR size."""
    width, height, depth, colour, _, _, interlace = struct.unpack_from(">IIBBBBB", data, 16)
    bits = depth * _PNG_CHANNELS.get(colour, 1)
    if interlace:
        passes = [(_ceil(height - r0, dr), _ceil(width - c0, dc)) for r0, c0, dr, dc in _ADAM7]
    else:
        passes = [(height, width)]
    expected = sum(rows * (1 + (cols * bits + 7) // 8) for rows, cols in passes if rows > 0 and cols > 0)
    got = _inflated_length(_png_idat(data), expected)
    if got < expected:
        rows = got * height // max(1, expected)
        raise ValueError(f"pixel data end after about {rows} of the {height} rows the header claims "
                         "(truncated or inconsistent file)")


def _check_jpeg_data(data: bytes) -> None:
    """libjpeg-turbo, in strict mode, must decode the whole frame without a recoverable error.

    libjpeg pads a scan that ends early with flat blocks and only warns, so a
    JPEG whose height field was raised, or whose data were cut inside the
    scan, would load at a size its data do not hold.  simplejpeg's strict mode
    turns those warnings into errors; the decoded pixels are discarded
    (Pillow decodes them again, so pixels do not depend on this check).
    """
    try:
        colourspace = simplejpeg.decode_jpeg_header(data)[2]
        simplejpeg.decode_jpeg(data, colorspace=_JPEG_TARGET.get(colourspace, "RGB"), strict=True)
    except ValueError as exc:
        raise ValueError(f"JPEG data do not fill the frame its header claims ({str(exc).strip()}; "
                         "truncated or inconsistent file)") from None


def _ceil(a: int, b: int) -> int:
    return -(-a // b)


def _png_idat(data: bytes):
    """The payloads of the IDAT chunks, in order."""
    pos = len(_PNG_SIGNATURE)
    while pos + 8 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, pos)
        if kind == b"IDAT":
            yield data[pos + 8:pos + 8 + length]
        elif kind == b"IEND":
            return
        pos += 12 + length


def _inflated_length(payloads, enough: int) -> int:
    """Bytes the zlib stream inflates to, counted in chunks and capped at ``enough``."""
    inflater, got = zlib.decompressobj(), 0
    for payload in payloads:
        pending = payload
        while pending and not inflater.eof:
            try:
                got += len(inflater.decompress(pending, _CHUNK))
            except zlib.error:
                return got  # Pillow reports the corrupt stream when it decodes
            pending = inflater.unconsumed_tail
            if got >= enough:
                return got
        if inflater.eof:
            break
    return got


@contextlib.contextmanager
def pillow_warnings():
    """Raise ``ValueError`` for a Pillow warning about truncated data; re-issue the others.

    Pillow's decompression-bomb warning is dropped: :func:`check_image`
    applies the project's own limit.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    for warning in caught:
        if issubclass(warning.category, Image.DecompressionBombWarning):
            continue
        text = " ".join(str(warning.message).split())
        if "truncat" in text.lower():
            raise ValueError(f"truncated image data ({text})")
        warnings.warn(warning.message, warning.category, stacklevel=3)
