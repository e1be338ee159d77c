"""The smoe command line, run in-process through ``main([...])`` on tiny images."""

import functools
import csv
import json
import struct
import os
import subprocess
import sys
import zlib

import numpy as np
import pytest
from PIL import Image

import smoe.fitting
from smoe import cli
from smoe.cli import main
from smoe.imageio import ImageError, read_image, write_image
from smoe.modelfile import ModelFileError, load_model, read_model_file
from smoe.outputs import FIT_OUTPUTS
from smoe.spec import FitSpec

H, W = 48, 64
FAST = ["-n", "30", "--iters", "20", "--quiet"]
METRIC_KEYS = {"psnr", "ssim", "ms_ssim", "lpips", "kernels_initial", "kernels_final", "kernels_per_tile",
               "iterations", "stop_reason", "init_seconds", "fit_seconds", "render_ms", "versions", "spec",
               "image"}


def _replace_fit(monkeypatch, fake):
    """Stand ``fake`` in for smoe's fit; it keeps fit's signature, from which the parser reads its defaults."""
    monkeypatch.setattr(smoe.fitting, "fit", functools.wraps(smoe.fitting.fit)(fake))


def _tiny_image(path):
    """A smooth colour gradient with a disc: structure a few kernels can fit."""
    y, x = np.mgrid[0:H, 0:W] / np.array([H, W])[:, None, None]
    disc = ((x - 0.6) ** 2 + (y - 0.5) ** 2 < 0.06).astype(np.float32)
    write_image(path, np.stack([x, y, 0.3 + 0.5 * disc], axis=2))
    return path


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """One fit shared by the tests that only read its outputs."""
    root = tmp_path_factory.mktemp("fit")
    image = _tiny_image(root / "tiny.png")
    out = root / "out"
    assert main(["fit", str(image), *FAST, "-o", str(out)]) == 0
    return image, out


@pytest.fixture
def image(tmp_path):
    return _tiny_image(tmp_path / "tiny.png")


def _one_line_error(capsys):
    err = capsys.readouterr().err
    assert err.startswith("smoe: error: "), err
    assert err.count("\n") == 1, err
    assert "Traceback" not in err
    return err


# ================================================================ end to end
def test_fit_writes_every_output(fitted):
    image, out = fitted
    assert sorted(p.name for p in out.iterdir()) == sorted(FIT_OUTPUTS)
    report = json.loads((out / "metrics.json").read_text())
    assert METRIC_KEYS <= report.keys()
    assert report["image"]["width"] == W and report["image"]["height"] == H
    assert report["ms_ssim"] is None  # the image is too small for five scales
    assert report["psnr"] > 5 and 0 < report["ssim"] <= 1 and report["lpips"] >= 0
    assert report["kernels_initial"] == round(30 * FitSpec().grow_start) and report["iterations"] == 20
    assert set(report["versions"]) == {"smoe", "torch", "numba", "numpy", "python"}
    model, meta = read_model_file(out / "model.smoe.npz")
    assert len(model.model) == report["kernels_final"]
    assert (meta["height"], meta["width"], meta["mode"], meta["scope"]) == (H, W, "smoe", "raster")
    assert meta["spec"] == report["spec"] and meta["spec"]["iters"] == 20
    assert read_image(out / "reconstruction.png").shape == (H, W, 3)
    for name in ("convergence.png", "kernels.png"):
        with Image.open(out / name) as im:
            assert im.format == "PNG"
    lines = (out / "history.csv").read_text().splitlines()
    assert lines[0].split(",")[:3] == ["iteration", "loss", "psnr"] and len(lines) == 3


def _render(fitted, tmp_path, *options):
    out = tmp_path / "r.png"
    assert main(["render", str(fitted[1] / "model.smoe.npz"), *options, "-o", str(out)]) == 0
    return read_image(out)


def test_render_sizes(fitted, tmp_path):
    assert _render(fitted, tmp_path).shape == (H, W, 3)
    assert _render(fitted, tmp_path, "--scale", "2").shape == (2 * H, 2 * W, 3)
    assert _render(fitted, tmp_path, "--size", "30x20").shape == (20, 30, 3)


def test_render_at_scale_one_matches_the_reconstruction(fitted, tmp_path):
    np.testing.assert_array_equal(_render(fitted, tmp_path), read_image(fitted[1] / "reconstruction.png"))


def test_render_sharpen_changes_the_image(fitted, tmp_path):
    plain = _render(fitted, tmp_path)
    sharp = _render(fitted, tmp_path, "--sharpen", "0.5", "--scope", "global")
    assert sharp.shape == plain.shape and np.abs(sharp - plain).max() > 0.01


def test_info(fitted, capsys):
    model = load_model(fitted[1] / "model.smoe.npz").model
    assert main(["info", str(fitted[1] / "model.smoe.npz")]) == 0
    out = capsys.readouterr().out
    assert f"kernels       {len(model)}" in out and "64x48" in out and "median sigma" in out
    assert main(["info", "--json", str(fitted[1] / "model.smoe.npz")]) == 0
    facts = json.loads(capsys.readouterr().out)
    assert facts["kernels"] == len(model) and facts["settings"]["iters"] == 20


def test_eval(fitted, capsys):
    image, out = fitted
    assert main(["eval", str(image), str(out / "reconstruction.png")]) == 0
    text = capsys.readouterr().out
    for name in ("PSNR", "SSIM", "MS-SSIM", "LPIPS"):
        assert name in text
    assert float(text.split()[1]) > 5
    assert main(["eval", "--json", "--no-lpips", str(image), str(image)]) == 0
    q = json.loads(capsys.readouterr().out)
    assert q["psnr"] is None and q["ssim"] == pytest.approx(1.0) and q["lpips"] is None


def test_eval_above_one_megapixel_names_the_crops(tmp_path, capsys):
    rng = np.random.default_rng(0)
    ref, img = tmp_path / "ref.png", tmp_path / "img.png"
    clean = rng.random((1001, 1000, 3))
    write_image(ref, clean)
    write_image(img, np.clip(clean + rng.normal(0, 0.05, clean.shape), 0, 1))
    assert main(["eval", "--no-lpips", str(ref), str(img)]) == 0
    assert "mean over 4 fixed crops of 512x512 px; PSNR over the whole image" in capsys.readouterr().out
    assert main(["eval", "--json", "--no-lpips", str(ref), str(img)]) == 0
    q = json.loads(capsys.readouterr().out)
    assert len(q["crops"]) == 4 and q["lpips"] is None and q["ms_ssim"] > 0


def test_fit_prints_a_summary(image, tmp_path, capsys):
    out = tmp_path / "o"
    assert main(["fit", str(image), "-n", "10", "--iters", "5", "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert "PSNR" in text and str(out) in text


def test_fit_default_outdir_and_stop_rule(image, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["fit", str(image), *FAST, "--target-psnr", "10"]) == 0
    report = json.loads((tmp_path / "smoe-out" / "tiny" / "metrics.json").read_text())
    assert report["stop_reason"] == "target_psnr"
    assert main(["fit", str(image), *FAST, "--target-corr", "1", "--quiet", "-o", "corr"]) == 0
    assert json.loads((tmp_path / "corr" / "metrics.json").read_text())["stop_reason"] == "target_corr"


def test_fit_to_a_target_without_n_grows_the_model(image, tmp_path):
    out = tmp_path / "grown"
    assert main(["fit", str(image), "--target-psnr", "28", "--iters", "1500", "--quiet", "-o", str(out)]) == 0
    report = json.loads((out / "metrics.json").read_text())
    assert report["stop_reason"] == "target_psnr" and 28 <= report["psnr"] < 28.3
    assert report["kernels_initial"] == round(H * W / 400)
    with open(out / "history.csv") as f:
        counts = [int(row["kernels"]) for row in csv.DictReader(f)]
    assert max(counts) > report["kernels_initial"]  # it grew, then trimmed to what the target needs
    assert report["kernels_final"] == counts[-1] <= max(counts)
    assert round(report["spec"]["grow_start"] * report["spec"]["n_kernels"]) == report["kernels_initial"]


def test_fit_with_another_tile_size(image, tmp_path, capsys):
    out = tmp_path / "tiles32"
    assert main(["fit", str(image), *FAST, "--tile-size", "32", "-o", str(out)]) == 0
    assert load_model(out / "model.smoe.npz").tile == 32
    assert json.loads((out / "metrics.json").read_text())["spec"]["tile_size"] == 32
    capsys.readouterr()
    assert main(["info", str(out / "model.smoe.npz")]) == 0
    assert "32x32 tiles" in capsys.readouterr().out


def test_unreached_target_keeps_the_best_model_and_says_so(image, tmp_path, capsys):
    out = tmp_path / "capped"
    assert main(["fit", str(image), "-n", "20", "--target-psnr", "59", "--iters", "60", "--quiet",
                 "-o", str(out)]) == 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "target 59 dB not reached" in err
    report = json.loads((out / "metrics.json").read_text())
    assert report["stop_reason"] == "iterations" and report["kernels_final"] <= 20
    assert (out / "model.smoe.npz").exists()


# ================================================================ bad input
def _empty_png(path):
    """A PNG whose header declares 0 x 0 pixels."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", 0, 0, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) +
                     chunk(b"IEND", b""))


def _bad_image(kind, tmp_path):
    path = tmp_path / f"{kind}.png"
    if kind == "text":
        path.write_text("not an image\n")
    elif kind == "empty-file":
        path.write_bytes(b"")
    elif kind == "zero-pixels":
        _empty_png(path)
    elif kind == "truncated":
        write_image(path, np.random.default_rng(0).random((H, W, 3)))
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return path


@pytest.mark.parametrize("kind", ["missing", "text", "empty-file", "zero-pixels", "truncated"])
def test_fit_rejects_bad_images(kind, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["fit", str(_bad_image(kind, tmp_path)), *FAST, "-o", str(out)]) == 2
    _one_line_error(capsys)
    assert not out.exists()


@pytest.mark.parametrize("options", [
    ["-n", "0"], ["-n", "-5"], ["-n", "abc"], ["-n", str(H * W + 1)], ["--mode", "nope"], ["--init", "nope"],
    ["--scope", "tiles"], ["--iters", "0"], ["--time-budget", "0"], ["--lam", "-1"], ["--lam", "nan"],
    ["--mode", "rbf", "--lam", "1e-4"], ["--bogus-option"], ["--target-corr", "1.5"], ["--target-corr", "nan"],
    ["--target-psnr", "61"], ["--target-psnr", "9.5"], ["--time-budget", "-1"], ["--min-gain", "-0.1"],
    ["--max-reach", "nan"], ["--grow-start", "1.5"], ["--tile-size", "12"], ["--tile-size", "2"],
    ["--tile-size", "128"], ["--tile-size", "x"],
])
def test_fit_rejects_bad_options(options, image, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["fit", str(image), "--quiet", "-o", str(out)]
    argv += options if "-n" in options else ["-n", "30", *options]
    assert main(argv) == 2
    _one_line_error(capsys)
    assert not out.exists()


@pytest.mark.parametrize("where", ["under-a-file", "is-a-file"])
def test_fit_refuses_unwritable_outdir_before_fitting(where, image, tmp_path, capsys, monkeypatch):
    _replace_fit(monkeypatch, lambda *a, **k: pytest.fail("fit ran although the output cannot be written"))
    blocker = tmp_path / "file"
    blocker.write_text("x")
    out = blocker / "sub" / "dir" if where == "under-a-file" else blocker
    assert main(["fit", str(image), *FAST, "-o", str(out)]) == 2
    assert "output directory" in _one_line_error(capsys)
    assert blocker.read_text() == "x"


def test_failed_fit_removes_the_directories_it_created(image, tmp_path, capsys, monkeypatch):
    def broken(*args, **kwargs):
        raise ValueError("simulated failure")

    _replace_fit(monkeypatch, broken)
    assert main(["fit", str(image), *FAST, "-o", str(tmp_path / "a" / "b")]) == 2
    assert "simulated failure" in _one_line_error(capsys)
    assert not (tmp_path / "a").exists()


def test_interrupt_exits_130(image, tmp_path, capsys, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    _replace_fit(monkeypatch, interrupted)
    assert main(["fit", str(image), *FAST, "-o", str(tmp_path / "out")]) == 130
    assert capsys.readouterr().err == "smoe: interrupted\n"
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("options", [
    ["--size", "30by20"], ["--size", "0x20"], ["--size", "x"], ["--size", "-3x5"], ["--scale", "0"],
    ["--scale", "-1"], ["--scale", "inf"], ["--sharpen", "0"], ["--scale", "2", "--size", "4x4"],
    ["--scope", "nope"], ["--size", "20000x20000"],
])
def test_render_rejects_bad_options(options, fitted, tmp_path, capsys):
    out = tmp_path / "r.png"
    assert main(["render", str(fitted[1] / "model.smoe.npz"), *options, "-o", str(out)]) == 2
    _one_line_error(capsys)
    assert not out.exists()


def _bad_model(kind, fitted, tmp_path):
    path = tmp_path / f"{kind}.npz"
    if kind == "garbage":
        path.write_bytes(b"\x00garbage" * 20)
    elif kind == "truncated":
        data = (fitted[1] / "model.smoe.npz").read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "image":
        path = fitted[0]
    return path


@pytest.mark.parametrize("kind", ["missing", "garbage", "truncated", "image"])
def test_render_and_info_reject_bad_model_files(kind, fitted, tmp_path, capsys):
    model = _bad_model(kind, fitted, tmp_path)
    out = tmp_path / "r.png"
    assert main(["render", str(model), "-o", str(out)]) == 2
    _one_line_error(capsys)
    assert not out.exists()
    assert main(["info", str(model)]) == 2
    _one_line_error(capsys)


@pytest.mark.parametrize("target", ["r.xyz", "file/r.png", "."])
def test_render_rejects_unwritable_outputs(target, fitted, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    before = sorted(tmp_path.iterdir())
    assert main(["render", str(fitted[1] / "model.smoe.npz"), "-o", str(tmp_path / target)]) == 2
    _one_line_error(capsys)
    assert sorted(tmp_path.iterdir()) == before


def test_eval_rejects_bad_input(fitted, tmp_path, capsys):
    image, _ = fitted
    assert main(["eval", str(image), str(tmp_path / "missing.png")]) == 2
    _one_line_error(capsys)
    small = tmp_path / "small.png"
    write_image(small, np.zeros((20, 30, 3)))
    assert main(["eval", str(image), str(small)]) == 2
    assert "same size" in _one_line_error(capsys)


def test_usage_errors(capsys):
    assert main([]) == 2
    _one_line_error(capsys)
    assert main(["frobnicate"]) == 2
    _one_line_error(capsys)
    assert main(["render", "m.npz"]) == 2  # -o is required
    _one_line_error(capsys)


# ==================================================================== help and debug
def test_debug_raises_with_traceback(tmp_path):
    with pytest.raises(ImageError):
        main(["--debug", "fit", str(tmp_path / "missing.png"), *FAST])
    with pytest.raises(ModelFileError):
        main(["info", "--debug", str(tmp_path / "missing.npz")])


@pytest.mark.parametrize("command", [[], *([name] for name in cli.COMMANDS)])
def test_every_option_has_help(command, capsys):
    assert main([*command, "--help"]) == 0
    assert "usage: smoe" in capsys.readouterr().out
    parser = cli.build_parser()
    if command:
        parser = parser._subparsers._group_actions[0].choices[command[0]]
    for action in parser._actions:
        assert action.help, f"option {action.option_strings or action.dest} of smoe {command} lacks help"


def test_python_dash_m_smoe_help():
    done = subprocess.run([sys.executable, "-m", "smoe", "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "fit" in done.stdout and "render" in done.stdout


def test_closed_output_pipe_ends_quietly(fitted):
    # Like `smoe info MODEL | head -1`: the reader is gone before smoe writes.
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        done = subprocess.run([sys.executable, "-m", "smoe", "info", str(fitted[1] / "model.smoe.npz")],
                              stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        os.close(write_end)
    assert done.returncode == 141 and done.stderr == ""


def test_fit_auto_kernel_count_and_initializer_options(tmp_path, capsys):
    from smoe.cli import main
    import numpy as np
    from smoe.imageio import write_image
    img = np.zeros((40, 48, 3), np.float32)
    img[:, 20:] = [0.8, 0.3, 0.1]
    src = tmp_path / "two.png"
    write_image(src, img)
    out = tmp_path / "auto"
    assert main(["fit", str(src), "-n", "auto", "--init", "adaptive", "--init-option", "threshold=30",
                 "--iters", "5", "--quiet", "-o", str(out)]) == 0
    assert (out / "metrics.json").exists()
    assert main(["fit", str(src), "-n", "50", "--init", "grid", "--init-option", "nonsense=1", "--iters", "5", "--quiet",
                 "-o", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err
    assert "has no option nonsense" in err and "Traceback" not in err
    assert main(["fit", str(src), "--init", "random", "-n", "auto", "--quiet", "-o", str(tmp_path / "b2")]) == 2
    assert "needs a kernel count" in capsys.readouterr().err


def test_segment_command_writes_picture_and_labels(tmp_path, capsys):
    from smoe.cli import main
    import numpy as np
    from smoe.imageio import read_image, write_image
    img = np.zeros((40, 60, 3), np.float32)
    img[:, 30:] = [0.9, 0.2, 0.1]
    src = tmp_path / "two.png"
    write_image(src, img)
    pic, lab = tmp_path / "seg.png", tmp_path / "labels.png"
    assert main(["segment", str(src), "-o", str(pic), "--labels", str(lab)]) == 0
    assert "2 segments" in capsys.readouterr().out
    assert read_image(pic).shape == (40, 60, 3)
    labels = np.rint(read_image(lab) * 65535).astype(int)
    assert set(np.unique(labels)) == {1, 2} and labels[0, 0] != labels[0, 59]
    assert main(["segment", str(src), "--threshold", "-3", "-o", str(tmp_path / "x.png")]) == 2
    assert main(["segment", str(tmp_path / "missing.png"), "-o", str(tmp_path / "y.png")]) == 2
    assert not (tmp_path / "y.png").exists() and not (tmp_path / "x.png").exists()
