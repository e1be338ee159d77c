"""Trimming a fit to a target PSNR: the removal costs, the hole check, and the fit that keeps the smallest model."""

import math

import numpy as np
import pytest
import torch

from smoe.fitting import fit
from smoe.model import Model
from smoe.parameters import KernelLeaves
from smoe.rasterizer import rasterize
from smoe.spec import TRIM_SHARE, FitSpec
from smoe.strategy import BoundExtent, FitState, GrowByError, TrimToTarget, strategies_for
from smoe.strategy.trim import removal_cost, trim_mask


def _renderer(h, w, mode="smoe", scope="global"):
    return lambda mu, chol, pi, e: rasterize(mu, chol, pi, e, h, w, mode=mode, scope=scope)


def _bumps(model, h, w):
    """(P, L) Gaussian of every kernel at every pixel centre, written out by hand."""
    ys, xs = np.mgrid[0:h, 0:w]
    xy = torch.tensor(np.stack([xs.ravel() + 0.5, ys.ravel() + 0.5], 1), dtype=torch.float64)
    d = xy[:, None, :] - model.mu.double()[None]
    b00, b10, b11 = (model.chol.double()[:, i] for i in range(3))
    u, v = b00 * d[..., 0], b10 * d[..., 0] + b11 * d[..., 1]
    return torch.exp(-0.5 * (u * u + v * v))


def _kernels(n, seed=0, size=12.0):
    rng = np.random.default_rng(seed)
    mu = rng.uniform(0, size, (n, 2)).astype(np.float32)
    chol = np.stack([rng.uniform(0.3, 0.8, n), rng.normal(0, 0.1, n), rng.uniform(0.3, 0.8, n)], 1)
    return Model(mu, chol.astype(np.float32), rng.uniform(0.5, 1.5, n).astype(np.float32),
                 rng.random((n, 3)).astype(np.float32))


@pytest.mark.parametrize("mode", ["smoe", "rbf"])
def test_removal_cost_matches_the_sums_written_out(mode):
    model, h, w = _kernels(7), 12, 12
    e = model.experts.double()
    if mode == "smoe":
        weight = model.pi.double() * _bumps(model, h, w)
        g = weight / weight.sum(1, keepdim=True)
        want = (g[:, :, None] * (e[None] - (g @ e)[:, None]).square()).sum((0, 2))
    else:
        want = e.square().sum(1) * _bumps(model, h, w).sum(0)
    got = removal_cost(_renderer(h, w, mode), model.mu, model.chol, model.pi, model.experts, mode)
    torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-5)


def _lone_and_pair():
    """A kernel alone in the left tile, two kernels sharing the right one, and the image they render (raster)."""
    mu = torch.tensor([[8.0, 8.0], [40.0, 8.0], [40.0, 8.0]])
    chol = torch.tensor([[0.4, 0.0, 0.4]]).repeat(3, 1)  # 99 % reach 7.6 px: each stays in its 16 px tile
    experts = torch.tensor([[0.5] * 3, [0.3] * 3, [0.7] * 3])
    model = Model(mu, chol, torch.ones(3), experts)
    target = rasterize(model.mu, model.chol, model.pi, model.experts, 16, 48, mode="smoe")
    return model, target


def test_trim_keeps_a_kernel_whose_removal_leaves_a_hole():
    model, target = _lone_and_pair()
    render = _renderer(16, 48, scope="raster")
    cost = removal_cost(render, model.mu, model.chol, model.pi, model.experts, "smoe")
    assert int(cost.argmin()) == 0 and float(cost[0]) == 0  # the first-order estimate would remove the lone kernel
    keep = trim_mask(render, model.mu, model.chol, model.pi, model.experts, target, "smoe", 1)
    assert keep.tolist()[0] and int(keep.sum()) == 2


def _state(leaves, opt, target, psnr, it, render=None):
    return FitState(leaves, opt, target, torch.zeros_like(target), it, False, "smoe", psnr, render)


def test_trim_removes_on_each_meeting_and_halves_its_share_on_a_miss():
    model, target = _kernels(40, size=24.0), torch.zeros(24, 24, 3)
    leaves = KernelLeaves(model)
    opt = leaves.optimizer({"mu": 0.1, "chol": 0.1, "pi": 0.1, "experts": 0.1})
    trim = TrimToTarget(30.0, 0.25, patience=10, min_share=0.1)
    trim.after_step(_state(leaves, opt, target, 29.0, 1, _renderer(24, 24)))
    assert len(leaves) == 40 and not trim.settled()  # nothing before the target is first met
    trim.after_step(_state(leaves, opt, target, 31.0, 2, _renderer(24, 24)))
    assert len(leaves) == 30 and trim.share == 0.25
    trim.after_step(_state(leaves, opt, target, 29.0, 11, _renderer(24, 24)))
    assert trim.share == 0.25  # patience not yet spent
    trim.after_step(_state(leaves, opt, target, 29.0, 12, _renderer(24, 24)))
    assert trim.share == 0.125 and not trim.settled()
    trim.after_step(_state(leaves, opt, target, 29.0, 22, _renderer(24, 24)))
    assert trim.settled() and len(leaves) == 30


def test_growth_stops_for_good_once_the_target_is_met():
    leaves = KernelLeaves(_kernels(20, size=24.0))
    opt = leaves.optimizer({"mu": 0.1, "chol": 0.1, "pi": 0.1, "experts": 0.1})
    target = torch.rand(24, 24, 3, generator=torch.Generator().manual_seed(0))
    grow = GrowByError(100, every=5, target_psnr=30.0)
    grow.after_step(_state(leaves, opt, target, 25.0, 5))
    assert len(leaves) == 25 and not grow.settled()
    grow.after_step(_state(leaves, opt, target, 31.0, 6))
    grow.after_step(_state(leaves, opt, target, 25.0, 10))
    assert len(leaves) == 25 and grow.settled()


def test_bound_follows_the_live_count_in_a_fit_that_chooses_it():
    spec = FitSpec(target_psnr=30).growing((64, 64)).validate()
    assert spec.trim == TRIM_SHARE
    bound = strategies_for(spec, 10, (64, 64))[0]
    assert isinstance(bound, BoundExtent) and bound.area == 64 * 64
    chol = torch.tensor([[0.01, 0.0, 0.01]]).expand(16, 3).contiguous()  # very wide kernels
    leaves = KernelLeaves(Model(torch.rand(16, 2) * 64, chol, torch.ones(16), torch.rand(16, 3)))
    bound.after_step(_state(leaves, None, torch.zeros(64, 64, 3), 0.0, 1))
    from smoe.model import bounding_radius
    radius = float(bounding_radius(leaves.cholesky().detach()).max())
    assert radius == pytest.approx(spec.max_reach * math.sqrt(64 * 64 / 16), rel=1e-4)


def _stripes():
    y, x = np.mgrid[0:48, 0:48]
    return (0.5 + 0.4 * np.sin(x / 3.0) * np.cos(y / 5.0)).astype(np.float32)


@pytest.mark.parametrize("mode", ["smoe", "rbf"])
def test_a_trimmed_fit_meets_the_target_with_fewer_kernels(mode):
    image, target = _stripes(), 32.0
    spec = FitSpec(target_psnr=target, seed=1, min_gain=None, iters=1500, mode=mode).growing(image.shape)
    trimmed = fit(image, spec=spec)
    grown = fit(image, spec=spec.replace(trim=None))
    for result in (trimmed, grown):
        assert result.stop_reason == "target_psnr" and result.final_psnr >= target
    assert len(trimmed.model) < 0.9 * len(grown.model)
    again = rasterize(trimmed.model.mu, trimmed.model.chol, trimmed.model.pi, trimmed.model.experts, 48, 48,
                      mode=mode)
    mse = float(torch.nn.functional.mse_loss(again[..., 0], torch.from_numpy(image)))
    assert -10 * math.log10(mse) == pytest.approx(trimmed.final_psnr, abs=1e-6)
    assert trimmed.history[-1]["kernels"] == len(trimmed.model)


@pytest.mark.parametrize("trim", [0, 0.6, float("nan"), -0.1])
def test_trim_outside_its_range_is_refused(trim):
    with pytest.raises(ValueError, match="trim"):
        FitSpec(target_psnr=30, trim=trim).validate()


def test_trim_without_a_target_is_refused():
    with pytest.raises(ValueError, match="set target_psnr too"):
        FitSpec(trim=0.1).validate()
