"""Strategies that change the kernel set during a fit, the content initializer and the convergence rule."""

import math

import numpy as np
import pytest
import torch

from smoe.fitting import converged, fit
from smoe.initializers import initialize
from smoe.model import CHI2_99, Model, bounding_radius, covariance_from_chol
from smoe.parameters import KernelLeaves
from smoe.spec import FitSpec
from smoe.strategy import BoundExtent, FitState, GrowByError, PruneDead, strategies_for
from smoe.strategy.extent import bound_precision


def _random_kernels(n, seed=0, size=40.0):
    rng = np.random.default_rng(seed)
    mu = rng.uniform(0, size, (n, 2)).astype(np.float32)
    chol = np.stack([rng.uniform(0.02, 1.0, n), rng.normal(0, 0.3, n), rng.uniform(0.02, 1.0, n)], 1)
    return Model(mu, chol.astype(np.float32), np.ones(n, np.float32), rng.random((n, 3)).astype(np.float32))


def _axes(chol):
    """Semi-axes (ascending) and the major axis direction of each kernel's covariance."""
    lam, vec = torch.linalg.eigh(covariance_from_chol(chol.double()))
    return lam.sqrt(), vec[:, :, 1]


def test_bound_shortens_only_the_major_axis():
    chol = _random_kernels(300).chol
    index, new = bound_precision(chol, 12.0)
    assert 0 < index.numel() < len(chol)
    assert float(bounding_radius(new).max()) <= 12.0 * (1 + 1e-4)
    axes, major = _axes(chol[index])
    new_axes, new_major = _axes(new)
    cap = 12.0 / math.sqrt(CHI2_99)
    torch.testing.assert_close(new_axes[:, 0], axes[:, 0].clamp(max=cap), rtol=1e-4, atol=1e-6)  # minor kept if short
    assert bool((axes[:, 0] < cap).any() & (axes[:, 0] > cap).any())  # the sample has both cases
    torch.testing.assert_close(new_axes[:, 1], torch.full_like(axes[:, 1], cap), rtol=1e-4, atol=1e-6)
    thin = axes[:, 0] < 0.9 * cap  # a kernel clamped on both axes turns round and has no orientation
    assert bool(((major * new_major).sum(1).abs() > 1 - 1e-5)[thin].all())  # orientation kept
    untouched = torch.ones(len(chol), dtype=torch.bool)
    untouched[index] = False
    assert float(bounding_radius(chol[untouched]).max()) <= 12.0


def _state(leaves, opt, target, it=1, mode="smoe", last=False):
    render = torch.zeros_like(target)
    return FitState(leaves, opt, target, render, it, last, mode)


def test_bound_extent_edits_the_leaves_in_place():
    leaves = KernelLeaves(_random_kernels(200))
    opt = leaves.optimizer({"mu": 0.1, "chol": 0.1, "pi": 0.1, "experts": 0.1})
    BoundExtent(10.0).after_step(_state(leaves, opt, torch.zeros(40, 40, 3)))
    assert float(bounding_radius(leaves.cholesky().detach()).max()) <= 10.0 * (1 + 1e-4)


def test_extend_and_keep_carry_adams_moments():
    model = _random_kernels(10)
    leaves = KernelLeaves(model)
    opt = leaves.optimizer({"mu": 0.1, "chol": 0.1, "pi": 0.1, "experts": 0.1})
    sum(leaf.square().sum() for leaf in leaves.leaves()).backward()
    opt.step()
    before = opt.state[leaves.mu]["exp_avg"].clone()
    leaves.extend(_random_kernels(4, seed=1), opt)
    assert len(leaves) == 14 and all(leaf.shape[0] == 14 for leaf in leaves.leaves())
    moments = opt.state[leaves.mu]["exp_avg"]
    assert torch.equal(moments[:10], before) and not moments[10:].any()
    torch.testing.assert_close(leaves.model().chol[10:], _random_kernels(4, seed=1).chol)
    keep = torch.arange(14) % 2 == 0
    leaves.keep(keep, opt)
    assert torch.equal(opt.state[leaves.mu]["exp_avg"], moments[keep])
    leaves.mu.sum().backward()  # the optimizer holds the new leaves
    opt.step()


def test_growth_adds_kernels_where_the_residual_is():
    leaves = KernelLeaves(_random_kernels(40))
    opt = leaves.optimizer({"mu": 0.1, "chol": 0.1, "pi": 0.1, "experts": 0.1})
    target = torch.zeros(40, 40, 3)
    target[:, 30:] = 1.0  # the zero render misses only the right strip
    grow = GrowByError(60, every=5, rate=0.25)
    grow.after_step(_state(leaves, opt, target, it=4))
    assert len(leaves) == 40
    grow.after_step(_state(leaves, opt, target, it=5))
    assert len(leaves) == 50
    assert bool((leaves.mu[40:, 0] >= 28).all())  # smoothing lets a pixel or two spill over
    torch.testing.assert_close(leaves.experts[40:].detach(), torch.ones(10, 3))
    assert not grow.settled()  # a convergence stop waits for the budget to fill
    for it in (10, 15, 20):
        grow.after_step(_state(leaves, opt, target, it=it))
    assert len(leaves) == 60 and grow.settled()


def test_rbf_growth_takes_the_residual_as_expert():
    leaves = KernelLeaves(_random_kernels(8))
    opt = leaves.optimizer({"mu": 0.1, "chol": 0.1, "pi": 0.1, "experts": 0.1})
    target = torch.full((20, 20, 3), 0.5)
    state = FitState(leaves, opt, target, torch.full_like(target, 0.2), 5, False, "rbf")
    GrowByError(12, every=5, rate=0.5).after_step(state)
    torch.testing.assert_close(leaves.experts[8:].detach(), torch.full((4, 3), 0.3))


def test_prune_removes_dead_gates_on_schedule():
    model = _random_kernels(6)
    pi = model.pi.clone()
    pi[[1, 4]] = -0.5
    leaves = KernelLeaves(Model(model.mu, model.chol, pi, model.experts))
    opt = leaves.optimizer({"mu": 0.1, "chol": 0.1, "pi": 0.1, "experts": 0.1})
    prune = PruneDead(10)
    prune.after_step(_state(leaves, opt, torch.zeros(8, 8, 3), it=3))
    assert len(leaves) == 6
    prune.after_step(_state(leaves, opt, torch.zeros(8, 8, 3), it=3, last=True))
    assert len(leaves) == 4


def test_strategies_follow_the_spec():
    spec = FitSpec(n_kernels=100, grow_start=0.5, max_reach=5.0).validate()
    kinds = [type(s) for s in strategies_for(spec, 50, (100, 100))]
    assert kinds == [BoundExtent, GrowByError, PruneDead]
    assert strategies_for(spec, 50, (100, 100))[0].max_radius == pytest.approx(50.0)
    plain = FitSpec(n_kernels=100, max_reach=None, mode="rbf").validate()
    assert strategies_for(plain, 100, (10, 10)) == []


def test_fit_grows_to_the_budget():
    image = np.random.default_rng(0).random((32, 32, 3)).astype(np.float32)
    result = fit(image, 120, grow_start=0.25, grow_every=10, iters=200, min_gain=None, seed=3)
    counts = [r["kernels"] for r in result.history]
    assert counts[0] < 40 and max(counts) == 120 and counts == sorted(counts)
    assert result.init_kernels == 30


def test_fit_with_a_bound_keeps_kernels_within_it():
    image = np.zeros((48, 48, 1), np.float32)
    image[:, 24:] = 1.0
    result = fit(image, 20, iters=100, max_reach=1.0, init="random", min_gain=None)
    assert float(bounding_radius(result.model.chol).max()) <= math.sqrt(48 * 48 / 20) * (1 + 1e-3)


def _history(psnrs, step=1.0, kernels=None):
    kernels = kernels or [10] * len(psnrs)
    return [{"seconds": step * (i + 1), "psnr": p, "kernels": k} for i, (p, k) in enumerate(zip(psnrs, kernels))]


def test_convergence_rule():
    assert converged(_history([20, 21, 21.001, 21.001, 21.001, 21.001, 21.001, 21.001]), 0.01)
    assert not converged(_history([20, 21, 22, 23, 24, 25, 26, 27]), 0.01)
    assert not converged(_history([20, 20, 20, 20], step=0.1), 0.01)  # too early to judge
    # a spike down in the last quarter does not stop a fit whose best PSNR still rises
    assert not converged(_history([20, 21, 22, 23, 24, 25, 26, 10, 27]), 0.01)
    # nor does a flat stretch while the model is still growing
    assert not converged(_history([20, 21, 21, 21, 21, 21, 21, 21], kernels=[5, 6, 7, 8, 9, 10, 11, 12]), 0.01)


def test_fit_stops_on_convergence():
    image = np.random.default_rng(0).random((16, 16, 1)).astype(np.float32)  # 4 kernels soon fit all they can
    result = fit(image, 4, iters=100000, min_gain=1.0, log_every=5, time_budget=30)
    assert result.stop_reason == "converged" and result.fit_seconds < 10


def test_content_init_puts_kernels_on_detail():
    rng = np.random.default_rng(0)
    image = np.full((64, 64, 1), 0.5, np.float32)
    image[:, 32:] = rng.random((64, 32, 1))  # texture on the right
    model = initialize("content", image, 400, seed=1)
    right = int((model.mu[:, 0] >= 32).sum())
    assert len(model) == 400 and right > 300
    sigma = 1 / model.chol[:, 0]
    assert float(sigma[model.mu[:, 0] < 28].mean()) > 1.5 * float(sigma[model.mu[:, 0] >= 36].mean())
    again = initialize("content", image, 400, seed=1)
    assert torch.equal(again.mu, model.mu)


@pytest.mark.parametrize("option", [{"floor": 0}, {"floor": float("nan")}, {"bandwidth": -1}])
def test_content_init_rejects_bad_options(option):
    with pytest.raises(ValueError, match="floor|bandwidth"):
        initialize("content", np.zeros((8, 8, 1), np.float32), 4, **option)


@pytest.mark.parametrize("fields, message", [
    ({"target_psnr": math.inf}, "target_psnr"), ({"min_gain": 0}, "min_gain"),
    ({"max_reach": 0}, "max_reach"), ({"grow_start": 1.5}, "grow_start"), ({"grow_every": 0}, "grow_every"),
    ({"grow_start": 0}, "grow_start"), ({"time_budget": 0}, "time_budget"),
])
def test_spec_rejects_bad_strategy_settings(fields, message):
    with pytest.raises(ValueError, match=message):
        FitSpec(**fields).validate()


def test_records_from_before_the_strategies_mean_them_off():
    old = FitSpec().to_dict()
    for name in ("max_reach", "grow_start", "grow_every", "min_gain"):
        del old[name]
    spec = FitSpec.from_dict(old)
    assert spec.max_reach is None and spec.min_gain is None and spec.grow_start is None
    assert FitSpec.from_dict(FitSpec().to_dict()) == FitSpec()
