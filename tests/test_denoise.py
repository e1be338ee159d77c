"""smoe.denoising: shifted tile grids, averaging, workers, noise and input checks (tiny images, few steps)."""

import importlib.util
import warnings

import numpy as np
import pytest
import torch

from smoe import render
from smoe.denoising import (DEFAULT_AREA_POWER, DEFAULT_CHROMA_MODELS, STOP_CORR, STOP_FACTOR, default_kernels,
                            denoise, shift_offsets)
from smoe.noise import add_noise, estimate_noise

H, W = 48, 64
FAST = {"n_kernels": 40, "iters": 15}


def _clean():
    y, x = np.mgrid[0:H, 0:W] / np.array([H, W])[:, None, None]
    disc = ((x - 0.6) ** 2 + (y - 0.5) ** 2 < 0.06).astype(np.float32)
    return np.stack([x, y, 0.3 + 0.5 * disc], axis=2).astype(np.float32)


@pytest.fixture(scope="module")
def noisy():
    return add_noise(_clean(), 0.01, seed=3)


# ===================================================================== offsets
@pytest.mark.parametrize("step", [1, 2, 4, 8, 16])
def test_shift_step_gives_the_full_grid(step):
    offsets = shift_offsets(shift_step=step)
    n = 16 // step
    assert len(offsets) == n * n == len(set(offsets))
    assert offsets[0] == (0, 0)
    values = sorted({o for pair in offsets for o in pair})
    assert values == list(range(0, 16, step))


@pytest.mark.parametrize("models", [1, 2, 3, 4, 5, 8, 12, 16, 32, 64, 100, 255, 256])
def test_any_model_count_gives_distinct_offsets_in_range(models):
    offsets = shift_offsets(models)
    assert len(offsets) == models == len(set(offsets))
    assert all(0 <= oy < 16 and 0 <= ox < 16 for oy, ox in offsets)
    assert offsets[0] == (0, 0)


def test_square_counts_match_the_paper_and_eight_spreads_both_axes():
    for step, models in ((2, 64), (4, 16), (8, 4), (16, 1)):
        assert shift_offsets(models) == shift_offsets(shift_step=step)
    eight = shift_offsets(8)
    assert sorted(oy for oy, _ in eight) == sorted(ox for _, ox in eight) == list(range(0, 16, 2))
    assert shift_offsets(16, 4) == shift_offsets(shift_step=4)


@pytest.mark.parametrize("kwargs, match", [
    ({"shift_step": 3}, "divide the tile size"), ({"shift_step": 0}, "divide"), ({"shift_step": 32}, "divide"),
    ({"models": 0}, "models must be"), ({"models": 257}, "models must be"), ({"models": 2.5}, "models must be"),
    ({"models": 8, "shift_step": 4}, "gives 16 models"),
])
def test_bad_counts_and_steps(kwargs, match):
    with pytest.raises(ValueError, match=match):
        shift_offsets(**kwargs)


# =================================================================== averaging
def test_output_is_the_mean_of_the_shifted_renders(noisy):
    out, fitted = denoise(noisy, 3, chroma_models=0, return_models=True, **FAST)
    assert out.shape == noisy.shape and out.dtype == np.float32
    assert [m.tile_offset for m in fitted] == shift_offsets(3)
    assert [m.seed for m in fitted] == [0, 1, 2]
    with torch.no_grad():
        renders = [render(m.model, H, W, tile_offset=m.tile_offset).numpy() for m in fitted]
    np.testing.assert_allclose(out, np.mean(renders, axis=0), atol=1e-6)
    # The models differ (seeds and offsets), so averaging does something.
    assert np.abs(renders[0] - renders[1]).max() > 1e-3


def test_colour_models_give_the_chroma_and_the_first_models_the_channel_mean(noisy):
    out, fitted = denoise(noisy, 3, chroma_models=2, return_models=True, **FAST)
    main, colour = fitted[:3], fitted[3:]
    assert [m.chroma for m in fitted] == [False] * 3 + [True] * 2
    assert [m.seed for m in colour] == [3, 4] and [m.tile_offset for m in colour] == shift_offsets(2)
    assert all(m.extent == (H, W) for m in main) and all(m.extent == (H // 2, W // 2) for m in colour)
    with torch.no_grad():
        brightness = np.mean([render(m.model, H, W, tile_offset=m.tile_offset).numpy() for m in main], axis=0)
        chroma = np.mean([render(m.model, H, W, extent=m.extent, tile_offset=m.tile_offset).numpy()
                          for m in colour], axis=0)
    np.testing.assert_allclose(out.mean(axis=2), brightness.mean(axis=2), atol=1e-6)
    np.testing.assert_allclose(out - out.mean(axis=2, keepdims=True),
                               chroma - chroma.mean(axis=2, keepdims=True), atol=1e-6)
    # The colour models start where the first ones did not: they change the result.
    assert np.abs(out - brightness).max() > 1e-3


def test_half_resolution_averages_blocks_and_doubles_an_odd_edge():
    from smoe.denoising import _half_resolution

    image = np.arange(5 * 7 * 3, dtype=np.float32).reshape(5, 7, 3)
    half = _half_resolution(image)
    assert half.shape == (3, 4, 3)
    np.testing.assert_allclose(half[0, 0], image[:2, :2].mean(axis=(0, 1)))
    np.testing.assert_allclose(half[2, 3], image[4, 6])
    np.testing.assert_allclose(half[1, 3], image[2:4, 6].mean(axis=0))


def test_odd_sized_colour_image_and_grey_ignoring_colour_models(noisy):
    odd = noisy[:-1, :-3]
    assert denoise(odd, 1, chroma_models=1, **FAST).shape == odd.shape
    grey = noisy[:, :, 0]
    assert np.array_equal(denoise(grey, 1, chroma_models=3, **FAST), denoise(grey, 1, chroma_models=0, **FAST))


@pytest.mark.parametrize("bad", [-1, 257, 2.5, True, "4"])
def test_bad_colour_model_counts(noisy, bad):
    with pytest.raises(ValueError, match="chroma_models must be"):
        denoise(noisy, 1, chroma_models=bad, **FAST)


def test_denoising_beats_the_noisy_input(noisy):
    clean = _clean()
    out = denoise(noisy, 2, n_kernels=60, iters=60)
    assert np.mean((out - clean) ** 2) < 0.5 * np.mean((noisy - clean) ** 2)


def test_grey_input_keeps_its_shape_and_random_init_and_rbf_work(noisy):
    grey = noisy[:, :, 0]
    assert denoise(grey, 1, **FAST).shape == (H, W)
    assert denoise(noisy, 1, init="random", **FAST).shape == noisy.shape
    assert np.isfinite(denoise(noisy, 1, mode="rbf", **FAST)).all()


def test_precomputed_labels_are_used_as_given(noisy, monkeypatch):
    import smoe.denoising as dn

    monkeypatch.setattr(dn, "mdbscan", lambda *a, **k: pytest.fail("MDBSCAN ran although labels were given"))
    labels = np.ones((H, W), np.int32)
    labels[:, W // 2:] = 2
    assert denoise(noisy, 1, init_options={"labels": labels}, **FAST).shape == noisy.shape


def test_area_power_reaches_the_segment_initializer(noisy, monkeypatch):
    import smoe.initializers.segment as seg

    seen = []
    real = seg._share_budget
    monkeypatch.setattr(seg, "_share_budget", lambda area, n, power: seen.append(power) or real(area, n, power))
    labels = np.ones((H, W), np.int32)
    labels[:, W // 2:] = 2
    denoise(noisy, 1, chroma_models=0, init_options={"labels": labels}, **FAST)
    denoise(noisy, 1, chroma_models=0, area_power=0.0, init_options={"labels": labels}, **FAST)
    denoise(noisy, 1, chroma_models=0, area_power=0.0, init_options={"labels": labels, "area_power": 1.0}, **FAST)
    # The colour models share the option, with the labels sampled at half resolution.
    denoise(noisy, 1, chroma_models=2, area_power=0.25, init_options={"labels": labels}, **FAST)
    assert seen == [DEFAULT_AREA_POWER, 0.0, 1.0, 0.25, 0.25, 0.25]


@pytest.mark.dask
@pytest.mark.skipif(importlib.util.find_spec("distributed") is None, reason="workers=2 starts Dask processes")
def test_two_workers_give_exactly_the_same_image(noisy):
    one = denoise(noisy, 4, workers=1, **FAST)
    two = denoise(noisy, 4, workers=2, **FAST)
    assert np.array_equal(one, two)


def test_kernel_budget_follows_the_noise_level():
    base = default_kernels(512, 768)
    assert 0 < base < 512 * 768
    assert default_kernels(512, 768, 0.05) == 2 * base
    assert default_kernels(512, 768, 0.07) > base == default_kernels(512, 768, 0.1) == default_kernels(512, 768, 0.3)
    assert default_kernels(2, 2) >= 1


# ======================================================================= noise
def test_add_noise_is_seeded_and_clipped():
    clean = _clean()
    a, b = add_noise(clean, 0.01, seed=1), add_noise(clean, 0.01, seed=1)
    assert np.array_equal(a, b) and not np.array_equal(a, add_noise(clean, 0.01, seed=2))
    assert a.min() >= 0 and a.max() <= 1 and a.dtype == np.float32
    raw = add_noise(clean, 0.01, seed=1, clip=False)
    assert raw.min() < 0 or raw.max() > 1
    assert 0.08 < np.std(raw - clean) < 0.12
    with pytest.raises(ValueError, match="variance"):
        add_noise(clean, -0.1)


# ================================================================ noise level
def _smooth(h=160, w=192, channels=3):
    y, x = np.mgrid[0:h, 0:w] / np.array([h, w])[:, None, None]
    planes = [0.5 + 0.3 * np.sin(3 * x + k) * np.cos(2 * y - k) for k in range(channels)]
    return np.stack(planes, axis=2).astype(np.float32)


@pytest.mark.parametrize("sigma", [0.02, 0.05, 0.1])
@pytest.mark.parametrize("channels", [1, 3])
def test_noise_level_is_estimated_within_five_percent(sigma, channels):
    clean = _smooth(channels=channels)
    noisy = add_noise(clean, sigma ** 2, seed=5, clip=False)
    assert estimate_noise(noisy) == pytest.approx(sigma, rel=0.05)
    assert estimate_noise(noisy[:, :, 0]) == pytest.approx(sigma, rel=0.05)


def test_noise_estimate_of_clean_images_is_tiny():
    assert estimate_noise(np.full((20, 30), 0.4)) == 0.0
    assert estimate_noise(_smooth()) < 0.002


def test_noise_estimate_needs_a_whole_patch():
    with pytest.raises(ValueError, match="smaller than one 7x7 patch.*sigma"):
        estimate_noise(np.zeros((6, 40)))
    with pytest.raises(ValueError, match="patch"):
        estimate_noise(np.zeros((20, 20)), patch=1)


def _spied_fits(monkeypatch, noisy, **kwargs):
    """(settings, FitResult) of every fit denoise() runs (in-process)."""
    import smoe.denoising as dn

    seen = []
    real = dn.fit

    def spy(*args, **settings):
        result = real(*args, **settings)
        seen.append((settings, result))
        return result

    monkeypatch.setattr(dn, "fit", spy)
    denoise(noisy, 2, workers=1, **{**FAST, **kwargs})
    return seen


def test_brightness_models_stop_on_residual_correlation_and_colour_models_on_energy(noisy, monkeypatch):
    seen = [settings for settings, _ in _spied_fits(monkeypatch, noisy, sigma=0.1)]
    main, colour = seen[:2], seen[2:]
    assert len(colour) == DEFAULT_CHROMA_MODELS
    assert all(s["target_corr"] == STOP_CORR and "target_psnr" not in s for s in main)
    # The colour models fit a 2 x 2 average, whose noise has half the standard deviation.
    assert all(s["target_corr"] is None for s in colour)
    assert all(s["target_psnr"] == pytest.approx(-10 * np.log10(STOP_FACTOR * 0.05 ** 2)) for s in colour)


def test_without_a_correlation_rule_the_models_stop_at_the_noise_variance(noisy, monkeypatch):
    given = _spied_fits(monkeypatch, noisy, sigma=0.1, stop_corr=None)[0][0]
    assert given["target_psnr"] == pytest.approx(-10 * np.log10(STOP_FACTOR * 0.01))
    estimated = _spied_fits(monkeypatch, noisy, stop_corr=None)[0][0]
    assert estimated["target_psnr"] == pytest.approx(-10 * np.log10(STOP_FACTOR * estimate_noise(noisy) ** 2))
    unstopped = _spied_fits(monkeypatch, noisy, stop_corr=None, stop_factor=None)[0][0]
    assert "target_psnr" not in unstopped and unstopped["log_every"] == FAST["iters"]
    assert "target_psnr" not in _spied_fits(monkeypatch, noisy, sigma=0.0, stop_corr=None)[0][0]


def test_a_met_stop_rule_ends_the_fits_early(noisy, monkeypatch):
    # Within sigma = 0.5 of the noisy image from the start, so every model stops at the first check.
    for _, result in _spied_fits(monkeypatch, noisy, iters=200, sigma=0.5, stop_corr=None):
        assert result.stop_reason == "target_psnr" and result.extras["returned_steps"] <= 10
    # Any residual's neighbour correlation is at most 1.
    for _, result in _spied_fits(monkeypatch, noisy, iters=200, chroma_models=0, stop_corr=1.0):
        assert result.stop_reason == "target_corr" and result.settings["iterations"] == 10
    for _, result in _spied_fits(monkeypatch, noisy, iters=30, chroma_models=0, stop_corr=-1.0):
        assert result.stop_reason == "iterations"
    for _, result in _spied_fits(monkeypatch, noisy, iters=30, sigma=0.5, stop_corr=None, stop_factor=None):
        assert result.stop_reason == "iterations"


# ===================================================================== inputs
def test_values_outside_the_unit_range_are_clipped_with_a_warning(noisy):
    shifted = noisy * 1.4 - 0.2
    with pytest.warns(UserWarning, match=r"outside \[0, 1\].*clipped"):
        out = denoise(shifted, 1, **FAST)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        same = denoise(np.clip(shifted, 0, 1), 1, **FAST)
    assert np.array_equal(out, same)


@pytest.mark.parametrize("kwargs, match", [
    ({"models": 0}, "models must be"), ({"models": None, "shift_step": 5}, "divide the tile size"),
    ({"workers": 0}, "workers"), ({"n_kernels": 0}, "n_kernels"), ({"n_kernels": H * W + 1}, "n_kernels"),
    ({"iters": 0}, "iters"), ({"mode": "nope"}, "mode"), ({"init": "nope"}, "unknown initializer"),
    ({"threshold": -1}, "threshold"), ({"sigma": float("nan")}, "sigma"), ({"stop_factor": 0}, "stop_factor"),
    ({"stop_factor": float("inf")}, "stop_factor"), ({"stop_corr": 1.5}, "stop_corr"),
    ({"stop_corr": float("nan")}, "stop_corr"), ({"stop_corr": "low"}, "stop_corr"),
    ({"mode": "rbf", "lam": 1e-4}, "SMoE gates"), ({"area_power": 1.5}, "area_power"),
    ({"area_power": float("nan")}, "area_power"), ({"init_options": {"area_power": -1}}, "area_power"),
    ({"chroma_models": -1}, "chroma_models"),
])
def test_bad_arguments_raise_one_line_errors(noisy, kwargs, match):
    with pytest.raises(ValueError, match=match) as info:
        denoise(noisy, **{"iters": 5, **kwargs})
    assert "\n" not in str(info.value)


def test_nan_input_is_refused(noisy):
    bad = noisy.copy()
    bad[3, 4, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        denoise(bad, 1, **FAST)


# ========================================================================= CLI
@pytest.fixture
def noisy_file(tmp_path, noisy):
    from smoe.imageio import write_image

    path = tmp_path / "noisy.png"
    write_image(path, noisy)
    return path


def _one_line_error(capsys):
    err = capsys.readouterr().err
    assert err.startswith("smoe: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_cli_denoise_end_to_end(noisy_file, tmp_path, capsys):
    from smoe.cli import main
    from smoe.imageio import read_image

    out = tmp_path / "sub" / "clean.png"
    assert main(["denoise", str(noisy_file), "--models", "2", "-n", "40", "--iters", "10", "--workers", "1",
                 "-o", str(out)]) == 0
    captured = capsys.readouterr()
    assert "wrote" in captured.out and "model 2/2" in captured.err and "(estimated)" in captured.out
    assert "colour model 4/4" in captured.err and "colour from 4 half-resolution models" in captured.out
    assert read_image(out).shape == (H, W, 3)
    joint = tmp_path / "joint.png"
    assert main(["denoise", str(noisy_file), "--models", "2", "-n", "40", "--iters", "10", "--workers", "1",
                 "--chroma-models", "0", "-o", str(joint)]) == 0
    assert "colour model" not in capsys.readouterr().err
    assert not np.array_equal(read_image(joint), read_image(out))
    quiet = tmp_path / "q.png"
    assert main(["denoise", str(noisy_file), "--shift-step", "16", "--init", "random", "--mode", "rbf", "-n", "40",
                 "--iters", "5", "--workers", "1", "--quiet", "-o", str(quiet)]) == 0
    assert capsys.readouterr().out == ""
    assert quiet.exists()


@pytest.mark.parametrize("options", [
    ["--models", "0"], ["--models", "300"], ["--shift-step", "3"], ["--shift-step", "0"],
    ["--models", "4", "--shift-step", "8"], ["--threshold", "0"], ["--sigma", "-0.1"], ["--sigma", "25"],
    ["-n", "0"], ["-n", str(H * W + 1)], ["--iters", "0"], ["--workers", "0"], ["--init", "nope"],
    ["--mode", "nope"], ["--area-power", "1.5"], ["--area-power", "-0.5"], ["--area-power", "nan"],
    ["--chroma-models", "-1"], ["--chroma-models", "257"], ["--chroma-models", "two"],
])
def test_cli_denoise_rejects_bad_options(options, noisy_file, tmp_path, capsys, monkeypatch):
    import smoe.denoising as dn
    from smoe.cli import main

    monkeypatch.setattr(dn, "fit", lambda *a, **k: pytest.fail("fitted although the request is invalid"))
    out = tmp_path / "o" / "clean.png"
    assert main(["denoise", str(noisy_file), *options, "-o", str(out)]) == 2
    _one_line_error(capsys)
    assert not (tmp_path / "o").exists()


def test_cli_denoise_of_an_image_too_small_to_estimate_asks_for_sigma(tmp_path, capsys):
    from smoe.cli import main
    from smoe.imageio import write_image

    tiny = tmp_path / "tiny.png"
    write_image(tiny, np.full((5, 5, 3), 0.5, dtype=np.float32))
    out = tmp_path / "o" / "clean.png"
    assert main(["denoise", str(tiny), "-o", str(out)]) == 2
    assert "--sigma" in _one_line_error(capsys)
    assert not (tmp_path / "o").exists()
    assert main(["denoise", str(tiny), "--sigma", "0.1", "-n", "2", "--iters", "2", "--workers", "1",
                 "-o", str(out)]) == 0


def test_cli_denoise_failure_leaves_nothing(noisy_file, tmp_path, capsys, monkeypatch):
    import smoe.denoising as dn
    from smoe.cli import main

    def broken(*args, **kwargs):
        raise ValueError("simulated failure")

    monkeypatch.setattr(dn, "fit", broken)
    out = tmp_path / "a" / "clean.png"
    assert main(["denoise", str(noisy_file), "--models", "1", "--workers", "1", "-o", str(out)]) == 2
    assert "simulated failure" in _one_line_error(capsys)
    assert not (tmp_path / "a").exists()
    assert main(["denoise", str(tmp_path / "missing.png"), "-o", str(out)]) == 2
    _one_line_error(capsys)


def test_package_exports_the_applications():
    import smoe
    from smoe.segment import mdbscan
    from smoe.superres import upscale

    assert smoe.denoise is denoise and smoe.upscale is upscale and smoe.mdbscan is mdbscan
