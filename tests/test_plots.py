"""Figures: valid PNGs, correct ellipse geometry, subsampling, no global matplotlib side effects."""

import time

import matplotlib
import numpy as np
import pytest
import torch
from PIL import Image

from conftest import random_model
from smoe import plots
from smoe.model import precision_from_chol


def _history(n=12):
    return [{"iteration": 10 * (i + 1), "loss": 0.1 / (i + 1), "psnr": 15.0 + i, "kernels": 100 - i,
             "kernels_per_tile": 20.0, "seconds": 0.5 * (i + 1)} for i in range(n)]


def _open_png(path):
    with Image.open(path) as im:
        assert im.format == "PNG"
        im.load()
        return im.size


def test_plot_convergence_writes_png(tmp_path):
    path = tmp_path / "conv.png"
    plots.plot_convergence(_history(), path, title="test")
    width, height = _open_png(path)
    assert 600 <= width <= 2000 and 400 <= height <= 1500
    assert [p.name for p in tmp_path.iterdir()] == ["conv.png"]  # no temporary file left behind


def test_plot_convergence_single_record(tmp_path):
    plots.plot_convergence(_history(1), tmp_path / "one.png")
    _open_png(tmp_path / "one.png")


def test_plot_convergence_rejects_empty_history(tmp_path):
    with pytest.raises(ValueError, match="empty"):
        plots.plot_convergence([], tmp_path / "x.png")
    with pytest.raises(ValueError, match="psnr"):
        plots.plot_convergence([{"iteration": 1, "kernels": 1, "seconds": 0.1}], tmp_path / "x.png")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("channels", [1, 3])
def test_draw_kernels_writes_png(tmp_path, channels):
    h, w = 48, 64
    image = np.random.default_rng(0).random((h, w) if channels == 1 else (h, w, 3)).astype(np.float32)
    path = tmp_path / "k.png"
    plots.draw_kernels(image, random_model(40, h, w, channels=channels), path)
    width, height = _open_png(path)
    assert width >= w and height >= h
    assert abs(width / (height - 30) - w / h) < 0.05  # image aspect kept; 30 px title band


def test_draw_kernels_subsamples_deterministically(tmp_path, monkeypatch):
    drawn = []
    real = plots.ellipse_outlines
    monkeypatch.setattr(plots, "ellipse_outlines", lambda m, *a, **k: drawn.append(m.mu.clone()) or real(m, *a, **k))
    image = np.zeros((32, 32, 3), np.float32)
    model = random_model(200, 32, 32)
    for name in ("a.png", "b.png"):
        plots.draw_kernels(image, model, tmp_path / name, max_kernels=25)
    assert drawn[0].shape == (25, 2)
    assert torch.equal(drawn[0], drawn[1])
    plots.draw_kernels(image, model, tmp_path / "all.png", max_kernels=500)
    assert drawn[2].shape == (200, 2)


def test_draw_kernels_ten_thousand_is_fast(tmp_path):
    model = random_model(10_000, 256, 384, scale=(0.1, 0.6))
    start = time.perf_counter()
    plots.draw_kernels(np.full((256, 384, 3), 0.5, np.float32), model, tmp_path / "k.png", max_kernels=10_000)
    assert time.perf_counter() - start < 20.0  # a few seconds normally; generous for a loaded machine
    _open_png(tmp_path / "k.png")


def test_draw_kernels_empty_model(tmp_path):
    from smoe import Model

    plots.draw_kernels(np.zeros((20, 30)), Model.empty(channels=1), tmp_path / "e.png")
    _open_png(tmp_path / "e.png")


def test_draw_kernels_rejects_bad_arguments(tmp_path):
    model = random_model(5, 10, 10)
    with pytest.raises(ValueError):
        plots.draw_kernels(np.zeros((10, 10, 2)), model, tmp_path / "x.png")
    with pytest.raises(ValueError):
        plots.draw_kernels(np.zeros((10, 10, 3)), model, tmp_path / "x.png", max_kernels=0)
    with pytest.raises(ValueError):
        plots.draw_kernels(np.zeros((10, 10, 3)), model, tmp_path / "x.png", scale=0)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("scale", [1.0, 2.5])
def test_ellipse_outlines_lie_on_the_sigma_ellipse(scale):
    model = random_model(30, 40, 50, dtype=torch.float64, scale=(0.1, 0.9))
    outlines = plots.ellipse_outlines(model, scale)
    assert outlines.shape == (30, plots.OUTLINE_POINTS + 1, 2)
    np.testing.assert_allclose(outlines[:, 0], outlines[:, -1])  # closed
    d = outlines - model.mu.numpy()[:, None, :]
    precision = precision_from_chol(model.chol).numpy()
    mahalanobis2 = np.einsum("lpi,lij,lpj->lp", d, precision, d)
    np.testing.assert_allclose(mahalanobis2, scale**2, rtol=1e-9)
    # The outline's half-extent along x is sqrt(Sigma_xx) * scale.
    cov = model.covariance.numpy()
    half_width = (outlines[:, :, 0].max(1) - outlines[:, :, 0].min(1)) / 2
    np.testing.assert_allclose(half_width, scale * np.sqrt(cov[:, 0, 0]), rtol=0.02)


def test_plots_leave_the_matplotlib_backend_alone(tmp_path):
    before = matplotlib.get_backend()
    plots.plot_convergence(_history(), tmp_path / "c.png")
    assert matplotlib.get_backend() == before
