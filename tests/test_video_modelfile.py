"""Video model files: the image model file with ``dim`` 3, exact round trips, kinds kept apart,
hostile files refused cheaply, and ``smoe info`` describing one without torch."""

import json
import re
import tracemalloc

import numpy as np
import pytest
import torch

import fuzzing
from smoe.cli import main
from smoe.fitted import FittedModel
from smoe.model import Model
from smoe.modelfile import (DIAGONAL, FORMAT_VERSION, ModelFileError, fitted_from_arrays, load_model,
                            read_model_arrays, read_model_file, save_model)
from smoe.video.fitted import MAX_VIDEO_PIXELS, FittedVideo
from smoe.video.model import DIAGONAL as VIDEO_DIAGONAL, VideoModel, covariance_from_chol
from smoe.video.modelfile import fitted_video_from_arrays, load_video_model, read_video_model_file, save_video_model
from test_quickcli import _run

FRAMES, HEIGHT, WIDTH = 9, 24, 40
SETTINGS = {"n_kernels": 40, "iters": 50, "lr_mu": 0.02, "window": [0, 8], "aspect": None}
VIDEO_KIND = ("a video model (3D kernels over x, y, t); load it with smoe.video.load_video_model or render it "
              "with `smoe render`")
IMAGE_KIND = "an image model (2D kernels over x, y); load it with smoe.load_model"


def _video_model(n_kernels=40, channels=3, dtype=torch.float32, seed=0) -> VideoModel:
    g = torch.Generator().manual_seed(seed)
    rand = lambda *shape: torch.rand(*shape, generator=g, dtype=torch.float64)  # noqa: E731
    mu = rand(n_kernels, 3) * torch.tensor([WIDTH, HEIGHT, FRAMES], dtype=torch.float64)
    diagonal = 0.1 + 0.4 * rand(n_kernels, 3)
    off = 0.2 * (rand(n_kernels, 3) - 0.5)  # negative off-diagonal entries are valid
    chol = torch.stack([diagonal[:, 0], off[:, 0], diagonal[:, 1], off[:, 1], off[:, 2], diagonal[:, 2]], 1)
    return VideoModel(mu, chol, 0.1 + rand(n_kernels), rand(n_kernels, channels)).to(dtype=dtype)


def _fitted(model=None, **fields) -> FittedVideo:
    args = {"fps": 29.97, "mode": "smoe", "tile": 16, "tile_t": 4, "settings": SETTINGS, **fields}
    return FittedVideo(_video_model() if model is None else model, FRAMES, (HEIGHT, WIDTH), **args)


@pytest.fixture
def video_path(tmp_path):
    path = tmp_path / "clip.smoe.npz"
    save_video_model(path, _fitted())
    return path


@pytest.fixture
def image_path(tmp_path):
    g = torch.Generator().manual_seed(1)
    chol = torch.stack([0.2 + torch.rand(10, generator=g), torch.zeros(10), 0.2 + torch.rand(10, generator=g)], 1)
    model = Model(torch.rand(10, 2, generator=g) * 20, chol, torch.ones(10), torch.rand(10, 3, generator=g))
    path = tmp_path / "image.smoe.npz"
    save_model(path, FittedModel(model, (20, 20)))
    return path


def _contents(path):
    with np.load(path, allow_pickle=False) as archive:
        arrays = {name: archive[name] for name in archive.files}
    return arrays, json.loads(arrays.pop("meta").tobytes().decode("utf-8"))


def _rewrite(path, arrays, meta):
    path.write_bytes(fuzzing.model_file(arrays, meta))
    return path


def _refused(path, match, load=load_video_model) -> str:
    with pytest.raises(ModelFileError, match=match) as info:
        load(path)
    message = str(info.value)
    assert "\n" not in message and message.startswith(str(path)), message
    return message


# ---------------------------------------------------------------- round trip
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("mode", ["smoe", "rbf"])
def test_round_trip_is_bit_identical(tmp_path, dtype, mode):
    fitted = _fitted(_video_model(dtype=dtype), mode=mode, fps=24, tile=32, tile_t=2)
    save_video_model(tmp_path / "v.npz", fitted)
    loaded = load_video_model(tmp_path / "v.npz")
    for name in ("mu", "chol", "pi", "experts"):
        saved, read = getattr(fitted.model, name), getattr(loaded.model, name)
        assert read.dtype == dtype and torch.equal(read, saved)
    for name in ("frames", "frame", "fps", "mode", "tile", "tile_t", "settings"):
        assert getattr(loaded, name) == getattr(fitted, name), name


def test_meta_records_the_dimension(video_path):
    _, meta = read_video_model_file(video_path)
    assert (meta["format"], meta["format_version"], meta["dim"]) == ("smoe-model", FORMAT_VERSION, 3)
    assert (meta["frames"], meta["height"], meta["width"], meta["fps"]) == (FRAMES, HEIGHT, WIDTH, 29.97)
    assert meta["settings"] == SETTINGS and meta["tile_t"] == 4
    assert not {"scope", "tile_offset", "spec"} & set(_contents(video_path)[1])
    arrays, meta, spec = read_model_arrays(video_path)  # NumPy only, either kind
    assert arrays["mu"].shape == (40, 3) and arrays["chol"].shape == (40, 6) and spec is None


def test_image_files_record_dim_2_and_files_without_it_are_images(image_path):
    arrays, meta = _contents(image_path)
    assert meta["dim"] == 2
    del meta["dim"]  # as every file written before video models
    fitted, read = read_model_file(_rewrite(image_path, arrays, meta))
    assert read["dim"] == 2 and fitted.frame == (20, 20)


def test_grey_and_empty_models(tmp_path):
    for model in (_video_model(channels=1), VideoModel.empty(1), VideoModel.empty(3, torch.float64)):
        save_video_model(tmp_path / "v.npz", _fitted(model))
        loaded = load_video_model(tmp_path / "v.npz").model
        assert (len(loaded), loaded.channels, loaded.dtype) == (len(model), model.channels, model.dtype)


def test_the_reader_knows_the_video_diagonal():
    assert DIAGONAL[3] == VIDEO_DIAGONAL


@pytest.mark.parametrize("fields,match", [
    ({"settings": {"bad": object()}}, "settings"),
    ({"settings": {"lr": float("nan")}}, "JSON"),
])
def test_save_refuses_what_json_cannot_hold(tmp_path, fields, match):
    with pytest.raises(ValueError, match=match):
        save_video_model(tmp_path / "v.npz", _fitted(**fields))
    assert not (tmp_path / "v.npz").exists()


def test_save_refuses_a_clip_above_the_cap_and_other_kinds(tmp_path):
    frames = MAX_VIDEO_PIXELS // (HEIGHT * WIDTH) + 1
    with pytest.raises(ValueError, match="megapixels in total"):
        save_video_model(tmp_path / "v.npz", FittedVideo(_video_model(), frames, (HEIGHT, WIDTH)))
    with pytest.raises(ValueError, match="takes a FittedVideo"):
        save_video_model(tmp_path / "v.npz", FittedModel(Model.empty(), (4, 4)))
    bad = VideoModel.unchecked(*(getattr(_video_model(), k) for k in ("mu", "chol", "pi", "experts")))
    bad.chol[3, 5] = -1.0
    with pytest.raises(ValueError, match="kernel 3: Cholesky"):
        save_video_model(tmp_path / "v.npz", _fitted(bad))
    assert not (tmp_path / "v.npz").exists()


# ---------------------------------------------------------------- kinds
def test_image_reader_refuses_a_video_file(video_path):
    for load in (load_model, read_model_file, lambda p: read_model_arrays(p, dim=2)):
        assert _refused(video_path, re.escape(VIDEO_KIND), load) == f"{video_path}: {VIDEO_KIND}"
    arrays, meta, spec = read_model_arrays(video_path)
    with pytest.raises(ModelFileError, match=re.escape(VIDEO_KIND)):
        fitted_from_arrays(video_path, arrays, meta, spec)  # what `smoe render` builds


def test_video_reader_refuses_an_image_file(image_path):
    assert _refused(image_path, re.escape(IMAGE_KIND)) == f"{image_path}: {IMAGE_KIND}"
    arrays, meta, _ = read_model_arrays(image_path)
    with pytest.raises(ModelFileError, match=re.escape(IMAGE_KIND)):
        fitted_video_from_arrays(image_path, arrays, meta)


@pytest.mark.parametrize("dim", [1, 4, "3", 3.0, [3], True, None])
def test_bad_dim(video_path, dim):
    arrays, meta = _contents(video_path)
    _refused(_rewrite(video_path, arrays, {**meta, "dim": dim}), "dim must be 2 .* or 3")


def test_video_arrays_under_an_image_meta(video_path, image_path):
    arrays, _ = _contents(video_path)
    _, meta = _contents(image_path)
    _refused(_rewrite(video_path, arrays, {**meta, "channels": 3}), r"'mu' has shape \(40, 3\); expected \(L, 2\)",
             load_model)


# ---------------------------------------------------------------- hostile files
@pytest.mark.parametrize("column", [0, 2, 5])
def test_non_positive_diagonal(video_path, column):
    arrays, meta = _contents(video_path)
    arrays["chol"][7, column] = -0.25 if column == 5 else 0.0
    _rewrite(video_path, arrays, meta)
    for load in (read_model_arrays, load_video_model):  # refused by the NumPy reader, before a model is built
        _refused(video_path, r"kernel 7: Cholesky diagonal must be positive, got (-?0\.0|-0\.25)$", load)


def test_negative_b22_in_a_fortran_ordered_chol(video_path):
    arrays, meta = _contents(video_path)
    arrays["chol"] = np.asfortranarray(arrays["chol"])
    arrays["chol"][11, 5] = -0.5
    _refused(_rewrite(video_path, arrays, meta), "kernel 11: Cholesky diagonal must be positive, got -0.5")


@pytest.mark.parametrize("name", ["mu", "chol", "pi", "experts"])
@pytest.mark.parametrize("value", [np.nan, np.inf, 1e16])
def test_bad_values(video_path, name, value):
    arrays, meta = _contents(video_path)
    arrays[name].flat[-1] = value
    _refused(_rewrite(video_path, arrays, meta), f"invalid model: kernel 39: {name} (is not finite|holds 1e\\+16)")


@pytest.mark.parametrize("name,shape,match", [
    ("chol", (40, 3), r"'chol' has shape \(40, 3\); expected \(40, 6\)"),
    ("chol", (40, 6, 1), "'chol' has shape"),
    ("mu", (40, 2), r"'mu' has shape \(40, 2\); expected \(L, 3\)"),
    ("pi", (39,), "'pi' has shape"),
    ("experts", (40, 1), "'experts' has shape"),
])
def test_wrong_shapes(video_path, name, shape, match):
    arrays, meta = _contents(video_path)
    arrays[name] = np.ones(shape, np.float32)
    _refused(_rewrite(video_path, arrays, meta), match)


@pytest.mark.parametrize("changes,match", [
    ({"frames": MAX_VIDEO_PIXELS // (HEIGHT * WIDTH) + 1}, "exceed the limit of 640 megapixels in total"),
    ({"frames": 10**30, "height": 10**4, "width": 10**4}, "megapixels"),
    ({"frames": 0}, "frames must be a positive whole number"),
    ({"frames": 2.5}, "frames must be"),
    ({"frames": "9"}, "frames must be"),
    ({"height": 0}, "height must be a positive integer"),
    ({"fps": 0}, "fps must be a finite number > 0"),
    ({"fps": -25.0}, "fps must be"),
    ({"fps": float("nan")}, "fps must be"),
    ({"fps": float("inf")}, "fps must be"),
    ({"fps": "25"}, "fps must be"),
    ({"fps": True}, "fps must be"),
    ({"tile_t": 0}, "frames per tile"),
    ({"tile_t": 65}, "frames per tile"),
    ({"tile_t": 4.0}, "frames per tile"),
    ({"tile": 12}, "tile"),
    ({"mode": "gmm"}, "mode"),
    ({"channels": 2}, "channels"),
    ({"settings": [1]}, "settings must be a JSON object"),
    ({"settings": None}, "settings must be a JSON object"),
    ({"format_version": FORMAT_VERSION + 1}, "newer smoe"),
])
def test_bad_metadata(video_path, changes, match):
    arrays, meta = _contents(video_path)
    _refused(_rewrite(video_path, arrays, {**meta, **changes}), match)


@pytest.mark.parametrize("key", ["mode", "height", "width", "channels", "tile", "frames", "fps", "tile_t", "settings"])
def test_missing_meta_key(video_path, key):
    arrays, meta = _contents(video_path)
    del meta[key]
    _refused(_rewrite(video_path, arrays, meta), f"metadata lacks '{key}'; the file is incomplete")


class _Payload:
    """Unpickling this creates a marker file: stands in for arbitrary code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("name", ["mu", "chol"])
def test_pickled_object_arrays_refused_without_running(video_path, tmp_path, name):
    marker = tmp_path / "pwned"
    arrays, meta = _contents(video_path)
    arrays[name] = np.array([_Payload(marker)] * 40, dtype=object)
    with open(video_path, "wb") as handle:
        np.savez_compressed(handle, **arrays, meta=np.frombuffer(json.dumps(meta).encode(), np.uint8))
    _refused(video_path, "pickled")
    assert not marker.exists()


def _peak_mb(call) -> float:
    tracemalloc.start()
    try:
        call()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak / 2**20


def test_a_file_claiming_millions_of_kernels_is_refused_with_little_memory(video_path):
    # 4 Mi kernels, 100 MiB of valid centres then factors of zeros, in a file of a few hundred KiB
    _, meta = _contents(video_path)
    n = 1 << 22
    members = {name: (fuzzing.npy_header_bytes("<f8", shape), 8 * int(np.prod(shape)))
               for name, shape in (("mu", (n, 3)), ("chol", (n, 6)), ("pi", (n,)), ("experts", (n, 3)))}
    members["meta"] = fuzzing.npy_bytes(np.frombuffer(json.dumps(meta).encode(), np.uint8))
    video_path.write_bytes(fuzzing.zip_bytes(members))
    assert video_path.stat().st_size < 1 << 20
    peak = _peak_mb(lambda: _refused(video_path, "kernel 0: Cholesky diagonal must be positive, got 0.0"))
    assert peak < 16, f"{peak:.1f} MiB to refuse a file whose arrays take {n * 13 * 8 >> 20} MiB"


def test_a_clip_above_the_cap_is_refused_before_its_arrays(video_path):
    arrays, meta = _contents(video_path)
    _rewrite(video_path, arrays, {**meta, "frames": 10**9})
    assert _peak_mb(lambda: _refused(video_path, "megapixels in total")) < 4


# ---------------------------------------------------------------- smoe info
def test_info_text(video_path, capsys):
    assert main(["info", str(video_path)]) == 0
    out = capsys.readouterr().out
    for line in ("kernels       40", "channels      3 (RGB)", "mode          smoe",
                 f"fitted on     {FRAMES} frames of {WIDTH}x{HEIGHT} pixels at 29.97 fps",
                 "video (3D kernels over x, y, t), float32", "tiles         16x16 pixels x 4 frames",
                 "bandwidth     mean sigma x ", "settings\n", "  n_kernels         40"):
        assert line in out, (line, out)
    assert "scope" not in out


def test_info_json_and_bandwidths_equal_torch(tmp_path, capsys):
    model = _video_model(dtype=torch.float64)
    save_video_model(tmp_path / "v.npz", _fitted(model, mode="rbf", tile_t=8))
    assert main(["info", "--json", str(tmp_path / "v.npz")]) == 0
    facts = json.loads(capsys.readouterr().out)
    expected = {"dim": 3, "kernels": 40, "channels": 3, "mode": "rbf", "frames": FRAMES, "height": HEIGHT,
                "width": WIDTH, "fps": 29.97, "tile": 16, "tile_t": 8, "format_version": FORMAT_VERSION,
                "dtype": "float64", "settings": dict(sorted(SETTINGS.items()))}
    assert {key: facts[key] for key in expected} == expected
    sigma = covariance_from_chol(model.chol).diagonal(dim1=-2, dim2=-1).sqrt().mean(0).tolist()
    got = [facts["bandwidth"][f"mean_sigma_{axis}"] for axis in "xyt"]
    assert got == pytest.approx(sigma, rel=1e-12)


def test_info_of_an_empty_model(tmp_path, capsys):
    save_video_model(tmp_path / "v.npz", _fitted(VideoModel.empty(1), settings={}))
    assert main(["info", str(tmp_path / "v.npz")]) == 0
    out = capsys.readouterr().out
    assert "kernels       0" in out and "n/a (no kernels)" in out and "settings      (none stored)" in out
    assert main(["info", "--json", str(tmp_path / "v.npz")]) == 0
    assert json.loads(capsys.readouterr().out)["bandwidth"] is None


def test_info_refuses_a_hostile_video_file_on_one_line(video_path, capsys):
    arrays, meta = _contents(video_path)
    arrays["chol"][2, 5] = -1.0
    assert main(["info", str(_rewrite(video_path, arrays, meta))]) == 2
    err = capsys.readouterr().err
    assert err.startswith("smoe: error: ") and err.count("\n") == 1 and "kernel 2: Cholesky" in err


@pytest.mark.parametrize("json_flag", [[], ["--json"]])
def test_info_of_a_video_file_loads_no_heavy_module(video_path, json_flag):
    assert _run("info", *json_flag, str(video_path)) == (0, [])
