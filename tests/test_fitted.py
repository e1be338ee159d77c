"""FittedModel: a model that renders itself; model files of format 2 and 1; refits from a stored spec."""

import json

import numpy as np
import pytest
import torch

import smoe
from smoe.fitted import FittedModel
from smoe.model import Model
from smoe.modelfile import FORMAT_VERSION, ModelFileError, load_model, read_model_file, save_model
from smoe.rasterizer import render as render_model
from smoe.spec import FitSpec


def _image(h=40, w=56, seed=0):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    return np.clip(np.stack([x, y, 0.5 + 0.3 * np.sin(6 * x * y)], 2) + 0.02 * rng.random((h, w, 3)),
                   0, 1).astype(np.float32)


@pytest.fixture(scope="module")
def result():
    return smoe.fit(_image(), 150, iters=20, seed=3, tile_offset=(5, 9))


def test_fit_result_knows_how_it_renders(result):
    fitted = result.fitted
    assert (fitted.frame, fitted.mode, fitted.scope, fitted.tile_offset) == ((40, 56), "smoe", "raster", (5, 9))
    expected = render_model(fitted.model, 40, 56, tile_offset=(5, 9)).numpy()
    assert np.array_equal(smoe.render(fitted), expected)
    assert np.array_equal(fitted.render(), expected)


def test_render_elsewhere_with_nothing_passed_twice(result):
    fitted = result.fitted
    big = render_model(fitted.model, 100, 140, extent=(40, 56), tile_offset=(5, 9), sharpen=0.9).numpy()
    assert np.array_equal(smoe.render(fitted, scale=2.5, sharpen=0.9), big)
    assert smoe.render(fitted, size=(30, 20)).shape == (30, 20, 3)


def test_render_refuses_bad_requests_before_rendering(result):
    with pytest.raises(ValueError, match="megapixels exceeds the limit"):
        smoe.render(result.fitted, scale=1000)
    with pytest.raises(ValueError, match="sharpen"):
        smoe.render(result.fitted, sharpen=0)
    with pytest.raises(TypeError, match="FittedModel"):
        smoe.render(result.model)


def test_fitted_model_checks_its_fields():
    model = Model.empty(channels=1)
    for bad in ({"frame": (0, 4)}, {"mode": "gmm"}, {"scope": "tiles"}, {"tile_offset": (16, 0)},
                {"spec": {"iters": 3}}):
        with pytest.raises(ValueError):
            FittedModel(model, **{"frame": (4, 4), **bad})


def test_model_file_round_trip_keeps_everything(tmp_path, result):
    save_model(tmp_path / "m.npz", result.fitted)
    back, meta = read_model_file(tmp_path / "m.npz")
    assert meta["format_version"] == FORMAT_VERSION == 2
    assert (back.frame, back.mode, back.scope, back.tile_offset) == ((40, 56), "smoe", "raster", (5, 9))
    assert back.spec == result.spec
    assert np.array_equal(back.render(scale=1.5), result.fitted.render(scale=1.5))


def test_refit_from_metrics_json_and_from_the_model_file_is_identical(tmp_path):
    from smoe.outputs import fit_outputs

    image = _image()
    first = smoe.fit(image, 120, iters=15, seed=7, lr_mu=0.02)
    files, report = fit_outputs(first.fitted, image, first.history, image_path=tmp_path / "x.png",
                                run=first.run_facts())
    (tmp_path / "model.smoe.npz").write_bytes(files["model.smoe.npz"])
    from_metrics = FitSpec.from_dict(json.loads(files["metrics.json"])["spec"])
    from_model = load_model(tmp_path / "model.smoe.npz").spec
    assert from_metrics == from_model == first.spec
    for spec in (from_metrics, from_model):
        again = smoe.fit(image, spec=spec)
        for name in ("mu", "chol", "pi", "experts"):
            assert torch.equal(getattr(again.model, name), getattr(first.model, name))


def test_spec_api_and_keyword_api_agree():
    image = _image(24, 32)
    spec = FitSpec(n_kernels=60, iters=8, seed=2, mode="rbf")
    a, b = smoe.fit(image, spec=spec), smoe.fit(image, 60, iters=8, seed=2, mode="rbf")
    assert a.spec == b.spec and torch.equal(a.model.mu, b.model.mu)


def test_a_spec_started_from_a_ready_model_needs_that_model():
    image = _image(24, 32)
    start = smoe.fit(image, 60, iters=3).model
    result = smoe.fit(image, init=start, iters=3)
    assert result.spec.init == "model"
    with pytest.raises(ValueError, match="ready model"):
        smoe.fit(image, spec=result.spec)
    again = smoe.fit(image, spec=result.spec, init=start)
    assert torch.equal(again.model.mu, result.model.mu)


def test_a_runtime_initializer_is_checked_when_fitting_not_when_read_back(tmp_path):
    from smoe.initializers import register
    from smoe.initializers.registry import _REGISTRY

    image = _image(24, 32)

    @register("test-corner")
    def corner(img, n_kernels, *, rng):
        return smoe.initializers.initialize("grid", img, n_kernels, seed=0)

    try:
        result = smoe.fit(image, 30, init="test-corner", iters=3)
        save_model(tmp_path / "m.npz", result.fitted)
    finally:
        _REGISTRY.pop("test-corner")
    spec = load_model(tmp_path / "m.npz").spec  # read back although no longer registered
    assert spec.init == "test-corner"
    with pytest.raises(ValueError, match="unknown initializer 'test-corner'"):
        smoe.fit(image, spec=spec)


# ------------------------------------------------------------ format 1 and 3
def _write_v1(path, model: Model, *, mode="smoe", scope="raster", height=8, width=9, settings=None):
    """A model file in the layout smoe wrote before format 2 (mode, scope, size, free settings)."""
    meta = {"format": "smoe-model", "format_version": 1, "mode": mode, "scope": scope, "height": height,
            "width": width, "channels": model.channels, "smoe_version": "0.1.0", "settings": settings or {}}
    with open(path, "wb") as handle:
        np.savez_compressed(handle, **model.numpy(), meta=np.frombuffer(json.dumps(meta).encode(), np.uint8))


def test_version_1_files_still_load(tmp_path, result):
    old = {**result.spec.to_dict(), "iterations": 20}
    _write_v1(tmp_path / "v1.npz", result.model, height=40, width=56, settings=old)
    fitted, meta = read_model_file(tmp_path / "v1.npz")
    assert meta["format_version"] == 1 and meta["settings"] == old
    assert (fitted.frame, fitted.mode, fitted.scope) == ((40, 56), "smoe", "raster")
    assert fitted.spec == result.spec  # a version-1 record of every field converts
    _write_v1(tmp_path / "v1b.npz", result.model, mode="rbf", scope="global", settings={"lr": 0.5})
    free = load_model(tmp_path / "v1b.npz")
    assert free.spec is None and (free.mode, free.scope, free.frame) == ("rbf", "global", (8, 9))


def _tamper(path, **changes):
    with np.load(path, allow_pickle=False) as archive:
        arrays = {name: archive[name] for name in archive.files}
    meta = json.loads(arrays.pop("meta").tobytes())
    meta.update(changes)
    for key, value in changes.items():
        if value is KeyError:
            del meta[key]
    with open(path, "wb") as handle:
        np.savez_compressed(handle, **arrays, meta=np.frombuffer(json.dumps(meta).encode(), np.uint8))


def test_version_3_is_from_a_newer_smoe(tmp_path, result):
    save_model(tmp_path / "m.npz", result.fitted)
    _tamper(tmp_path / "m.npz", format_version=3)
    with pytest.raises(ModelFileError, match=r"written by a newer smoe \(format 3\); upgrade smoe"):
        load_model(tmp_path / "m.npz")


@pytest.mark.parametrize("key", ["tile_offset", "spec", "mode", "height"])
def test_version_2_missing_a_key_is_a_model_file_error(tmp_path, result, key):
    save_model(tmp_path / "m.npz", result.fitted)
    _tamper(tmp_path / "m.npz", **{key: KeyError})
    with pytest.raises(ModelFileError, match=f"lacks '{key}'"):
        load_model(tmp_path / "m.npz")


@pytest.mark.parametrize("changes, words", [
    ({"tile_offset": [0, 99]}, "tile_offset"), ({"spec": {"iters": 0}}, "spec"), ({"spec": {"bogus": 1}}, "bogus"),
    ({"spec": [1]}, "spec"),
])
def test_version_2_bad_values_are_model_file_errors(tmp_path, result, changes, words):
    save_model(tmp_path / "m.npz", result.fitted)
    _tamper(tmp_path / "m.npz", **changes)
    with pytest.raises(ModelFileError, match=words) as info:
        load_model(tmp_path / "m.npz")
    assert str(tmp_path / "m.npz") in str(info.value) and "\n" not in str(info.value)
