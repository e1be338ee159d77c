"""FitSpec: one validation, round trips through JSON, presets."""

import json
import subprocess
import sys

import pytest

from smoe.sizes import MAX_OUTPUT_PIXELS, output_size
from smoe.spec import FitSpec, kernel_budget


def test_defaults_validate_and_round_trip_through_json():
    spec = FitSpec(n_kernels=300, init_options={"threshold": 30.0}, tile_offset=(2, 10), target_corr=-0.04)
    assert spec.validate((64, 64, 3)) is spec
    back = FitSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
    assert back == spec and back.tile_offset == (2, 10)


def test_replace_changes_fields_and_refuses_unknown_ones():
    spec = FitSpec().replace(iters=5, mode="rbf")
    assert (spec.iters, spec.mode) == (5, "rbf") and FitSpec().iters == 2500
    with pytest.raises(ValueError, match="unknown fit setting"):
        FitSpec().replace(iterations=5)


def test_from_dict_refuses_unknown_keys_in_one_line():
    with pytest.raises(ValueError) as info:
        FitSpec.from_dict({"iters": 5, "bogus": 1})
    assert "'bogus'" in str(info.value) and "\n" not in str(info.value)


def test_from_dict_fills_missing_fields_and_keeps_unregistered_initializers():
    # A stored spec may name an initializer registered later at run time: only fitting checks the name.
    spec = FitSpec.from_dict({"init": "my-own", "iters": 3})
    assert spec.init == "my-own" and spec.lr_mu == FitSpec().lr_mu
    with pytest.raises(ValueError, match="unknown initializer 'my-own'"):
        spec.validate((8, 8))


@pytest.mark.parametrize("changes, words", [
    ({"mode": "tiles"}, "mode"), ({"scope": "tiles"}, "scope"), ({"iters": 0}, "iters"),
    ({"iters": 2.5}, "iters"), ({"lr_mu": -1.0}, "lr_mu"), ({"lr_pi": float("nan")}, "lr_pi"),
    ({"lam": -1.0}, "lam"), ({"mode": "rbf", "lam": 1e-4}, "L1 sparsity"), ({"prune_every": 0}, "prune_every"),
    ({"log_every": 0}, "log_every"), ({"target_psnr": float("inf")}, "target_psnr"),
    ({"target_corr": 1.5}, "target_corr"), ({"tol": -1.0}, "tol"), ({"time_budget": 0}, "time_budget"),
    ({"n_kernels": 0}, "n_kernels"), ({"n_kernels": True}, "n_kernels"), ({"seed": -1}, "seed"),
    ({"tile_offset": (0, 16)}, "tile_offset"), ({"init": ""}, "init"), ({"init_options": {1: 2}}, "init_options"),
])
def test_every_rule_refuses_in_one_line(changes, words):
    with pytest.raises(ValueError, match=words) as info:
        FitSpec(**changes).validate()
    assert "\n" not in str(info.value)


def test_kernel_budget_is_checked_against_the_image_only_with_a_shape():
    spec = FitSpec(n_kernels=5000)
    spec.validate()  # no shape, no pixel count: nothing to compare with
    with pytest.raises(ValueError, match="pixel count 100"):
        spec.validate((10, 10))
    with pytest.raises(ValueError) as info:
        FitSpec(n_kernels=-3).validate()
    assert "inf" not in str(info.value)  # without a shape no message names an infinite pixel count


def test_ready_model_start_skips_the_initializer_checks():
    FitSpec(init="model", n_kernels=5000).validate((10, 10))


def test_to_dict_refuses_values_json_cannot_hold():
    import numpy as np

    with pytest.raises(ValueError, match="init_options.labels"):
        FitSpec(init_options={"labels": np.zeros((2, 2))}).to_dict()
    assert FitSpec(seed=np.int64(3), lam=np.float32(0.5)).to_dict()["seed"] == 3


def test_kernel_budget_rounds_and_stays_within_the_pixels():
    assert kernel_budget(256, 384, 1 / 24) == 4096
    assert kernel_budget(2, 2, 1e-6) == 1 and kernel_budget(2, 2, 5.0) == 4


def test_output_size_applies_the_pixel_limit():
    assert output_size((24, 32), scale=2.5) == (60, 80) and output_size((24, 32)) == (24, 32)
    with pytest.raises(ValueError, match=f"{MAX_OUTPUT_PIXELS // 1_000_000} megapixels"):
        output_size((10_000, 10_001))
    for bad in ({"scale": -1}, {"scale": float("inf")}, {"size": (0, 5)}, {"scale": 2, "size": (4, 4)}):
        with pytest.raises(ValueError):
            output_size((10, 10), **bad)


def test_spec_loads_without_torch():
    code = "import sys, smoe.spec, smoe.sizes; print('torch' in sys.modules, 'numba' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
