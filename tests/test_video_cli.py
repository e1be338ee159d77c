"""``smoe fit-video`` and ``smoe render`` of a video model, run in-process through ``main([...])`` on a tiny clip:
every output written and consistent, any frame rate and size rendered, every user error one line and no output."""

import json
import re
import shutil

import numpy as np
import pytest
import torch

import smoe.video.fitting
import smoe.video.outputs
from smoe import metrics
from smoe.cli import main
from smoe.cli import video as video_cli
from smoe.fitted import FittedModel
from smoe.imageio import read_image
from smoe.model import Model
from smoe.modelfile import save_model
from smoe.outputnames import VIDEO_FIT_OUTPUTS
from smoe.video import load_video_model
from smoe.video.fitted import frame_times
from smoe.video.fitting import VideoFitSpec
from smoe.video.io import MAX_FPS, frame_names, read_video, write_frames, write_video

F, H, W = 6, 24, 32
FAST = ["-n", "40", "--iters", "15", "--quiet"]


def _clip() -> np.ndarray:
    """A colour gradient with a disc moving right: structure a few space-time kernels can follow."""
    t, y, x = np.mgrid[0:F, 0:H, 0:W].astype(np.float32)
    disc = ((x - 8 - 3 * t) ** 2 + (y - 12) ** 2 < 30).astype(np.float32)
    return np.stack([x / W, y / H, 0.2 + 0.6 * disc], axis=-1)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """One fit of a lossless video file, shared by the tests that only read its outputs: (clip, outdir)."""
    root = tmp_path_factory.mktemp("video")
    clip = root / "clip.mkv"
    write_video(clip, _clip(), 25, lossless=True)
    out = root / "out"
    assert main(["fit-video", str(clip), *FAST, "-o", str(out)]) == 0
    return clip, out


@pytest.fixture
def model(fitted):
    return str(fitted[1] / "model.smoe.npz")


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("smoe: error: "), err
    assert err.count("\n") == 1, err
    assert "Traceback" not in err
    return err


def _listing(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


# ================================================================ fit-video
def test_fit_video_writes_every_output(fitted):
    clip, out = fitted
    assert sorted(p.name for p in out.iterdir()) == sorted([*VIDEO_FIT_OUTPUTS, *frame_names(F)])
    report = json.loads((out / "metrics.json").read_text())
    assert report["clip"] == {"path": str(clip.resolve()), "frames": [0, F], "count": F, "width": W, "height": H,
                              "channels": 3, "fps": 25.0}
    assert len(report["psnr_per_frame"]) == len(report["ssim_per_frame"]) == F
    assert report["psnr"] == pytest.approx(np.mean(report["psnr_per_frame"]), rel=1e-12)
    assert report["ssim"] == pytest.approx(np.mean(report["ssim_per_frame"]), rel=1e-12)
    assert report["psnr"] > 15 and 0 < report["ssim"] <= 1
    assert report["seconds_per_frame"] == pytest.approx(report["seconds"] / F)
    assert report["windows"] == [[0, F]] and report["kernels_initial"] == 40
    assert report["spec"]["iters"] == 15 and report["spec"]["n_kernels"] == 40
    assert set(report["versions"]) == {"smoe", "torch", "numba", "numpy", "python"}
    assert {"cpu", "cores"} <= set(report["machine"])
    history = (out / "history.csv").read_text().splitlines()
    assert history[0].startswith("window,iteration,psnr") and len(history) >= 2


def test_fit_video_outputs_agree_with_the_model(fitted):
    """metrics.json measures what the model renders; frames and preview show it."""
    clip, out = fitted
    report = json.loads((out / "metrics.json").read_text())
    fitted_video = load_video_model(out / "model.smoe.npz")
    assert len(fitted_video.model) == report["kernels_final"] and fitted_video.shape == (F, H, W)
    source = read_video(clip).frames
    render = np.clip(fitted_video.render(), 0, 1)
    for f in range(F):
        assert metrics.psnr(source[f], render[f]) == pytest.approx(report["psnr_per_frame"][f], abs=1e-3)
        assert metrics.ssim(source[f], render[f]) == pytest.approx(report["ssim_per_frame"][f], abs=1e-4)
        assert np.abs(read_image(out / f"frame_{f:05d}.png") - render[f]).max() <= 1 / 255 + 1e-6
    preview = read_video(out / "reconstruction.mp4")
    assert preview.frames.shape == (F, H, W, 3) and preview.fps == pytest.approx(25.0)
    assert metrics.psnr(render.reshape(-1, W, 3), preview.frames.reshape(-1, W, 3)) > 30  # lossy, same pictures


def test_refit_with_fewer_frames_replaces_the_folder(fitted, tmp_path, capsys):
    """--frames fits part of a clip (a folder of frames here); frames of the earlier, longer fit go."""
    folder = tmp_path / "frames"
    write_frames(folder, _clip())
    out = tmp_path / "out"
    shutil.copytree(fitted[1], out)
    assert main(["fit-video", str(folder), "-n", "30", "--iters", "10", "--frames", "1:5", "--mode", "rbf",
                 "--window", "2", "--seed", "3", "-o", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted([*VIDEO_FIT_OUTPUTS, *frame_names(4)])
    report = json.loads((out / "metrics.json").read_text())
    assert report["clip"]["frames"] == [1, 5] and report["windows"] == [[0, 2], [2, 4]]
    assert report["mode"] == "rbf" and report["spec"]["seed"] == 3
    printed = capsys.readouterr().out
    assert "mean PSNR" in printed and "s per frame" in printed and str(out) in printed


def _not_a_video(tmp_path):
    path = tmp_path / "notes.mp4"
    path.write_text("not a video\n")
    return path


@pytest.mark.parametrize("case, options", [
    ("missing", []), ("text", []),
    ("clip", ["--frames", "3:10"]), ("clip", ["--frames", "6:"]), ("clip", ["--frames", "3:3"]),
    ("clip", ["--frames", "4"]), ("clip", ["-n", "100000"]), ("clip", ["--mode", "rbf", "--lam", "1"]),
    ("clip", ["--tile-t", "0"]), ("clip", ["--fps", "5000"]), ("clip", ["--iters", "0"]),
    ("clip", ["--min-sigma-t", "0"]), ("clip", ["--min-sigma-t", "nan"]),
])
def test_fit_video_refuses_bad_input(case, options, fitted, tmp_path, capsys):
    clip = {"missing": tmp_path / "missing.mp4", "text": _not_a_video(tmp_path), "clip": fitted[0]}[case]
    before = _listing(tmp_path)
    assert main(["fit-video", str(clip), *FAST, *options, "-o", str(tmp_path / "a" / "out")]) == 2
    _one_line_error(capsys)
    assert _listing(tmp_path) == before


def test_fit_video_min_sigma_t_floors_every_kernel(fitted, tmp_path):
    from smoe.video.extent import time_sigma

    out = tmp_path / "out"
    assert main(["fit-video", str(fitted[0]), *FAST, "--min-sigma-t", "5", "-o", str(out)]) == 0
    floored = time_sigma(load_video_model(out / "model.smoe.npz").model.chol)
    free = time_sigma(load_video_model(fitted[1] / "model.smoe.npz").model.chol)
    assert floored.min() >= 5 * (1 - 1e-5)
    assert free.min() < 5  # without the option some kernels are shorter, so the floor did the work


@pytest.mark.parametrize("target", ["file/out", "file", ""])
def test_fit_video_refuses_unwritable_output_before_fitting(target, fitted, tmp_path, capsys, monkeypatch):
    (tmp_path / "file").write_text("x")
    monkeypatch.setattr(smoe.video.fitting, "fit_video", lambda *a, **k: pytest.fail("fitted before checking -o"))
    before = _listing(tmp_path)
    assert main(["fit-video", str(fitted[0]), *FAST, "-o", str(tmp_path / target) if target else ""]) == 2
    _one_line_error(capsys)
    assert _listing(tmp_path) == before


def test_failed_fit_video_leaves_nothing(fitted, tmp_path, capsys, monkeypatch):
    def broken(*args, **kwargs):
        raise ValueError("figure failed")

    monkeypatch.setattr(smoe.video.outputs, "video_fit_outputs", broken)
    assert main(["fit-video", str(fitted[0]), *FAST, "-o", str(tmp_path / "a" / "b" / "out")]) == 2
    assert "figure failed" in _one_line_error(capsys)
    assert _listing(tmp_path) == []


def test_interrupted_fit_video_exits_130_and_leaves_nothing(fitted, tmp_path, capsys, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(smoe.video.fitting, "fit_video", interrupted)
    assert main(["fit-video", str(fitted[0]), *FAST, "-o", str(tmp_path / "out")]) == 130
    assert capsys.readouterr().err == "smoe: interrupted\n"
    assert _listing(tmp_path) == []


def test_fit_video_help_shows_the_fit_defaults(capsys):
    """The help is written without loading torch, so its defaults are typed out; they must be the fit's."""
    assert main(["fit-video", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    spec = VideoFitSpec()
    for option, value in (("--iters", spec.iters), ("--min-gain", spec.min_gain), ("--tile-t", spec.tile_t),
                          ("--lam", f"{spec.lam:g}"), ("--seed", spec.seed), ("--mode", spec.mode)):
        assert re.search(rf"{option} .*?\(default: {value}\)", text), option
    assert "16 M voxels" in text and smoe.video.fitting.WINDOW_VOXELS == 1 << 24
    assert video_cli._MAX_FPS == MAX_FPS


# ============================================================ render (video)
@pytest.mark.parametrize("options, count, size", [
    (["--fps-scale", "2", "--scale", "2"], (F - 1) * 2 + 1, (2 * H, 2 * W)),
    (["--fps-scale", "0.5", "--size", "40x30"], 3, (30, 40)),
    ([], F, (H, W)),
])
def test_render_video_model_to_a_video(options, count, size, model, tmp_path, capsys):
    out = tmp_path / "r.mp4"
    assert main(["render", model, *options, "-o", str(out)]) == 0
    clip = read_video(out)
    fps_scale = float(options[1]) if options else 1.0
    assert len(frame_times(F, fps_scale)) == count
    assert clip.frames.shape == (count, *size, 3) and clip.fps == pytest.approx(25 * fps_scale)
    assert f"{count} frames" in capsys.readouterr().out


@pytest.mark.parametrize("name", ["frames/", "frames"])
def test_render_video_model_to_frames(name, model, fitted, tmp_path):
    assert main(["render", model, "--fps-scale", "2", "--scale", "2", "-o", str(tmp_path / name)]) == 0
    folder = tmp_path / "frames"
    assert sorted(p.name for p in folder.iterdir()) == frame_names((F - 1) * 2 + 1)
    assert read_image(folder / "frame_00000.png").shape == (2 * H, 2 * W, 3)
    # Every second frame of a doubled rate is a fitted frame.
    assert main(["render", model, "-o", str(tmp_path / "same")]) == 0
    for f in range(F):
        np.testing.assert_array_equal(read_image(tmp_path / "same" / f"frame_{f:05d}.png"),
                                      read_image(fitted[1] / f"frame_{f:05d}.png"))


@pytest.mark.parametrize("options", [
    ["--fps-scale", "0"], ["--fps-scale", "-1"], ["--fps-scale", "nan"],
    ["--scale", "5000"],  # one frame above the limit
    ["--fps-scale", "2", "--scale", "300"],  # each frame within it, all of them above
    ["--fps-scale", "100000"],  # too many frames
    ["--fps-scale", "50"],  # 1250 fps: no video rate
    ["--sharpen", "0.7"], ["--scope", "global"],
])
@pytest.mark.parametrize("target", ["r.mp4", "frames/"])
def test_render_video_model_refuses_bad_options(options, target, model, tmp_path, capsys):
    if options == ["--fps-scale", "50"] and target == "frames/":
        pytest.skip("PNG frames have no rate")
    assert main(["render", model, *options, "-o", str(tmp_path / target)]) == 2
    _one_line_error(capsys)
    assert _listing(tmp_path) == []


@pytest.mark.parametrize("target", ["r.png", "file/r.mp4", "file", "a/b.avi"])
def test_render_video_model_refuses_unwritable_outputs(target, model, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    before = _listing(tmp_path)
    assert main(["render", model, "-o", str(tmp_path / target)]) == 2
    _one_line_error(capsys)
    assert _listing(tmp_path) == before


def test_fps_scale_refused_for_an_image_model(tmp_path, capsys):
    g = torch.Generator().manual_seed(1)
    chol = torch.stack([0.2 + torch.rand(10, generator=g), torch.zeros(10), 0.2 + torch.rand(10, generator=g)], 1)
    path = tmp_path / "image.smoe.npz"
    save_model(path, FittedModel(Model(torch.rand(10, 2, generator=g) * 20, chol, torch.ones(10),
                                       torch.rand(10, 3, generator=g)), (20, 20)))
    assert main(["render", str(path), "--fps-scale", "2", "-o", str(tmp_path / "r.png")]) == 2
    assert "video models only" in _one_line_error(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["image.smoe.npz"]


def test_info_describes_the_fitted_video_model(model, capsys):
    assert main(["info", model]) == 0
    assert f"{F} frames of {W}x{H} pixels at 25 fps" in capsys.readouterr().out

