"""Image files: decoding, encoding, error reporting and atomic writes."""

import os
import struct
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image, ImageOps

from smoe.imageio import (
    LUMA_BT601,
    ImageError,
    atomic_write,
    atomic_write_bytes,
    default_image_path,
    read_image,
    write_image,
)


def _random_image(shape, seed=0):
    return np.random.default_rng(seed).random(shape).astype(np.float32)


def _smooth_image(shape):
    """Gentle gradients, for lossy JPEG round trips."""
    h, w = shape[:2]
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    base = 0.5 + 0.3 * np.sin(3 * x) * np.cos(2 * y)
    if len(shape) == 2:
        return base.astype(np.float32)
    return np.stack([base, 1 - base, 0.5 * base + 0.2], axis=2).astype(np.float32)


def _png_bytes(codes, colour_type, bit_depth=16):
    """A minimal unfiltered PNG, to produce files Pillow cannot write (16-bit RGBA, grey+alpha)."""
    h, w = codes.shape[:2]
    dtype = ">u2" if bit_depth == 16 else np.uint8
    rows = codes.astype(dtype).reshape(h, -1).view(np.uint8)
    raw = np.concatenate([np.zeros((h, 1), np.uint8), rows], axis=1).tobytes()

    def chunk(kind, payload):
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    header = struct.pack(">IIBBBBB", w, h, bit_depth, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


# ---------------------------------------------------------------- round trips
LOSSLESS = [(".png", 8), (".png", 16), (".tif", 8), (".tif", 16), (".tiff", 16), (".bmp", 8)]


@pytest.mark.parametrize("suffix,bits", LOSSLESS)
@pytest.mark.parametrize("shape", [(17, 23), (17, 23, 3)])
def test_lossless_round_trip(tmp_path, suffix, bits, shape):
    image = _random_image(shape)
    path = tmp_path / f"x{suffix}"
    write_image(path, image, bits=bits)
    back = read_image(path)
    assert back.dtype == np.float32 and back.shape == shape
    step = 1.0 / ((1 << bits) - 1)
    assert np.abs(back - image).max() <= 0.5 * step + 1e-6
    # A second round trip is exact: codes survive unchanged.
    write_image(path, back, bits=bits)
    assert np.array_equal(read_image(path), back)


@pytest.mark.parametrize("suffix", [".png", ".tif"])
@pytest.mark.parametrize("channels", [1, 3])
def test_16_bit_keeps_low_byte(tmp_path, suffix, channels):
    # Codes that differ only in their low byte would collapse at 8-bit precision.
    codes = (np.arange(12 * 10 * channels) * 37 + 3).reshape(12, 10, channels) % 65536
    image = codes / 65535.0
    path = tmp_path / f"x{suffix}"
    write_image(path, image, bits=16)
    back = read_image(path)
    assert np.array_equal(np.rint(back * 65535).astype(np.int64), codes.squeeze())


def test_grey_3d_input_writes_grey(tmp_path):
    image = _random_image((9, 11, 1))
    write_image(tmp_path / "g.png", image)
    assert read_image(tmp_path / "g.png").shape == (9, 11)


@pytest.mark.parametrize("shape,suffix", [((40, 56), ".jpg"), ((40, 56, 3), ".jpeg")])
def test_jpeg_round_trip_close(tmp_path, shape, suffix):
    image = _smooth_image(shape)
    write_image(tmp_path / f"x{suffix}", image)
    back = read_image(tmp_path / f"x{suffix}")
    assert back.shape == shape
    assert np.abs(back - image).mean() < 0.01


def test_write_clips_and_rounds(tmp_path):
    image = np.array([[-0.5, 0.0, 0.5, 1.0, 7.0]])
    write_image(tmp_path / "c.png", image)
    back = read_image(tmp_path / "c.png")
    assert np.array_equal(np.rint(back * 255), [[0, 0, 128, 255, 255]])


@pytest.mark.parametrize("bits", [8, 16])
def test_large_png_is_quantized_in_blocks_and_compressed_fast(tmp_path, bits):
    """Above a megapixel: the same codes as one float64 pass over the image, at the fast zlib level."""
    from smoe import imageio

    image = np.random.default_rng(3).random((1001, 1013, 3), dtype=np.float32) * 1.2 - 0.1
    write_image(tmp_path / "big.png", image, bits=bits)
    top = (1 << bits) - 1
    want = np.rint(np.clip(image.astype(np.float64), 0.0, 1.0) * top)
    assert np.array_equal(np.rint(read_image(tmp_path / "big.png") * top), want)
    big = np.zeros((1001, 1000, 3), np.uint8)
    assert imageio._png_level(big) == imageio.PNG_COMPRESS_LEVELS[1] != imageio._png_level(big[:1000])


def test_write_accepts_tensor(tmp_path):
    torch = pytest.importorskip("torch")
    tensor = torch.rand(5, 6, 3, requires_grad=True)
    write_image(tmp_path / "t.png", tensor)
    assert read_image(tmp_path / "t.png").shape == (5, 6, 3)


# -------------------------------------------------------------- Pillow modes
def test_pillow_16_bit_grey(tmp_path):
    codes = np.array([[0, 1, 256, 65535]], dtype=np.uint16)
    Image.fromarray(codes).save(tmp_path / "g16.png")
    back = read_image(tmp_path / "g16.png")
    assert np.array_equal(back * np.float32(65535), codes.astype(np.float32))


def test_16_bit_tiff_from_other_writers(tmp_path):
    tifffile = pytest.importorskip("tifffile")
    codes = (np.arange(6 * 5 * 3) * 2999 % 65536).astype(np.uint16).reshape(6, 5, 3)
    for byteorder in "<>":
        for compression in (None, "zlib"):
            path = tmp_path / f"t{byteorder == '<'}{compression}.tif"
            tifffile.imwrite(path, codes, byteorder=byteorder, compression=compression, photometric="rgb",
                             rowsperstrip=2)
            back = read_image(path)
            assert np.array_equal(np.rint(back * 65535).astype(np.uint16), codes), (byteorder, compression)


def test_rgba_warns_and_drops_alpha(tmp_path):
    rgba = (np.random.default_rng(1).random((8, 9, 4)) * 255).astype(np.uint8)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    with pytest.warns(UserWarning, match="alpha"):
        back = read_image(tmp_path / "a.png")
    assert np.array_equal(back * np.float32(255), rgba[:, :, :3].astype(np.float32))


def test_grey_alpha_warns_and_stays_grey(tmp_path):
    la = (np.random.default_rng(2).random((8, 9, 2)) * 255).astype(np.uint8)
    Image.fromarray(la, "LA").save(tmp_path / "la.png")
    with pytest.warns(UserWarning, match="alpha"):
        back = read_image(tmp_path / "la.png")
    assert back.shape == (8, 9)


@pytest.mark.parametrize("colour_type,channels", [(6, 4), (4, 2)])
def test_16_bit_alpha_png(tmp_path, colour_type, channels):
    codes = (np.arange(5 * 4 * channels) * 4099 % 65536).astype(np.uint16).reshape(5, 4, channels)
    (tmp_path / "a16.png").write_bytes(_png_bytes(codes, colour_type))
    with pytest.warns(UserWarning, match="alpha"):
        back = read_image(tmp_path / "a16.png")
    assert np.array_equal(np.rint(back * 65535).astype(np.uint16), codes[:, :, :-1].squeeze())


def test_palette_becomes_rgb(tmp_path):
    rgb = Image.fromarray((_smooth_image((12, 14, 3)) * 255).astype(np.uint8))
    palette = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    palette.save(tmp_path / "p.png")
    back = read_image(tmp_path / "p.png")
    expected = np.asarray(palette.convert("RGB"), dtype=np.float32) / 255
    assert back.shape == (12, 14, 3)
    assert np.array_equal(back, expected)


def test_grey_palette_becomes_grey(tmp_path):
    grey = (np.arange(30) * 8).astype(np.uint8).reshape(5, 6)
    Image.fromarray(grey).convert("P").save(tmp_path / "pg.png")
    back = read_image(tmp_path / "pg.png")
    assert back.shape == (5, 6)
    assert np.array_equal(np.rint(back * 255), grey)


def test_palette_transparency_warns(tmp_path):
    image = Image.fromarray(np.array([[0, 1], [1, 0]], dtype=np.uint8), "P")
    image.putpalette([255, 0, 0, 0, 0, 255])
    image.save(tmp_path / "pt.png", transparency=0)
    with pytest.warns(UserWarning, match="alpha"):
        back = read_image(tmp_path / "pt.png")
    assert back.shape == (2, 2, 3)


def test_bilevel_becomes_grey(tmp_path):
    bits = np.array([[0, 255, 0], [255, 255, 0]], dtype=np.uint8)
    Image.fromarray(bits).convert("1").save(tmp_path / "b.png")
    assert np.array_equal(read_image(tmp_path / "b.png"), bits / 255)


def test_float_tiff(tmp_path):
    values = np.array([[0.0, 0.25], [0.5, 1.0]], dtype=np.float32)
    Image.fromarray(values, "F").save(tmp_path / "f.tif")
    assert np.array_equal(read_image(tmp_path / "f.tif"), values)


def test_float_tiff_non_finite_raises(tmp_path):
    values = np.array([[0.0, np.nan], [0.5, 1.0]], dtype=np.float32)
    Image.fromarray(values, "F").save(tmp_path / "nan.tif")
    with pytest.raises(ImageError, match="non-finite"):
        read_image(tmp_path / "nan.tif")


# ---------------------------------------------------------- EXIF orientation
@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation(tmp_path, orientation):
    pixels = (_smooth_image((16, 24, 3)) * 255).astype(np.uint8)
    pixels[:4, :4] = (255, 0, 0)  # a red top-left corner to follow
    image = Image.fromarray(pixels)
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / "o.jpg"
    image.save(path, exif=exif, quality=95)

    back = read_image(path)
    upright = ImageOps.exif_transpose(Image.open(path))
    assert np.array_equal(back, np.asarray(upright, dtype=np.float32) / 255)
    assert back.shape == ((24, 16, 3) if orientation >= 5 else (16, 24, 3))


def test_exif_orientation_6_rotates_clockwise(tmp_path):
    # Orientation 6: the stored top-left corner belongs at the top-right.
    pixels = np.zeros((16, 24), dtype=np.uint8)
    pixels[:8, :8] = 255
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(pixels).save(tmp_path / "r.jpg", exif=exif, quality=100)
    back = read_image(tmp_path / "r.jpg")
    assert back.shape == (24, 16)
    assert back[2, 13] > 0.9 and back[2, 2] < 0.1


# -------------------------------------------------------------- conversions
def test_mode_grey_uses_bt601(tmp_path):
    image = _random_image((6, 7, 3))
    write_image(tmp_path / "c.png", image, bits=16)
    colour = read_image(tmp_path / "c.png")
    grey = read_image(tmp_path / "c.png", mode="grey")
    assert grey.shape == (6, 7) and grey.dtype == np.float32
    np.testing.assert_allclose(grey, colour @ np.array(LUMA_BT601, dtype=np.float32), atol=1e-6)


def test_mode_rgb_repeats_grey(tmp_path):
    write_image(tmp_path / "g.png", _random_image((6, 7)))
    rgb = read_image(tmp_path / "g.png", mode="rgb")
    assert rgb.shape == (6, 7, 3)
    assert np.array_equal(rgb[:, :, 0], rgb[:, :, 2])
    assert np.array_equal(read_image(tmp_path / "g.png", mode="grey"), rgb[:, :, 1])


def test_bad_mode_argument(tmp_path):
    with pytest.raises(ValueError, match="mode"):
        read_image(default_image_path(), mode="cmyk")


# ------------------------------------------------------------ read failures
@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_truncated_file_raises(tmp_path, suffix):
    path = tmp_path / f"full{suffix}"
    write_image(path, _random_image((48, 64, 3)))
    data = path.read_bytes()
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match="truncated"):
        read_image(cut)


def test_truncated_16_bit_png_raises(tmp_path):
    path = tmp_path / "full.png"
    write_image(path, _random_image((48, 64, 3)), bits=16)
    data = path.read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "8-bit precision" fallback warning before the error
        with pytest.raises(ImageError, match="truncated"):
            read_image(tmp_path / "cut.png")


def test_text_file_raises(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("this is not an image\n")
    with pytest.raises(ImageError, match="not an image"):
        read_image(path)


def test_missing_file_raises(tmp_path):
    with pytest.raises(ImageError, match="no such file"):
        read_image(tmp_path / "nope.png")


def test_directory_raises(tmp_path):
    with pytest.raises(ImageError, match="directory"):
        read_image(tmp_path)


def test_empty_file_raises(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ImageError, match="empty"):
        read_image(tmp_path / "empty.png")


def test_zero_pixel_image_raises(tmp_path):
    (tmp_path / "zero.png").write_bytes(_png_bytes(np.zeros((3, 0), np.uint8), 0, bit_depth=8))
    with pytest.raises(ImageError, match="0 pixels"):
        read_image(tmp_path / "zero.png")


def test_error_messages_are_one_line(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    with pytest.raises(ImageError) as info:
        read_image(tmp_path / "bad.png")
    assert "\n" not in str(info.value)


# ----------------------------------------------------------- write failures
def test_write_unknown_suffix(tmp_path):
    with pytest.raises(ImageError, match="suffix"):
        write_image(tmp_path / "x.gif2", _random_image((4, 4)))


def test_write_16_bit_jpeg_refused(tmp_path):
    with pytest.raises(ImageError, match="16-bit"):
        write_image(tmp_path / "x.jpg", _random_image((4, 4)), bits=16)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_write_non_finite_refused(tmp_path, bad):
    image = _random_image((4, 4))
    image[1, 2] = bad
    with pytest.raises(ImageError, match="NaN"):
        write_image(tmp_path / "x.png", image)
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize("shape", [(4,), (4, 4, 2), (0, 4)])
def test_write_bad_shape_refused(tmp_path, shape):
    with pytest.raises(ImageError):
        write_image(tmp_path / "x.png", np.zeros(shape))


def test_write_bad_bits_refused(tmp_path):
    with pytest.raises(ImageError, match="bits"):
        write_image(tmp_path / "x.png", _random_image((4, 4)), bits=12)


# ------------------------------------------------------------- atomic write
def test_atomic_write_replaces(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with atomic_write(target) as handle:
        handle.write(b"new")
        assert target.read_bytes() == b"old"  # invisible until the body is done
    assert target.read_bytes() == b"new"
    assert os.listdir(tmp_path) == ["out.bin"]


def test_atomic_write_text(tmp_path):
    with atomic_write(tmp_path / "t.txt", "w") as handle:
        handle.write("grüße\n")
    assert (tmp_path / "t.txt").read_text(encoding="utf-8") == "grüße\n"


def test_atomic_write_failure_keeps_old_content(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_write(target) as handle:
            handle.write(b"half")
            raise RuntimeError("boom")
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["out.bin"]


def test_atomic_write_failure_creates_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_write(tmp_path / "new.bin") as handle:
            handle.write(b"half")
            raise RuntimeError("boom")
    assert os.listdir(tmp_path) == []


def test_atomic_write_keeps_permissions(tmp_path):
    target = tmp_path / "p.bin"
    target.write_bytes(b"old")
    os.chmod(target, 0o640)
    atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"new"
    assert (os.stat(target).st_mode & 0o777) == 0o640


# --------------------------------------------------------------- demo image
def test_default_image():
    path = default_image_path()
    assert path.is_file() and path.name == "default.png"
    image = read_image(path)
    assert image.shape == (256, 384, 3) and image.dtype == np.float32
    assert 0.0 <= image.min() and image.max() <= 1.0 and image.std() > 0.05
