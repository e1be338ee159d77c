import numpy as np
import pytest
import torch

import smoe
from smoe.fitting import fit, neighbour_correlation
from smoe.initializers import available, initialize


def blobs_image(h=40, w=52, channels=3, seed=0):
    """Smooth blobs plus one sharp edge: something a few dozen kernels can learn."""
    g = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] + 0.5
    img = np.zeros((h, w, channels), np.float32)
    for _ in range(4):
        cx, cy, s = g.uniform(0, w), g.uniform(0, h), g.uniform(4, 10)
        img += g.uniform(0.1, 0.4, channels) * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * s * s))[..., None]
    img[:, : w // 3] += 0.3
    return np.clip(img, 0, 1)


@pytest.mark.parametrize("mode,scope", [("smoe", "raster"), ("rbf", "raster"), ("smoe", "global")])
def test_psnr_rises(mode, scope):
    img = blobs_image()
    res = fit(img, 60, mode=mode, scope=scope, iters=60, log_every=10)
    psnrs = [r["psnr"] for r in res.history]
    assert psnrs[-1] > psnrs[0] + 2
    assert res.stop_reason == "iterations" and res.iterations == 60
    recon = smoe.rasterizer.render(res.model, 40, 52, mode=mode, scope=scope).numpy()
    assert abs(smoe.metrics.psnr(img, recon) - res.final_psnr) < 1e-3


@pytest.mark.parametrize("shape", [(33, 47), (33, 47, 1)])
def test_grey_and_odd_sizes(shape):
    img = blobs_image(33, 47, 1).reshape(shape)
    res = fit(img, 40, iters=30)
    assert res.model.channels == 1
    assert res.final_psnr > 15


def test_l1_sparsity_prunes_kernels():
    img = blobs_image()
    dense = fit(img, 150, iters=300, lam=0.0)
    sparse = fit(img, 150, iters=300, lam=1e-4, lr_pi=0.01, prune_every=50, grow_start=None)
    assert len(dense.model) == 150
    assert len(sparse.model) < 150
    assert (sparse.model.pi > 0).all()
    assert sparse.history[-1]["kernels"] == len(sparse.model)
    kernels = [r["kernels"] for r in sparse.history]
    assert kernels == sorted(kernels, reverse=True)


def test_same_seed_same_result_and_seed_matters():
    img = blobs_image()
    a = fit(img, 50, iters=20, seed=3)
    b = fit(img, 50, iters=20, seed=3)
    c = fit(img, 50, iters=20, seed=4)
    for name in ("mu", "chol", "pi", "experts"):
        assert torch.equal(getattr(a.model, name), getattr(b.model, name))
    assert not torch.equal(a.model.mu, c.model.mu)


def test_returns_the_lowest_loss_iterate():
    # A far too large expert learning rate makes the loss jump around; the
    # returned model must be the best iterate seen, not the last one.
    img = blobs_image()
    res = fit(img, 60, iters=40, lr_experts=0.5, log_every=1)
    logged = [r["psnr"] for r in res.history[:-1]]
    assert res.final_psnr >= max(logged) - 1e-4
    steps = res.extras["returned_steps"]
    assert 0 <= steps <= 40
    if steps < 40:
        assert res.final_psnr == pytest.approx(res.history[steps]["psnr"], abs=1e-4)
    rendered = smoe.rasterizer.render(res.model, *img.shape[:2]).numpy()
    assert -10 * np.log10(np.mean((rendered - img) ** 2)) == pytest.approx(res.final_psnr, abs=1e-3)


def test_stopping_rules():
    img = blobs_image()
    early = fit(img, 60, iters=300, target_psnr=20.0)
    assert early.stop_reason == "target_psnr" and early.iterations < 300
    plateau = fit(img, 60, iters=400, tol=0.05, log_every=10)
    assert plateau.stop_reason == "plateau" and plateau.iterations < 400
    budget = fit(img, 60, iters=100000, time_budget=0.5)
    assert budget.stop_reason == "time_budget"


def test_the_correlation_rule_stops_at_the_first_log_point_at_or_below_its_target():
    noisy = np.clip(blobs_image() + np.random.default_rng(0).normal(0, 0.05, (40, 52, 3)), 0, 1).astype(np.float32)
    result = fit(noisy, 60, iters=300, target_corr=0.0, log_every=10)
    corr = [rec["residual_corr"] for rec in result.history]
    assert result.stop_reason == "target_corr" and result.iterations == 10 * len(corr) < 300
    assert corr[-1] <= 0.0 < min(corr[:-1])


def test_neighbour_correlation_of_known_residuals():
    noise = torch.from_numpy(np.random.default_rng(1).normal(size=(256, 256, 3)))
    assert abs(neighbour_correlation(noise)) < 0.01
    box = (noise + noise.roll(1, 0) + noise.roll(1, 1) + noise.roll((1, 1), (0, 1))) / 4
    assert neighbour_correlation(box) == pytest.approx(0.5, abs=0.02)  # two of four terms shared
    assert neighbour_correlation(noise - box) < -0.1  # what a fit that follows the noise leaves
    y, x = torch.meshgrid(torch.arange(8), torch.arange(8), indexing="ij")
    checkers = ((-1.0) ** (y + x))[..., None]
    assert neighbour_correlation(checkers) == pytest.approx(-1.0)
    assert neighbour_correlation(torch.ones(5, 7, 1)) == pytest.approx(1.0)
    assert neighbour_correlation(torch.zeros(5, 7, 1)) == 0.0
    assert neighbour_correlation(torch.ones(1, 1, 3)) == 0.0


def test_initializers():
    img = blobs_image()
    assert {"random", "grid"} <= set(available())
    grid = initialize("grid", img, 48)
    assert abs(len(grid) - 48) <= 8
    sig = np.sqrt(np.linalg.eigvalsh(grid.covariance.numpy()))
    assert np.allclose(sig, sig.flat[0])  # round, shared bandwidth
    rnd = initialize("random", img, 48, seed=1)
    assert len(rnd) == 48 and np.allclose(1 / rnd.chol[:, 0].numpy(), 5.0)
    # Experts are the image values under the centres.
    c = rnd.mu.numpy().astype(int)
    assert np.allclose(rnd.experts.numpy(), img[c[:, 1], c[:, 0]])
    res = fit(img, 48, init="grid", iters=5, grow_start=None)
    assert res.init_kernels == len(grid)


def test_fit_from_model_and_callback():
    img = blobs_image()
    start = initialize("random", img, 30)
    seen = []
    res = fit(img, init=start, iters=20, log_every=5, callback=seen.append)
    assert [r["iteration"] for r in seen] == [5, 10, 15, 20]
    assert res.spec.init == "model"


@pytest.mark.parametrize("kwargs,message", [
    ({"n_kernels": 0}, "n_kernels"),
    ({"n_kernels": 40 * 52 + 1}, "n_kernels"),
    ({"iters": 0}, "iters"),
    ({"lr_mu": float("nan")}, "lr_mu"),
    ({"lam": -1.0}, "lam"),
    ({"mode": "rbf", "lam": 1e-3}, "L1 sparsity"),
    ({"init": "nope"}, "unknown initializer"),
    ({"target_psnr": float("inf")}, "target_psnr"),
    ({"target_corr": 1.5}, "target_corr"), ({"target_corr": float("nan")}, "target_corr"),
    ({"mode": "x"}, "mode"),
])
def test_bad_arguments(kwargs, message):
    kwargs = {"n_kernels": 20, **kwargs}
    with pytest.raises(ValueError, match=message):
        fit(blobs_image(), **kwargs)


@pytest.mark.parametrize("image,message", [
    (np.full((10, 10), np.nan), "NaN"),
    (np.zeros((10, 10, 2)), "shape"),
    (np.zeros((0, 10)), "empty"),
])
def test_bad_images(image, message):
    with pytest.raises(ValueError, match=message):
        fit(image, 5)


def test_rbf_start_is_normalised_by_kernel_density():
    # Dense, heavily overlapping kernels: raw experts would sum to several times the image.
    img = np.full((32, 32, 3), 0.5, np.float32)
    res = fit(img, 200, mode="rbf", init="random", iters=1, log_every=1, lr_mu=0, lr_chol=0, lr_experts=0,
              grow_start=None)
    first = res.history[0]["psnr"]
    assert first > 20  # about right from the start, not 4x too bright
