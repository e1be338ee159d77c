"""Regression tests for the reproducers of issue 20 (files from strangers), numbered as there.

Each test builds the hostile file the issue describes and checks that smoe
refuses it with its documented error (``ModelFileError``, ``ImageError``, or
exit status 2 and one line from the CLI), promptly and without committing
memory.
"""

import io
import json
import os
import struct
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import fuzzing
from smoe.cli import main
from smoe.imageio import ImageError, read_image
from smoe.limits import MAX_KERNELS, MAX_OUTPUT_PIXELS
from smoe.fitted import FittedModel
from smoe.model import Model
from smoe.modelfile import ModelFileError, load_model, read_model_file, save_model

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def base():
    """Arrays, metadata and file bytes of a small valid model."""
    return fuzzing.base_members(0)[0]


def _write(tmp_path, data: bytes, name="m.smoe.npz") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def _refused(path, match):
    with pytest.raises(ModelFileError, match=match) as info:
        load_model(path)
    assert "\n" not in str(info.value) and str(path) in str(info.value)


def _cli_refuses(capsys, argv, match):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("smoe: error: "), err
    assert match in err


def _patched(data: bytes, signature: bytes, offset: int, value: int) -> bytes:
    at = data.index(signature) + offset
    return data[:at] + bytes([value]) + data[at + 1:]


def _in_subprocess(code: str, *, cap_mb: int | None = None, timeout: float = 120) -> dict:
    """Run ``code`` in a fresh Python after importing smoe; it prints a JSON line, returned as a dict.

    ``cap_mb`` caps the address space at that much above the size after the imports.
    """
    prelude = textwrap.dedent(f"""
        import json, resource, sys
        import smoe.modelfile, smoe.imageio, smoe.rasterizer
        def status_mb(field):  # VmHWM, not ru_maxrss: the latter keeps the parent's peak across exec
            return int(open("/proc/self/status").read().split(field + ":")[1].split()[0]) / 1024
        idle = status_mb("VmRSS")
        if {cap_mb!r} is not None:
            mapped = int(open("/proc/self/status").read().split("VmSize:")[1].split()[0]) * 1024
            resource.setrlimit(resource.RLIMIT_AS, (mapped + {cap_mb!r} * 2**20, resource.RLIM_INFINITY))
    """)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code)], capture_output=True, text=True,
                          env=env, timeout=timeout)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.splitlines()[-1])


_REFUSE_AND_MEASURE = """
    from smoe.modelfile import ModelFileError, load_model
    try:
        load_model(PATH)
        outcome = "loaded"
    except ModelFileError as exc:
        outcome = str(exc)
    print(json.dumps({"outcome": outcome, "above_idle_mb": status_mb("VmHWM") - idle}))
"""


def _refusal_cost(path: Path) -> dict:
    return _in_subprocess(f"PATH = {str(path)!r}\n" + textwrap.dedent(_REFUSE_AND_MEASURE), cap_mb=1024)


# ============================================================= 1: error types
@pytest.mark.parametrize("offset,value", [(10, 99), (6, 255)])
def test_1_unknown_compression_method_or_version(tmp_path, base, capsys, offset, value):
    path = _write(tmp_path, _patched(base["file"], b"PK\x01\x02", offset, value))
    _refused(path, "not supported|supports up to")
    _cli_refuses(capsys, ["info", str(path)], str(path))


def test_1_deeply_nested_meta(tmp_path, base, capsys):
    path = _write(tmp_path, fuzzing.model_file(base["arrays"], b"[" * 100_000 + b"]" * 100_000))
    _refused(path, "nests deeper")
    _cli_refuses(capsys, ["info", str(path)], "nests deeper")


def test_1_huge_integer_in_meta(tmp_path, base):
    text = json.dumps({**base["meta"], "settings": {"seed": 0}}).replace('"seed": 0', '"seed": ' + "7" * 5000)
    _refused(_write(tmp_path, fuzzing.model_file(base["arrays"], text.encode())), "digits")


# ======================================================== 2: unbounded frames
@pytest.mark.parametrize("height,width", [(10**19, 10**19), (64, 10**19), (200_000, 200_000),
                                          (1, MAX_OUTPUT_PIXELS + 1)])
def test_2_frame_above_the_output_limit(tmp_path, base, capsys, height, width):
    model = Model(*(torch.from_numpy(base["arrays"][k]) for k in ("mu", "chol", "pi", "experts")))
    with pytest.raises(ValueError, match="exceeds the limit"):
        save_model(tmp_path / "x.npz", FittedModel(model, (height, width)))
    path = _write(tmp_path, fuzzing.model_file(base["arrays"], {**base["meta"], "height": height, "width": width}))
    _refused(path, "exceeds the limit of 100 megapixels")
    _cli_refuses(capsys, ["render", str(path), "-o", str(tmp_path / "out.png")], "exceeds the limit")
    assert not (tmp_path / "out.png").exists()


def test_2_frame_at_the_output_limit_loads(tmp_path, base):
    path = _write(tmp_path, fuzzing.model_file(base["arrays"], {**base["meta"], "height": 1,
                                                                "width": MAX_OUTPUT_PIXELS}))
    assert load_model(path).width == MAX_OUTPUT_PIXELS


# ================================================================ 3: zip bombs
def _bomb(base, name: str, zeros: int) -> bytes:
    dims = {"mu": (zeros // 8, 2), "meta": (zeros,)}[name]
    header = fuzzing.npy_header_bytes("<f4" if name == "mu" else "|u1", dims)
    return fuzzing.model_file(base["arrays"], base["meta"], **{name: (header, zeros)})


@pytest.mark.parametrize("name,zeros,match", [("mu", 2 << 30, "more than the limit"),
                                              ("meta", 1 << 30, "exceeds the limit")])
def test_3_bomb_member_refused_before_inflating(tmp_path, base, name, zeros, match):
    path = _write(tmp_path, _bomb(base, name, zeros))
    assert path.stat().st_size < 3 << 20
    cost = _refusal_cost(path)
    assert match in cost["outcome"] and str(path) in cost["outcome"]
    assert cost["above_idle_mb"] <= 200


def test_3_consistent_bomb_with_a_bad_value_at_the_end(tmp_path, base):
    """The most kernels the limits allow, all zeros but one NaN in the last expert: checked while streaming."""
    n = MAX_KERNELS
    members = {}
    for name, columns in (("mu", (2,)), ("chol", (3,)), ("pi", ()), ("experts", (3,))):
        header = fuzzing.npy_header_bytes("<f4", (n, *columns))
        members[name] = (header, n * int(np.prod(columns, dtype=int)) * 4)
    ones = np.ones((n, 3), np.float32)  # chol must pass, so it is stored in full (compressed)
    ones[:, 1] = 0
    members["chol"] = fuzzing.npy_bytes(ones)
    experts = np.zeros((n, 3), np.float32)
    experts[-1, -1] = np.nan
    members["experts"] = fuzzing.npy_bytes(experts)
    meta = {**fuzzing.base_members(0)[1], "height": 4096, "width": 4096}
    path = _write(tmp_path, fuzzing.model_file({}, meta, **members))
    cost = _refusal_cost(path)
    assert f"kernel {n - 1}: experts is not finite" in cost["outcome"]
    assert cost["above_idle_mb"] <= 200


# ======================================================= 4: FIFOs and devices
@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
@pytest.mark.parametrize("argv,name", [(["info"], "f.npz"), (["fit", "-n", "4"], "f.png")])
def test_4_fifo_refused_at_once(tmp_path, argv, name):
    fifo = tmp_path / name
    os.mkfifo(fifo)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "smoe", *argv, str(fifo), *(["-o", str(tmp_path / "o")]
                           if argv[0] == "fit" else [])], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 2 and "FIFO" in done.stderr and done.stderr.count("\n") == 1, done.stderr


def test_4_device_refused_at_once(tmp_path, capsys):
    if not Path("/dev/zero").exists():
        pytest.skip("no /dev/zero")
    with pytest.raises(ImageError, match="character device"):
        read_image("/dev/zero")
    _cli_refuses(capsys, ["info", "/dev/zero"], "character device")
    _cli_refuses(capsys, ["fit", "/dev/zero", "-o", str(tmp_path / "out")], "character device")
    assert not (tmp_path / "out").exists()


# ============================================================ 5: absurd values
@pytest.mark.parametrize("name,value", [("experts", 1e38), ("pi", 3e38), ("mu", -1e16), ("chol", 1e15)])
def test_5_absurd_parameters_refused_at_load(tmp_path, base, capsys, name, value):
    arrays = {k: v.copy() for k, v in base["arrays"].items()}
    arrays[name].flat[3] = value
    path = _write(tmp_path, fuzzing.model_file(arrays, base["meta"]))
    kernel = np.unravel_index(3, arrays[name].shape)[0]
    _refused(path, f"kernel {kernel}: {name} holds .*beyond the limit")
    _cli_refuses(capsys, ["render", str(path), "-o", str(tmp_path / "o.png")], "beyond the limit")


def test_5_parameters_below_the_limit_render_finite(tmp_path, base):
    arrays = {k: v.copy() for k, v in base["arrays"].items()}
    for name in ("mu", "chol", "pi", "experts"):
        arrays[name].flat[::5] = 9.99e14
    fitted, meta = read_model_file(_write(tmp_path, fuzzing.model_file(arrays, base["meta"])))
    model = fitted.model
    for dtype in (torch.float32, torch.float64):
        for mode in ("smoe", "rbf"):
            pixels = smoe_render(model.to(dtype=dtype), meta, mode)
            assert torch.isfinite(pixels).all()


def smoe_render(model, meta, mode):
    from smoe.rasterizer import render

    with torch.no_grad():
        return render(model, meta["height"], meta["width"], mode=mode, scope=meta["scope"])


def test_5_long_npy_header_is_not_called_pickled(tmp_path, base):
    mu = base["arrays"]["mu"]
    header = fuzzing.npy_header_bytes(mu.dtype.str, mu.shape, pad_to=20_500)
    path = _write(tmp_path, fuzzing.model_file(base["arrays"], base["meta"], mu=header + mu.tobytes()))
    with pytest.raises(ModelFileError) as info:
        load_model(path)
    assert "header of" in str(info.value) and "pickled" not in str(info.value)


# ======================================================= 6: TIFF tag counts
def test_6_tiff_with_a_bad_tag_count(tmp_path):
    buffer = io.BytesIO()
    codes = (np.random.default_rng(0).random((16, 16, 3)) * 255).astype(np.uint8)
    Image.fromarray(codes).save(buffer, "TIFF")
    data = bytearray(buffer.getvalue())
    data[130] = 1  # a count inside the first directory: Pillow's frame counting raised TypeError
    path = _write(tmp_path, bytes(data), "bad.tif")
    with pytest.warns(UserWarning, match="several frames"):  # the frames are no longer counted
        assert read_image(path).shape == (16, 16, 3)


def test_6_any_pillow_exception_becomes_image_error(tmp_path, monkeypatch):
    path = tmp_path / "ok.png"
    Image.new("RGB", (8, 8)).save(path)

    def broken(self):
        raise TypeError("Missing dimensions")

    monkeypatch.setattr(Image.Image, "getexif", broken)
    monkeypatch.setattr("smoe.imageio._orientation", lambda image: image.getexif())
    with pytest.raises(ImageError, match="corrupt image .*Missing dimensions"):
        read_image(path)


# ============================================== 7: truncated pixel data pads
def _png(width: int, height: int, rows: int) -> bytes:
    raw = b"".join(b"\0" + bytes(range(width)) for _ in range(rows))

    def chunk(kind, payload):
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw))
            + chunk(b"IEND", b""))


def test_7_png_with_fewer_rows_than_its_header(tmp_path, capsys):
    path = _write(tmp_path, _png(64, 100_000, 64), "tall.png")
    with pytest.raises(ImageError, match="end after about 64 of the 100000 rows"):
        read_image(path)
    _cli_refuses(capsys, ["fit", str(path), "-o", str(tmp_path / "out")], "100000 rows")
    assert read_image(_write(tmp_path, _png(64, 64, 64), "ok.png")).shape == (64, 64)


@pytest.mark.parametrize("height", [2_555_968, 100_000, 65])
def test_7_tiff_with_a_patched_height(tmp_path, height):
    buffer = io.BytesIO()
    Image.fromarray(np.arange(64 * 64, dtype=np.uint8).reshape(64, 64)).save(buffer, "TIFF")
    data = buffer.getvalue()
    ifd = struct.unpack("<I", data[4:8])[0]
    for i in range(struct.unpack("<H", data[ifd:ifd + 2])[0]):
        entry = ifd + 2 + 12 * i
        if struct.unpack("<H", data[entry:entry + 2])[0] == 257:  # ImageLength
            data = fuzzing.patch_int(data, entry + 8, 4, height)
    path = _write(tmp_path, data, "tall.tif")
    with pytest.raises(ImageError, match="exceeds the limit|cover"):
        read_image(path)


@pytest.mark.parametrize("fmt", ["JPEG", "GIF"])
def test_7_jpeg_and_gif_with_raised_sizes(tmp_path, fmt):
    codes = (np.random.default_rng(1).random((64, 64, 3)) * 255).astype(np.uint8)
    buffer = io.BytesIO()
    picture = Image.fromarray(codes)
    (picture.convert("P") if fmt == "GIF" else picture).save(buffer, fmt)
    data = buffer.getvalue()
    if fmt == "JPEG":
        data = fuzzing.patch_int(data, data.index(b"\xff\xc0") + 5, 2, 60_000, ">")
    else:
        data = fuzzing.patch_int(data, 8, 2, 60_000)  # the logical screen, not the frame
    path = _write(tmp_path, data, "raised." + fmt.lower())
    with pytest.raises(ImageError, match="do not fill|cover"):
        read_image(path)


@pytest.mark.parametrize("progressive", [False, True])
@pytest.mark.parametrize("height", [65, 72, 96])
def test_7_jpeg_height_raised_a_little_is_refused(tmp_path, progressive, height):
    """A few rows more than the scan holds: libjpeg would pad them with flat blocks."""
    codes = (np.random.default_rng(2).random((64, 48, 3)) * 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(codes).save(buffer, "JPEG", quality=90, progressive=progressive)
    data = buffer.getvalue()
    frame = data.index(b"\xff\xc2" if progressive else b"\xff\xc0")
    path = _write(tmp_path, fuzzing.patch_int(data, frame + 5, 2, height, ">"), "short.jpg")
    with pytest.raises(ImageError, match="short.jpg: JPEG data do not fill"):
        read_image(path)


@pytest.mark.parametrize("mode", ["L", "RGB", "CMYK"])
@pytest.mark.parametrize("progressive", [False, True])
def test_7_complete_jpegs_still_load(tmp_path, mode, progressive):
    picture = Image.fromarray((np.random.default_rng(3).random((24, 40, 3)) * 255).astype(np.uint8)).convert(mode)
    path = tmp_path / "ok.jpg"
    picture.save(path, "JPEG", progressive=progressive)
    assert read_image(path).shape[:2] == (24, 40)


def test_2_png_written_in_bands_matches_one_pass(tmp_path, monkeypatch):
    """A 1 x 10**8 render is quantized and encoded in bands; bands change no code and no byte."""
    from smoe import encoders, imageio

    image = np.random.default_rng(3).random((5, 40, 3)).astype(np.float32) * 1.2 - 0.1
    imageio.write_image(tmp_path / "one.png", image)
    monkeypatch.setattr(imageio, "_QUANTIZE_CHUNK_SAMPLES", 7)
    monkeypatch.setattr(encoders, "BAND_SAMPLES", 50)  # bands of one row
    imageio.write_image(tmp_path / "bands.png", image)
    assert (tmp_path / "bands.png").read_bytes() == (tmp_path / "one.png").read_bytes()
    want = np.rint(np.clip(image.astype(np.float64), 0, 1) * 255)
    assert np.array_equal(np.rint(read_image(tmp_path / "bands.png") * 255), want)
