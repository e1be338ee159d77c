"""Model files: exact round trips, and refusal of every kind of bad file."""

import io
import json

import numpy as np
import pytest
import torch

import smoe
from smoe.fitted import FittedModel
from smoe.model import Model
from smoe.modelfile import FORMAT_VERSION, ModelFileError, load_model, read_model_file, save_model
from smoe.spec import FitSpec

HEIGHT, WIDTH = 40, 50


def _random_model(n_kernels=30, channels=3, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    rand = lambda *shape: torch.rand(*shape, generator=g, dtype=torch.float64)  # noqa: E731
    mu = rand(n_kernels, 2) * torch.tensor([WIDTH, HEIGHT], dtype=torch.float64)
    chol = torch.stack([0.1 + 0.3 * rand(n_kernels), 0.1 * (rand(n_kernels) - 0.5), 0.1 + 0.3 * rand(n_kernels)], 1)
    model = Model(mu, chol, 0.1 + rand(n_kernels), rand(n_kernels, channels))
    return model.to(dtype=dtype)


def _save(path, model, *, mode="smoe", scope="raster", height=8, width=9, spec=None):
    save_model(path, FittedModel(model, (height, width), mode, scope, spec=spec))


SPEC = FitSpec(n_kernels=30, iters=100, lr_mu=0.02)


@pytest.fixture
def model_path(tmp_path):
    path = tmp_path / "model.npz"
    _save(path, _random_model(), height=HEIGHT, width=WIDTH, spec=SPEC)
    return path


def _contents(path):
    """Arrays and decoded metadata of a model file, for tampering."""
    with np.load(path, allow_pickle=False) as archive:
        arrays = {name: archive[name] for name in archive.files}
    meta = json.loads(arrays.pop("meta").tobytes().decode("utf-8"))
    return arrays, meta


def _rewrite(path, arrays, meta=None, **kwargs):
    """Write a tampered archive; ``meta`` is JSON-encoded unless it already is an array."""
    entries = dict(arrays)
    if meta is not None:
        entries["meta"] = meta if isinstance(meta, np.ndarray) else np.frombuffer(
            json.dumps(meta).encode("utf-8"), dtype=np.uint8)
    with open(path, "wb") as handle:
        np.savez_compressed(handle, **entries, **kwargs)
    return path


# ---------------------------------------------------------------- round trip
@pytest.mark.parametrize("mode", ["smoe", "rbf"])
@pytest.mark.parametrize("scope", ["raster", "global"])
def test_round_trip_renders_identically(tmp_path, mode, scope):
    model = _random_model()
    _save(tmp_path / "m.npz", model, mode=mode, scope=scope, height=HEIGHT, width=WIDTH)
    loaded = load_model(tmp_path / "m.npz")
    assert (loaded.mode, loaded.scope, loaded.frame) == (mode, scope, (HEIGHT, WIDTH))
    expected = smoe.rasterizer.render(model, HEIGHT, WIDTH, mode=mode, scope=scope).numpy()
    assert np.array_equal(smoe.render(loaded), expected)


def test_tile_size_travels_with_the_model(tmp_path):
    model = _random_model()
    save_model(tmp_path / "m.npz", FittedModel(model, (HEIGHT, WIDTH), tile_offset=(20, 3), tile=32))
    loaded = load_model(tmp_path / "m.npz")
    assert (loaded.tile, loaded.tile_offset) == (32, (20, 3))
    expected = smoe.rasterizer.render(model, HEIGHT, WIDTH, tile=32, tile_offset=(20, 3)).numpy()
    assert np.array_equal(smoe.render(loaded), expected)
    arrays, meta = _contents(tmp_path / "m.npz")
    del meta["tile"]  # a file from before the tile size was a choice: 16, whose offsets stop at 15
    with pytest.raises(ModelFileError, match="tile_offset"):
        load_model(_rewrite(tmp_path / "old.npz", arrays, meta))
    meta["tile_offset"] = [2, 3]
    assert load_model(_rewrite(tmp_path / "old.npz", arrays, meta)).tile == 16
    for bad in (12, "32", 128):
        meta["tile"] = bad
        with pytest.raises(ModelFileError, match="tile"):
            load_model(_rewrite(tmp_path / "bad.npz", arrays, meta))


def test_round_trip_preserves_arrays_and_meta(model_path):
    fitted, meta = read_model_file(model_path)
    original = _random_model().numpy()
    for name, array in fitted.model.numpy().items():
        assert array.dtype == np.float32
        assert np.array_equal(array, original[name])
    assert meta["format"] == "smoe-model" and meta["format_version"] == FORMAT_VERSION
    assert meta["channels"] == 3 and meta["smoe_version"] == smoe.__version__
    assert meta["spec"] == SPEC.to_dict() and fitted.spec == SPEC


def test_float64_preserved(tmp_path):
    model = _random_model(dtype=torch.float64)
    _save(tmp_path / "m.npz", model, mode="rbf", scope="global", height=HEIGHT, width=WIDTH)
    loaded = load_model(tmp_path / "m.npz").model
    assert loaded.dtype == torch.float64
    for name in ("mu", "chol", "pi", "experts"):
        assert torch.equal(getattr(loaded, name), getattr(model, name))


def test_grey_and_empty_models(tmp_path):
    for model in (_random_model(channels=1), Model.empty(channels=1), Model.empty(channels=3)):
        _save(tmp_path / "m.npz", model)
        loaded, meta = read_model_file(tmp_path / "m.npz")
        assert len(loaded.model) == len(model) and loaded.model.channels == model.channels == meta["channels"]


def test_spec_with_numpy_values(tmp_path):
    spec = FitSpec(lr_mu=np.float32(0.5), seed=np.int64(7), init_options={"tags": ("a", "b"), "k": np.int32(3)})
    _save(tmp_path / "m.npz", _random_model(), spec=spec)
    _, meta = read_model_file(tmp_path / "m.npz")
    assert (meta["spec"]["lr_mu"], meta["spec"]["seed"]) == (0.5, 7)
    assert meta["spec"]["init_options"] == {"tags": ["a", "b"], "k": 3}


def test_meta_as_unicode_scalar_accepted(model_path):
    arrays, meta = _contents(model_path)
    _rewrite(model_path, arrays, np.array(json.dumps(meta)))
    assert len(load_model(model_path).model) == 30


def test_save_is_atomic_and_leaves_no_temp_files(tmp_path):
    path = tmp_path / "m.npz"
    _save(path, _random_model())
    old = path.read_bytes()
    with pytest.raises(ValueError, match="JSON"):
        _save(path, _random_model(), spec=FitSpec(init_options={"bad": object()}))
    assert path.read_bytes() == old
    assert [p.name for p in tmp_path.iterdir()] == ["m.npz"]


# ---------------------------------------------------------------- save errors
@pytest.mark.parametrize("kwargs,match", [
    ({"mode": "gmm"}, "mode"),
    ({"scope": "tiles"}, "scope"),
    ({"height": 0}, "frame"),
    ({"width": -3}, "frame"),
    ({"width": 2.5}, "frame"),
    ({"spec": {"iters": 2}}, "spec"),
])
def test_save_rejects_bad_arguments(tmp_path, kwargs, match):
    args = {"mode": "smoe", "scope": "raster", "height": 8, "width": 9, **kwargs}
    with pytest.raises(ValueError, match=match):
        _save(tmp_path / "m.npz", _random_model(), **args)
    assert not (tmp_path / "m.npz").exists()


def test_save_rejects_invalid_model(tmp_path):
    model = _random_model()
    bad = Model.unchecked(model.mu, -model.chol, model.pi, model.experts)
    with pytest.raises(ValueError, match="Cholesky"):
        _save(tmp_path / "m.npz", bad)


# ---------------------------------------------------------------- load errors
def _assert_refused(path, match):
    with pytest.raises(ModelFileError, match=match) as info:
        load_model(path)
    assert "\n" not in str(info.value)
    return info.value


def test_missing_file(tmp_path):
    _assert_refused(tmp_path / "nope.npz", "no such model file")


def test_text_file(tmp_path):
    (tmp_path / "m.npz").write_text("mu = [1, 2]\n")
    _assert_refused(tmp_path / "m.npz", "not an .npz")


def test_npy_file(tmp_path):
    np.save(tmp_path / "m.npy", np.zeros((3, 2)))
    _assert_refused(tmp_path / "m.npy", "not an .npz")


def test_directory(tmp_path):
    _assert_refused(tmp_path, "directory")


@pytest.mark.parametrize("keep", [0.9, 0.5, 0.1])
def test_truncated_file(model_path, keep):
    data = model_path.read_bytes()
    model_path.write_bytes(data[: max(4, int(len(data) * keep))])
    _assert_refused(model_path, "truncated or corrupt")


def test_corrupted_bytes(model_path):
    data = bytearray(model_path.read_bytes())
    start = data.index(b"mu.npy") + 40  # inside the compressed data of mu
    data[start:start + 16] = bytes(16)
    model_path.write_bytes(bytes(data))
    _assert_refused(model_path, "corrupt")


@pytest.mark.parametrize("name", ["mu", "chol", "pi", "experts", "meta"])
def test_missing_array(model_path, name):
    arrays, meta = _contents(model_path)
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    del arrays[name]
    _rewrite(model_path, arrays)
    _assert_refused(model_path, f"missing array.*{name}")


def test_object_array_refused(model_path):
    arrays, meta = _contents(model_path)
    arrays["chol"] = np.array([[1.0, 0.0, 1.0]] * 30, dtype=object)
    _rewrite(model_path, arrays, meta)  # np.savez pickles object arrays
    _assert_refused(model_path, "pickled")


class _Payload:
    """Unpickling this creates a marker file: stands in for arbitrary code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_malicious_pickle_does_not_run(model_path, tmp_path):
    marker = tmp_path / "pwned"
    arrays, meta = _contents(model_path)
    arrays["mu"] = np.array([_Payload(marker)], dtype=object)
    _rewrite(model_path, arrays, meta)
    _assert_refused(model_path, "pickled")
    assert not marker.exists()
    # The payload is live: a careless loader would have run it.
    with np.load(model_path, allow_pickle=True) as archive:
        archive["mu"]
    assert marker.exists()


def test_unknown_format_name(model_path):
    arrays, meta = _contents(model_path)
    _rewrite(model_path, arrays, {**meta, "format": "gaussian-image"})
    _assert_refused(model_path, "not a smoe model file")


def test_newer_format_version(model_path):
    arrays, meta = _contents(model_path)
    _rewrite(model_path, arrays, {**meta, "format_version": FORMAT_VERSION + 1})
    _assert_refused(model_path, "newer smoe.*upgrade")


@pytest.mark.parametrize("changes,match", [
    ({"format_version": 0}, "format_version"),
    ({"format_version": "1"}, "format_version"),
    ({"mode": "gmm"}, "mode"),
    ({"scope": None}, "scope"),
    ({"height": 0}, "height"),
    ({"width": -5}, "width"),
    ({"width": 5.0}, "width"),
    ({"channels": 2}, "channels"),
    ({"channels": 1}, "experts"),  # experts have 3 channels
    ({"spec": [1]}, "spec"),
    ({"tile_offset": [0]}, "tile_offset"),
])
def test_bad_metadata_values(model_path, changes, match):
    arrays, meta = _contents(model_path)
    _rewrite(model_path, arrays, {**meta, **changes})
    _assert_refused(model_path, match)


def test_metadata_missing_key(model_path):
    arrays, meta = _contents(model_path)
    del meta["height"]
    _rewrite(model_path, arrays, meta)
    _assert_refused(model_path, "metadata lacks 'height'")


@pytest.mark.parametrize("raw,match", [
    (np.frombuffer(b"{not json", np.uint8), "JSON"),
    (np.frombuffer(b"[1, 2]", np.uint8), "JSON object"),
    (np.frombuffer(b"\xff\xfe", np.uint8), "UTF-8"),
    (np.zeros(4, np.float32), "uint8"),
])
def test_bad_metadata_encoding(model_path, raw, match):
    arrays, _ = _contents(model_path)
    _rewrite(model_path, arrays, raw)
    _assert_refused(model_path, match)


@pytest.mark.parametrize("name,shape", [
    ("mu", (30, 3)), ("mu", (30,)), ("chol", (30, 2)), ("pi", (30, 1)), ("pi", (29,)), ("experts", (30, 1)),
])
def test_wrong_shapes(model_path, name, shape):
    arrays, meta = _contents(model_path)
    arrays[name] = np.ones(shape, np.float32)
    _rewrite(model_path, arrays, meta)
    _assert_refused(model_path, f"'{name}' has shape")


def test_integer_dtype(model_path):
    arrays, meta = _contents(model_path)
    arrays["pi"] = np.ones(30, np.int64)
    _rewrite(model_path, arrays, meta)
    _assert_refused(model_path, "dtype int64")


def test_mixed_dtypes(model_path):
    arrays, meta = _contents(model_path)
    arrays["experts"] = arrays["experts"].astype(np.float64)
    _rewrite(model_path, arrays, meta)
    _assert_refused(model_path, "dtype")


@pytest.mark.parametrize("name", ["mu", "chol", "pi", "experts"])
def test_non_finite_values(model_path, name):
    arrays, meta = _contents(model_path)
    arrays[name] = arrays[name].copy()
    arrays[name].flat[4] = np.nan
    _rewrite(model_path, arrays, meta)
    error = _assert_refused(model_path, "not finite")
    assert "invalid model" in str(error)


def test_negative_cholesky_diagonal(model_path):
    arrays, meta = _contents(model_path)
    arrays["chol"] = arrays["chol"].copy()
    arrays["chol"][7, 2] = -0.2
    _rewrite(model_path, arrays, meta)
    _assert_refused(model_path, "kernel 7: Cholesky diagonal must be positive")


def test_non_npy_member(model_path, tmp_path):
    # A zip whose "pi" member is not a .npy file at all.
    import zipfile

    arrays, meta = _contents(model_path)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, array in arrays.items():
            if name != "pi":
                stream = io.BytesIO()
                np.save(stream, array)
                archive.writestr(f"{name}.npy", stream.getvalue())
        stream = io.BytesIO()
        np.save(stream, np.frombuffer(json.dumps(meta).encode(), np.uint8))
        archive.writestr("meta.npy", stream.getvalue())
        archive.writestr("pi.npy", b"definitely not npy")
    model_path.write_bytes(buffer.getvalue())
    _assert_refused(model_path, "pi")
