"""The windowed space-time fit: settings, windows, budgets, and what a fit returns."""

import numpy as np
import pytest
import torch

from smoe.metrics import psnr
from smoe.video import fit_video
from smoe.video.extent import time_sigma
from smoe.video.fitting import VideoFitSpec, _budgets, reconstruct, window_ranges


def _clip(frames=6, h=20, w=24, seed=0):
    """A bright square moving one pixel per frame over a gradient."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    clip = np.repeat(np.stack([x, y, 0.5 * (x + y)], -1)[None], frames, 0).astype(np.float32)
    for f in range(frames):
        clip[f, 5:12, 3 + f:10 + f] = (0.9, 0.2, 0.1)
    return np.clip(clip + 0.01 * rng.standard_normal(clip.shape), 0, 1).astype(np.float32)


@pytest.mark.parametrize("frames, window", [(1, 1), (7, 3), (8, 4), (9, 20)])
def test_windows_cover_the_clip_once(frames, window):
    ranges = window_ranges(frames, window)
    assert [f for a, b in ranges for f in range(a, b)] == list(range(frames))
    budgets = _budgets(100, ranges, frames)
    assert sum(budgets) == 100 and min(budgets) >= 1


def test_auto_window_bounds_the_voxels_per_window():
    spec = VideoFitSpec().validate((132, 720, 1280))
    sizes = [b - a for a, b in window_ranges(132, spec.window)]
    # at most 2^24 voxels (16 frames of 720p, a whole number of 4-frame blocks), in as few windows as that allows
    assert max(sizes) * 720 * 1280 <= 2 ** 24 and len(sizes) == -(-132 // 16)


@pytest.mark.parametrize("fields, word", [
    ({"n_kernels": 0}, "n_kernels"), ({"n_kernels": 10 ** 9}, "n_kernels"), ({"mode": "gmm"}, "mode"),
    ({"iters": 0}, "iters"), ({"window": 0}, "window"), ({"overlap": -1}, "overlap"),
    ({"time_budget": 0}, "time_budget"), ({"min_sigma_t": 0}, "min_sigma_t"), ({"aspect": float("nan")}, "aspect"),
    ({"tile_t": 0}, "tile"), ({"lam": -1}, "lam"),
])
def test_bad_settings_are_refused(fields, word):
    with pytest.raises(ValueError, match=word):
        VideoFitSpec(**{"n_kernels": 40, **fields}).validate((6, 20, 24))


def test_unknown_setting_is_refused():
    with pytest.raises(TypeError, match="unknown fit setting"):
        fit_video(_clip(), 40, iters=2, itres=3)


@pytest.mark.parametrize("mode", ["smoe", "rbf"])
def test_fit_improves_and_reports_every_frame(mode):
    clip = _clip()
    result = fit_video(clip, 80, mode=mode, iters=60, window=3, min_gain=None, log_every=10)
    assert result.fitted.shape == clip.shape[:3] and result.windows == [(0, 3), (3, 6)]
    first = [h["psnr"] for h in result.history if h["window"] == 0]
    assert first[-1] > first[0]
    recon, frame_psnr = reconstruct(result.fitted, clip, 3)
    assert np.allclose(frame_psnr, result.frame_psnr) and np.allclose(recon, result.reconstruction)
    assert np.isclose(result.frame_psnr[2], psnr(clip[2], result.reconstruction[2]))
    assert result.mean_psnr > 20 and len(result.fitted.model) <= 80


def test_fit_is_reproducible():
    a = fit_video(_clip(), 50, iters=15, seed=3, min_gain=None)
    b = fit_video(_clip(), 50, iters=15, seed=3, min_gain=None)
    assert torch.equal(a.fitted.model.mu, b.fitted.model.mu)


def test_time_floor_holds_after_the_fit():
    result = fit_video(_clip(), 60, iters=30, min_sigma_t=1.5, min_gain=None)
    assert float(time_sigma(result.fitted.model.chol).min()) >= 1.5 * (1 - 1e-5)


def test_callback_sees_every_record():
    seen = []
    result = fit_video(_clip(frames=4), 30, iters=20, log_every=5, callback=seen.append, min_gain=None)
    assert seen == result.history and {"window", "iteration", "psnr", "kernels", "seconds"} <= set(seen[0])


def test_bad_clip_is_refused():
    with pytest.raises(ValueError):
        fit_video(np.zeros((3, 8, 8, 2), np.float32), 10)
    with pytest.raises(ValueError):
        fit_video(np.full((3, 8, 8, 3), np.nan, np.float32), 10)
