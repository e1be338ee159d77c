"""Reading and writing image files.

Images live in memory as float32 arrays in ``[0, 1]``: ``(H, W)`` for grey,
``(H, W, 3)`` for RGB.  Files are decoded with Pillow (PNG, JPEG, TIFF, BMP and
whatever else Pillow reads), 8 or 16 bits per sample; 16-bit samples are
divided by 65535, 8-bit ones by 255.

Pillow keeps 16-bit *colour* images only at 8 bits per sample, so this module
recovers the full 16 bits of RGB/RGBA PNG and TIFF files itself (see
:func:`_decode_wide`) and writes PNG (8 and 16 bits) and 16-bit TIFF files with
small encoders of its own (:mod:`smoe.encoders`); the PNG one is also about twice
as fast as Pillow's, and writes rows of any width in bands.

Converting colour to grey uses the ITU-R BT.601 luma weights
``Y = 0.299 R + 0.587 G + 0.114 B`` (the weights of JPEG and of Pillow's ``"L"``
conversion), applied to the float samples.

Files are written through :func:`smoe.atomic.atomic_write_bytes`: readers
never see a half-written file, and a failed write leaves the old file intact.
"""

from __future__ import annotations

import importlib.resources
import io
import re
import sys
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from . import encoders
from .atomic import atomic_write_bytes
from .imagecheck import check_image, pillow_warnings
from .limits import MAX_IMAGE_BYTES, read_regular
from .validate import one_line

__all__ = [
    "ImageError",
    "read_image",
    "decode_image",
    "write_image",
    "encode_image",
    "default_image_path",
    "to_grey",
    "LUMA_BT601",
]

#: ITU-R BT.601 luma weights for R, G, B.
LUMA_BT601 = (0.299, 0.587, 0.114)

#: File suffix -> Pillow format name, for writing.
_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".tif": "TIFF", ".tiff": "TIFF", ".bmp": "BMP"}
_FORMATS_16 = ("PNG", "TIFF")
#: zlib level of PNGs up to :data:`PNG_FAST_ABOVE_PIXELS`, and of larger ones.  PNG is
#: lossless at any level; level 1 takes a fifth of the time of 6 on a 4K image for a file
#: ~20 % larger, which matters where a fit's outputs should cost a small part of the fit.
PNG_COMPRESS_LEVELS = (6, 1)
PNG_FAST_ABOVE_PIXELS = 1_000_000
# At most this many samples are quantized at a time: the float64 work stays in
# cache instead of two full-size float64 copies of a 4K image.
_QUANTIZE_CHUNK_SAMPLES = 1 << 18
_EXIF_ORIENTATION = 0x0112

# EXIF orientation -> operation that turns the stored pixels upright, the
# same table as PIL.ImageOps.exif_transpose, written for NumPy arrays so that
# the 16-bit path can use it too.
_UPRIGHT = {
    2: lambda a: a[:, ::-1],                      # mirror left-right
    3: lambda a: a[::-1, ::-1],                   # turn 180 degrees
    4: lambda a: a[::-1],                         # mirror top-bottom
    5: lambda a: a.swapaxes(0, 1),                # transpose
    6: lambda a: np.rot90(a, -1),                 # turn 90 degrees clockwise
    7: lambda a: a[::-1, ::-1].swapaxes(0, 1),    # transpose about the anti-diagonal
    8: lambda a: np.rot90(a, 1),                  # turn 90 degrees counter-clockwise
}


class ImageError(ValueError):
    """An image file cannot be read or written; the message says why."""


# ===================================================================== reading
def read_image(path, *, mode: str | None = None) -> np.ndarray:
    """Read an image file as float32 samples in ``[0, 1]``.

    Parameters
    ----------
    path : str or os.PathLike
        Any format Pillow decodes (PNG, JPEG, TIFF, BMP, ...), 8 or 16 bits per
        sample.  An EXIF orientation tag is applied, so the array is upright.
    mode : {None, "grey", "rgb"}
        ``None`` keeps the file's colour type; ``"grey"`` converts colour with
        the BT.601 luma weights; ``"rgb"`` repeats a grey channel three times.

    Returns
    -------
    (H, W) float32 array for grey, (H, W, 3) float32 array for colour.  An
    alpha channel is dropped with a warning; palette images become RGB (or grey
    when the palette is grey).

    Raises
    ------
    ImageError
        Missing, empty, truncated, corrupt or non-image file; image with no
        pixels; floating-point image with non-finite samples.
    """
    if mode not in (None, "grey", "rgb"):
        raise ValueError(f"mode must be None, 'grey' or 'rgb', got {mode!r}")
    path = Path(path)
    data = _read_bytes(path)
    image = decode_image(data, path)
    if mode == "grey" and image.ndim == 3:
        image = to_grey(image)
    elif mode == "rgb" and image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    return np.ascontiguousarray(image, dtype=np.float32)


def to_grey(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) colour -> (H, W) grey with the ITU-R BT.601 luma weights."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"to_grey needs an (H, W, 3) array, got shape {image.shape}")
    weights = np.asarray(LUMA_BT601, dtype=np.float64)
    return (image.astype(np.float64) @ weights).astype(np.float32)


def _read_bytes(path: Path) -> bytes:
    try:
        return read_regular(path, MAX_IMAGE_BYTES, "an image file")
    except FileNotFoundError:
        raise ImageError(f"no such file: {path}") from None
    except ValueError as exc:
        raise ImageError(f"{path}: {exc}") from None


def _open(data: bytes, path: Path) -> Image.Image:
    """Open (not yet decode) an image and check its header; Pillow's errors become ImageError."""
    try:
        image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        raise ImageError(f"{path}: image too large to decode safely ({exc})") from exc
    except Image.UnidentifiedImageError as exc:
        raise ImageError(
            f"{path}: not an image file Pillow can read (unknown format, broken header or 0 pixels)"
        ) from exc
    except Exception as exc:  # Pillow reports broken headers through many exception types
        raise ImageError(f"{path}: corrupt image header ({one_line(exc)})") from exc
    try:
        check_image(image, data)
    except ValueError as exc:
        raise ImageError(f"{path}: {exc}") from exc
    return image


def _load(image: Image.Image, path: Path) -> None:
    """Decode all pixel data; a truncated or corrupt stream raises ImageError.

    ``ImageFile.LOAD_TRUNCATED_IMAGES`` stays off, so Pillow refuses partial
    data instead of padding it with grey.
    """
    try:
        image.load()
    except Exception as exc:  # OSError for truncation, others for corrupt streams
        raise ImageError(f"{path}: truncated or corrupt image data ({one_line(exc)})") from exc


def decode_image(data: bytes, path: Path) -> np.ndarray:
    """Decode the bytes of an image file, as :func:`read_image` does after reading them.

    Parameters
    ----------
    data : bytes
        The whole file.
    path : pathlib.Path
        Where the bytes came from; only used in messages.

    Returns
    -------
    (H, W) or (H, W, 3) float array in [0, 1], turned upright by its EXIF orientation.

    Raises
    ------
    ImageError
        For anything a bad file can cause: a header above the pixel limit,
        data that do not fill the header's size (:mod:`smoe.imagecheck`),
        truncated or corrupt data, and any exception Pillow raises on it.
    """
    try:
        with pillow_warnings():
            return _decode(data, path)
    except (ImageError, MemoryError):
        raise
    except ValueError as exc:  # a truncation warning from pillow_warnings
        raise ImageError(f"{path}: {exc}") from exc
    except Exception as exc:  # crafted files make Pillow raise TypeError, struct.error, ... from anywhere
        raise ImageError(f"{path}: corrupt image ({one_line(exc)})") from exc


def _decode(data: bytes, path: Path) -> np.ndarray:
    image = _open(data, path)
    if image.width * image.height == 0:
        raise ImageError(f"{path}: empty image ({image.width}x{image.height}, 0 pixels)")
    # Before anything else touches `image`: reading EXIF may decode a PNG,
    # which empties the tile list that _decode_wide inspects.
    samples, fallback = _decode_wide(data, image)
    if samples is None:
        samples = _decode_pillow(image, path)
        if fallback:
            warnings.warn(f"{path}: {fallback}", stacklevel=3)
    orientation = _orientation(image)
    if getattr(image, "is_animated", False):  # not n_frames: counting may walk a million frames
        warnings.warn(f"{path}: file holds several frames; only the first is used", stacklevel=3)
    if samples.ndim == 3 and samples.shape[2] in (2, 4):
        warnings.warn(f"{path}: alpha channel dropped (smoe models colour only)", stacklevel=3)
        samples = samples[:, :, :-1]
    if samples.ndim == 3 and samples.shape[2] == 1:
        samples = samples[:, :, 0]
    if orientation in _UPRIGHT:
        samples = _UPRIGHT[orientation](samples)
    if not np.all(np.isfinite(samples)):
        raise ImageError(f"{path}: image has non-finite (NaN or infinite) samples")
    return samples


def _orientation(image: Image.Image) -> int:
    try:
        return int(image.getexif().get(_EXIF_ORIENTATION, 1))
    except Exception:  # a broken EXIF block should not make the pixels unreadable
        return 1


def _decode_pillow(image: Image.Image, path: Path) -> np.ndarray:
    """Decode with Pillow's own conversions; returns float samples in [0, 1]."""
    image = _canonical_mode(image, path)
    mode = image.mode
    if mode.startswith("I;16"):
        # Pillow may hand back big-endian samples ("I;16B"); the cast fixes the byte order.
        return np.asarray(image).astype(np.float32) / 65535.0
    if mode == "I":
        # 32-bit integer container; Pillow uses it for 16-bit grey data.
        values = np.asarray(image)
        if values.size and (values.min() < 0 or values.max() > 65535):
            raise ImageError(f"{path}: integer samples outside 0..65535 are not supported; save 8 or 16 bits")
        return values.astype(np.float32) / 65535.0
    if mode == "F":
        values = np.asarray(image, dtype=np.float32)
        if not np.all(np.isfinite(values)):
            raise ImageError(f"{path}: image has non-finite (NaN or infinite) samples")
        if values.size and (values.min() < 0 or values.max() > 1):
            warnings.warn(f"{path}: floating-point samples outside [0, 1] were clipped", stacklevel=4)
            values = np.clip(values, 0.0, 1.0)
        return values
    return np.asarray(image).astype(np.float32) / 255.0


def _canonical_mode(image: Image.Image, path: Path) -> Image.Image:
    """Decode and bring the image to one of L, LA, RGB, RGBA, I;16*, I, F."""
    _load(image, path)
    mode = image.mode
    if mode in ("L", "LA", "RGB", "RGBA", "I", "F") or mode.startswith("I;16"):
        return image
    if mode == "1":
        return image.convert("L")
    if mode == "P":
        if "transparency" in image.info:
            return image.convert("RGBA")
        return image.convert("L") if _grey_palette(image) else image.convert("RGB")
    if mode in ("PA", "RGBa", "RGBX"):
        return image.convert("RGBA" if mode != "RGBX" else "RGB")
    if mode == "La":
        return image.convert("LA")
    return image.convert("RGB")  # CMYK, YCbCr, LAB, HSV, ...


def _grey_palette(image: Image.Image) -> bool:
    """True when every palette entry the image uses has R = G = B."""
    palette = np.asarray(image.getpalette("RGB") or [], dtype=np.uint8).reshape(-1, 3)
    used = np.unique(np.asarray(image))
    used = used[used < len(palette)]
    entries = palette[used]
    return bool(np.all(entries == entries[:, :1]))


_WIDE_RAWMODE = re.compile(r"(RGB|RGBA|RGBX|LA);16([BLN])")


def _decode_wide(data: bytes, image: Image.Image) -> tuple[np.ndarray | None, str | None]:
    """Full-precision decode of 16-bit colour (and grey+alpha) images.

    Pillow decodes such files to 8-bit modes, keeping only the high byte of each
    sample.  Its decoders can still deliver the low byte: the unpacker for a
    big-endian rawmode (``"RGB;16B"``) keeps the first byte of each sample, the
    little-endian one (``"RGB;16L"``) the second, and both see the same
    bytes-per-pixel, so the PNG/TIFF filters undo correctly.  Decoding twice and
    joining the bytes gives the 16-bit samples.  Grey+alpha (``"LA;16B"``, 4
    bytes a pixel) decodes exactly through the plain 8-bit ``"RGBA"`` rawmode.

    Returns
    -------
    (samples, None)
        Float samples in [0, 1] for such a file.
    (None, None)
        Not such a file; Pillow's own decode is the right one.
    (None, reason)
        Such a file, but the trick failed (a truncated file, or Pillow
        internals other than expected); Pillow's own 8-bit decode should be
        used, and ``reason`` reported if that one succeeds.
    """
    rawmodes = {_rawmode(tile) for tile in image.tile}
    match = _WIDE_RAWMODE.fullmatch(rawmodes.pop() or "") if len(rawmodes) == 1 else None
    if match is None:
        return None, None
    kind, order = match.groups()
    try:
        if kind == "LA":
            raw = _decode_with_rawmode(data, "RGBA").astype(np.uint16)
            words = raw[:, :, 0::2] * 256 + raw[:, :, 1::2]
        else:
            first = _decode_with_rawmode(data, f"{kind};16B").astype(np.uint16)
            second = _decode_with_rawmode(data, f"{kind};16L").astype(np.uint16)
            if order == "N":  # libtiff hands over samples in the machine's byte order
                order = "L" if sys.byteorder == "little" else "B"
            high, low = (first, second) if order == "B" else (second, first)
            words = (high * 256 + low)[:, :, :3 if kind == "RGBX" else None]
    except Exception as exc:  # any failure: let Pillow's plain decode decide
        return None, f"16-bit colour decoded at 8-bit precision ({one_line(exc)})"
    return words.astype(np.float32) / 65535.0, None


def _rawmode(tile) -> str | None:
    args = tile.args
    if isinstance(args, str):
        return args
    if isinstance(args, tuple) and args and isinstance(args[0], str):
        return args[0]
    return None


def _decode_with_rawmode(data: bytes, rawmode: str) -> np.ndarray:
    image = Image.open(io.BytesIO(data))
    tiles = []
    for tile in image.tile:
        args = rawmode if isinstance(tile.args, str) else (rawmode, *tile.args[1:])
        tiles.append(tile._replace(args=args))
    image.tile = tiles
    image.load()
    return np.asarray(image)


# ===================================================================== writing
def write_image(path, image, *, bits: int = 8) -> None:
    """Write an image file atomically; the format follows the suffix.

    Takes and refuses (with :class:`ImageError`) what :func:`encode_image` does.

    Examples
    --------
    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "grey.png"
    >>> write_image(path, np.full((4, 6), 0.5))
    >>> read_image(path).shape
    (4, 6)
    """
    atomic_write_bytes(path, encode_image(image, path, bits=bits))


def encode_image(image, name, *, bits: int = 8) -> bytes:
    """The bytes of an image file whose format follows the suffix of ``name``.

    Parameters
    ----------
    image : (H, W), (H, W, 1) or (H, W, 3) array (or CPU tensor)
        Float samples; values are clipped to ``[0, 1]`` and rounded to the
        nearest code.
    name : str or os.PathLike
        ``.png``, ``.jpg``/``.jpeg``, ``.tif``/``.tiff`` or ``.bmp`` file name
        (or just the suffix); it also names the image in error messages.
    bits : {8, 16}
        16 bits per sample is available for PNG and TIFF.  JPEG is written at
        quality 95 without chroma subsampling.

    Raises
    ------
    ImageError
        Unknown suffix, unsupported bit depth, bad shape, empty or non-finite image.

    Examples
    --------
    >>> encode_image(np.zeros((2, 2)), ".png")[:4]
    b'\\x89PNG'
    """
    path = Path(name)
    suffix = path.suffix or str(name)
    fmt = _FORMATS.get(suffix.lower())
    if fmt is None:
        raise ImageError(
            f"{path}: unknown image suffix {suffix!r}; use one of {', '.join(sorted(_FORMATS))}"
        )
    if bits not in (8, 16):
        raise ImageError(f"bits must be 8 or 16, got {bits!r}")
    if bits == 16 and fmt not in _FORMATS_16:
        raise ImageError(f"{path}: 16-bit output needs .png or .tif/.tiff, not {suffix!r}")
    codes = _quantize(_as_hwc(image, path), bits, path)
    if fmt == "PNG":
        return encoders.png(codes, _png_level(codes))
    if bits == 16:
        try:
            return encoders.tiff16(codes)
        except ValueError as exc:
            raise ImageError(f"{path}: {exc}") from exc
    return _pillow_encode(codes, fmt)


def _as_hwc(image, path: Path) -> np.ndarray:
    """Validate and reshape to (H, W, C) real numbers with C in {1, 3} (no copy); finiteness is
    checked by :func:`_quantize`, band by band."""
    if hasattr(image, "detach"):  # a torch tensor; avoid importing torch here
        image = image.detach().cpu().numpy()
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] not in (1, 3):
        raise ImageError(f"{path}: image must have shape (H, W), (H, W, 1) or (H, W, 3), got {image.shape}")
    if image.shape[0] * image.shape[1] == 0:
        raise ImageError(f"{path}: cannot write an empty image of shape {image.shape}")
    if not np.issubdtype(image.dtype, np.number) or np.issubdtype(image.dtype, np.complexfloating):
        raise ImageError(f"{path}: image must hold real numbers, got dtype {image.dtype}")
    return image


def _quantize(image: np.ndarray, bits: int, path: Path) -> np.ndarray:
    """Nearest codes of (H, W, C) samples in [0, 1] (clipped), computed in float64 a band at a time.

    Bands are runs of the flattened samples, not rows, so that a single row of
    10**8 pixels needs no full-size float64 copy either; non-finite samples
    are refused.
    """
    top = (1 << bits) - 1
    flat = np.ascontiguousarray(image).reshape(-1)
    codes = np.empty(flat.size, np.uint8 if bits == 8 else np.uint16)
    for start in range(0, flat.size, _QUANTIZE_CHUNK_SAMPLES):
        block = flat[start:start + _QUANTIZE_CHUNK_SAMPLES].astype(np.float64)
        if not np.all(np.isfinite(block)):
            raise ImageError(f"{path}: image has NaN or infinite values; refusing to write it")
        np.clip(block, 0.0, 1.0, out=block)
        block *= top
        codes[start:start + _QUANTIZE_CHUNK_SAMPLES] = np.rint(block, out=block)
    return codes.reshape(image.shape)


def _png_level(codes: np.ndarray) -> int:
    small, large = PNG_COMPRESS_LEVELS
    return large if codes.shape[0] * codes.shape[1] > PNG_FAST_ABOVE_PIXELS else small


def _pillow_encode(codes: np.ndarray, fmt: str) -> bytes:
    pixels = codes[:, :, 0] if codes.shape[2] == 1 else codes
    options = {"quality": 95, "subsampling": 0} if fmt == "JPEG" else {}
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt, **options)
    return buffer.getvalue()




# ================================================================ demo image
def default_image_path() -> Path:
    """Path of the bundled demo image (``smoe/data/default.png``).

    Kodak image 23 (the parrots) halved to 384 x 256 RGB; its origin is in
    ``smoe/data/README.md``.
    """
    resource = importlib.resources.files("smoe").joinpath("data", "default.png")
    path = Path(str(resource))
    if not path.is_file():
        raise FileNotFoundError(f"bundled demo image not found at {path}; reinstall smoe")
    return path
