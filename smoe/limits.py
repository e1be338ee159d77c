"""Limits every reader checks before it commits memory or time to a file.

A file from a stranger can claim anything in its header: a frame of 10**19
pixels, a 2 GiB member that compresses to 2 MB, JSON nested a million deep.
The readers (:mod:`smoe.archive` and :mod:`smoe.modelfile` for model files,
:mod:`smoe.imageio` for images) compare such claims with the caps below first
and only then allocate, so that refusing a bad file takes little memory and
little time.  The checks raise ``ValueError`` with a one-line problem that the
caller prefixes with the file's name and turns into its own error type.

Examples
--------
>>> check_frame(480, 640)
>>> check_frame(10**19, 10**19)
Traceback (most recent call last):
...
ValueError: frame of 10000000000000000000x10000000000000000000 pixels exceeds the limit of 100 megapixels
"""

from __future__ import annotations

import errno
import json
import os
import re
import stat

import numpy as np

from .sizes import MAX_OUTPUT_PIXELS
from .validate import is_whole

__all__ = ["MAX_OUTPUT_PIXELS", "MAX_IMAGE_PIXELS", "MAX_IMAGE_BYTES", "MAX_KERNELS", "MAX_PARAMETER",
           "MAX_META_BYTES", "MAX_JSON_DEPTH", "MAX_INT_DIGITS", "check_frame", "check_pixels",
           "open_regular", "read_regular", "read_bounded", "load_json"]

# MAX_OUTPUT_PIXELS (smoe.sizes), the largest raster rendered, is also the largest frame a model file may claim.
#: Largest image (width x height, from its header) that is decoded: the decompression-bomb limit.
MAX_IMAGE_PIXELS = MAX_OUTPUT_PIXELS
#: Largest image file read into memory (a 100-megapixel 16-bit RGB TIFF takes 600 MB).
MAX_IMAGE_BYTES = 1 << 30
#: Most kernels a model file may hold: 2**24 float64 kernels take 1.2 GB, so that a bomb that claims
#: the most is still checked (inflated in chunks, never kept) in about a second.
MAX_KERNELS = 1 << 24
#: Largest magnitude of a stored parameter; beyond it float32 renders overflow (squared distances of
#: products of such values exceed 3.4e38), and no fitted model comes near it.
MAX_PARAMETER = 1e15
#: Largest JSON metadata of a model file, its deepest nesting and its longest integer.
MAX_META_BYTES = 1 << 20
MAX_JSON_DEPTH = 32
MAX_INT_DIGITS = 40

_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"', re.S)
_LONG_INT = re.compile(r"\d{%d,}" % (MAX_INT_DIGITS + 1))


def check_pixels(height: int, width: int, limit: int, what: str) -> None:
    """Refuse a ``height x width`` raster of more than ``limit`` pixels.

    Examples
    --------
    >>> check_pixels(100, 100, 10**6, "image")
    """
    if height * width > limit:
        raise ValueError(f"{what} of {width}x{height} pixels exceeds the limit of {limit // 1_000_000} megapixels")


def check_frame(height, width) -> None:
    """A model's fitted frame: positive whole numbers, at most :data:`MAX_OUTPUT_PIXELS` pixels.

    Examples
    --------
    >>> check_frame(1, 10**8)
    """
    for name, size in (("height", height), ("width", width)):
        if not (is_whole(size) and size > 0):
            raise ValueError(f"{name} must be a positive integer, got {size!r}")
    check_pixels(int(height), int(width), MAX_OUTPUT_PIXELS, "frame")


# ================================================================ regular files
def open_regular(path, what: str):
    """Open a regular file for binary reading; anything else is refused at once.

    A FIFO or a device would block or never end, so the file is opened without
    blocking and checked with ``fstat`` before a byte is read.

    Parameters
    ----------
    path : str or os.PathLike
    what : str
        What the file should be ("a model file", "an image file"), for messages.

    Returns
    -------
    A file object opened ``"rb"``.

    Raises
    ------
    FileNotFoundError
        No such file.
    ValueError
        A directory, FIFO, device or socket, or a file that cannot be read.

    Examples
    --------
    >>> open_regular("/dev/zero", "an image file")
    Traceback (most recent call last):
    ...
    ValueError: is a character device, not an image file
    """
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except FileNotFoundError:
        raise
    except IsADirectoryError:
        raise ValueError(f"is a directory, not {what}") from None
    except OSError as exc:
        raise ValueError(f"cannot read ({exc.strerror or exc}); check the file and its permissions") from None
    try:
        kind = _kind(os.fstat(fd).st_mode)
        if kind is not None:
            raise ValueError(f"is a {kind}, not {what}")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _kind(mode: int) -> str | None:
    """None for a regular file, else what the file is."""
    for test, name in ((stat.S_ISREG, None), (stat.S_ISDIR, "directory"), (stat.S_ISFIFO, "FIFO (named pipe)"),
                       (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"),
                       (stat.S_ISSOCK, "socket")):
        if test(mode):
            return name
    return "special file"


def read_bounded(handle, limit: int, what: str) -> bytes:
    """All bytes of an open file, refusing one of more than ``limit`` bytes without reading it all.

    Examples
    --------
    >>> import io
    >>> read_bounded(io.BytesIO(b"abc"), 10, "an image file")
    b'abc'
    """
    data = handle.read(limit + 1)
    if len(data) > limit:
        raise ValueError(f"file of more than {limit >> 20} MiB, too large for {what}; refusing to read it")
    return data


def read_regular(path, limit: int, what: str) -> bytes:
    """:func:`open_regular` then :func:`read_bounded`; an empty file is refused.

    Examples
    --------
    >>> read_regular("/no/such/file", 10, "an image file")
    Traceback (most recent call last):
    ...
    FileNotFoundError: [Errno 2] No such file or directory: '/no/such/file'
    """
    with open_regular(path, what) as handle:
        try:
            data = read_bounded(handle, limit, what)
        except OSError as exc:
            if exc.errno == errno.EISDIR:
                raise ValueError(f"is a directory, not {what}") from None
            raise ValueError(f"cannot read ({exc.strerror or exc}); check the file and its permissions") from None
    if not data:
        raise ValueError(f"empty file (0 bytes), not {what}")
    return data


# ======================================================================= JSON
def load_json(text: str):
    """Parse JSON whose size, nesting and integers are bounded.

    Python's parser recurses once per nesting level and converts integers of
    any length, so deep or huge documents are refused before it runs.

    Raises
    ------
    ValueError
        Too long, too deep, an integer of more than :data:`MAX_INT_DIGITS`
        digits, or not JSON (``json.JSONDecodeError``).

    Examples
    --------
    >>> load_json('{"a": [1, 2]}')
    {'a': [1, 2]}
    """
    if len(text) > MAX_META_BYTES:
        raise ValueError(f"JSON text of {len(text)} characters is longer than {MAX_META_BYTES}")
    bare = _STRINGS.sub('""', text)
    codes = np.frombuffer(bare.encode("utf-8", "replace"), dtype=np.uint8)
    steps = np.isin(codes, (ord("["), ord("{"))).astype(np.int64) - np.isin(codes, (ord("]"), ord("}")))
    if steps.size and int(np.cumsum(steps).max()) > MAX_JSON_DEPTH:
        raise ValueError(f"JSON nests deeper than {MAX_JSON_DEPTH} levels")
    if _LONG_INT.search(bare):
        raise ValueError(f"JSON holds a number of more than {MAX_INT_DIGITS} digits")
    return json.loads(text)
