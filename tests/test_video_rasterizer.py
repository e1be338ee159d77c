"""The fused space-time rasterizer against the PyTorch reference, and both against finite differences."""

import itertools

import numpy as np
import pytest
import torch

from smoe.video.model import (DIAGONAL, VideoModel, chol_from_covariance, covariance_from_chol, half_extents,
                              rescale)
from smoe.video.rasterizer import kernels_per_block, rasterize_video, render_video, video_grid
from smoe.video.tiles import bin_video, block_boxes, list_blocks

MODES = ("smoe", "rbf")


def random_video_model(n, frames, h, w, *, channels=3, dtype=torch.float32, seed=0, margin=0.2, sigma=(1.5, 5.0)):
    """n random kernels, some centred outside the clip, with random orientations in space-time."""
    g = torch.Generator().manual_seed(seed)
    size = torch.tensor([w, h, frames], dtype=torch.float64)
    mu = (torch.rand(n, 3, generator=g, dtype=torch.float64) * (1 + 2 * margin) - margin) * size
    a = torch.randn(n, 3, 3, generator=g, dtype=torch.float64)
    scale = sigma[0] + (sigma[1] - sigma[0]) * torch.rand(n, 1, 1, generator=g, dtype=torch.float64)
    cov = scale * (a @ a.transpose(1, 2) / 3 + 0.3 * torch.eye(3, dtype=torch.float64)) * scale
    chol = chol_from_covariance(cov)
    pi = 0.2 + torch.rand(n, generator=g, dtype=torch.float64)
    experts = torch.rand(n, channels, generator=g, dtype=torch.float64)
    return VideoModel(mu.to(dtype), chol.to(dtype), pi.to(dtype), experts.to(dtype))


def grads(model, h, w, times, backend, weight, **kw):
    params = [t.detach().clone().requires_grad_() for t in (model.mu, model.chol, model.pi, model.experts)]
    out = rasterize_video(*params, h, w, times, backend=backend, **kw)
    (out * weight).sum().backward()
    return [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]


def both(model, h, w, times, **kw):
    return [render_video(model, h, w, times, backend=b, **kw) for b in ("cpu", "torch")]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("shape", [(9, 37, 29), (4, 16, 16), (1, 5, 70)])
def test_forward_parity(mode, channels, shape):
    F, h, w = shape
    model = random_video_model(70, F, h, w, channels=channels)
    fast, ref = both(model, h, w, np.arange(F) + 0.5, mode=mode, tile=8, tile_t=2)
    assert fast.shape == (F, h, w, channels)
    assert torch.isfinite(fast).all() and fast.abs().max() > 0
    assert (fast - ref).abs().max() < 1e-5


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("tile,tile_t", [(16, 4), (8, 1), (4, 3)])
def test_gradient_parity_float32(mode, tile, tile_t):
    F, h, w = 7, 23, 31
    model = random_video_model(50, F, h, w, seed=3)
    weight = torch.rand(F, h, w, 3, generator=torch.Generator().manual_seed(1))
    times = np.arange(F) + 0.5
    fast = grads(model, h, w, times, "cpu", weight, mode=mode, tile=tile, tile_t=tile_t)
    ref = grads(model, h, w, times, "torch", weight, mode=mode, tile=tile, tile_t=tile_t)
    for name, a, b in zip(("mu", "chol", "pi", "experts"), fast, ref):
        scale = float(b.abs().max())
        if mode == "rbf" and name == "pi":
            assert float(a.abs().max()) == 0  # RBF ignores the gates
            continue
        assert scale > 0, name
        assert float((a - b).abs().max()) <= 1e-4 * scale, name


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("backend", ["cpu", "torch"])
def test_gradients_match_finite_differences(mode, backend):
    F, h, w = 5, 11, 13
    model = random_video_model(6, F, h, w, dtype=torch.float64, seed=5, sigma=(1.5, 3.0))
    weight = torch.rand(F, h, w, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    times = np.arange(F) + 0.5
    params = [t.detach().clone().requires_grad_() for t in (model.mu, model.chol, model.pi, model.experts)]
    if mode == "rbf":
        params[2].requires_grad_(False)

    # Tile lists are piecewise constant in the parameters; steps of 1e-6 leave these kernels' lists unchanged.
    def f(mu, chol, pi, experts):
        return (rasterize_video(mu, chol, pi, experts, h, w, times, mode=mode, backend=backend, tile=8,
                                tile_t=2) * weight).sum()

    assert torch.autograd.gradcheck(f, params, eps=1e-6, atol=1e-6, rtol=1e-4)


def test_needles_along_t_and_outside_kernels():
    # A kernel long along t and thin across (a static edge over the whole clip) and kernels far outside.
    F, h, w = 12, 20, 20
    cov = torch.diag(torch.tensor([0.5, 0.5, 400.0]))[None].repeat(3, 1, 1)
    chol = chol_from_covariance(cov)
    mu = torch.tensor([[10.0, 10.0, 6.0], [-500.0, 10.0, 6.0], [10.0, 10.0, 900.0]])
    model = VideoModel(mu, chol, torch.ones(3), torch.tensor([[1.0, 0.5, 0.25], [0.0, 0.0, 0.0], [0.3, 0.3, 0.3]]))
    fast, ref = both(model, h, w, np.arange(F) + 0.5)
    assert (fast - ref).abs().max() < 1e-6
    assert torch.allclose(fast[:, 10, 10], torch.tensor([1.0, 0.5, 0.25]).expand(F, 3))
    grid = video_grid(h, w, np.arange(F) + 0.5)
    bins = bin_video(model.mu, model.chol, model.pi, grid)
    assert set(bins.ids.tolist()) == {0}  # the far kernels reach no block
    assert bins.counts.sum() == grid.shape[0]  # the needle: every time tile, one spatial tile


def test_empty_and_pruned_models():
    empty = VideoModel.empty(3)
    for backend in ("cpu", "torch"):
        out = render_video(empty, 9, 7, [0.5, 1.5], backend=backend)
        assert out.shape == (2, 9, 7, 3) and float(out.abs().max()) == 0
    model = random_video_model(30, 4, 16, 16)
    dead = model.pi.clone()
    dead[::2] = -1.0
    half = VideoModel(model.mu, model.chol, dead, model.experts)
    a, b = both(half, 16, 16, np.arange(4) + 0.5)
    assert (a - b).abs().max() < 1e-5
    assert torch.allclose(a, render_video(half.pruned(), 16, 16, np.arange(4) + 0.5), atol=1e-6)


def test_times_between_frames_and_spatial_scale():
    F, h, w = 6, 18, 22
    model = random_video_model(40, F, h, w, seed=8)
    times = np.array([0.5, 0.75, 1.0, 2.25, 2.5, 5.5])
    fast, ref = both(model, 2 * h, 3 * w, times, extent=(h, w))
    assert fast.shape == (6, 2 * h, 3 * w, 3)
    assert (fast - ref).abs().max() < 1e-5
    # Frames asked for one by one give the frames of one call: time tiles are fixed in clip time.
    single = torch.cat([render_video(model, h, w, [t]) for t in times])
    assert (single - render_video(model, h, w, times)).abs().max() < 1e-6


def test_list_blocks_torch_matches_counting_sort():
    F, h, w = 10, 40, 50
    model = random_video_model(200, F, h, w, seed=11)
    grid = video_grid(h, w, np.arange(F) + 0.5, tile=8, tile_t=3)
    cpu = bin_video(model.mu, model.chol, model.pi, grid)
    box = block_boxes(model.mu, model.chol, grid)
    ref = list_blocks(box, torch.arange(len(model)), *grid.shape[1:], grid.shape[0])
    for a, b in zip((cpu.starts, cpu.ends, cpu.ids), (ref.starts, ref.ends, ref.ids)):
        assert torch.equal(a, b)
    assert kernels_per_block(model, h, w, F, tile=8, tile_t=3) == pytest.approx(cpu.mean_kernels_per_tile())


def test_geometry_round_trips():
    model = random_video_model(20, 5, 10, 10, dtype=torch.float64)
    cov = covariance_from_chol(model.chol)
    assert torch.allclose(chol_from_covariance(cov), model.chol, atol=1e-10)
    ext = half_extents(model.chol)
    assert torch.allclose(ext, torch.sqrt(11.344866730144373 * torch.diagonal(cov, dim1=1, dim2=2)))
    mu, chol = rescale(model.mu, model.chol, 2.0, 3.0, 0.5)
    S = torch.diag(torch.tensor([2.0, 3.0, 0.5], dtype=torch.float64))
    assert torch.allclose(covariance_from_chol(chol), S @ cov @ S, atol=1e-9)
    assert (chol[:, list(DIAGONAL)] > 0).all()


@pytest.mark.parametrize("bad", ["nan", "diag", "shape"])
def test_invalid_models_are_refused(bad):
    mu, chol = torch.zeros(2, 3), torch.tensor([[1.0, 0, 1, 0, 0, 1]] * 2)
    if bad == "nan":
        mu[1, 2] = float("nan")
    elif bad == "diag":
        chol[0, 5] = -1.0
    else:
        mu = torch.zeros(2, 2)
    with pytest.raises(ValueError, match="kernel|shape"):
        VideoModel(mu, chol, torch.ones(2), torch.ones(2, 3))


def test_bad_render_arguments():
    model = random_video_model(5, 3, 8, 8)
    for times, match in (([], "empty"), ([1.5, 0.5], "order"), ([float("nan")], "finite")):
        with pytest.raises(ValueError, match=match):
            render_video(model, 8, 8, times)
    with pytest.raises(ValueError, match="frames per tile"):
        render_video(model, 8, 8, [0.5], tile_t=0)
    with pytest.raises(ValueError, match="mode"):
        render_video(model, 8, 8, [0.5], mode="bad")


@pytest.mark.parametrize("mode,dtype", list(itertools.product(MODES, [torch.float32, torch.float64])))
def test_dtype_is_kept(mode, dtype):
    model = random_video_model(10, 3, 8, 8, dtype=dtype)
    assert render_video(model, 8, 8, [0.5, 1.5], mode=mode).dtype == dtype


def test_time_floor_caps_b22_only_where_short():
    from smoe.parameters import KernelLeaves
    from smoe.strategy import FitState
    from smoe.video.extent import FloorTimeExtent, time_sigma
    from smoe.video.model import covariance_from_chol, isotropic_chol

    chol = isotropic_chol(torch.tensor([2.0, 2.0, 3.0]), torch.tensor([0.1, 0.5, 4.0]))
    chol[:, 3] = 0.3  # a tilt in x-t survives the projection
    leaves = KernelLeaves(VideoModel(torch.zeros(3, 3), chol, torch.ones(3), torch.zeros(3, 1)))
    FloorTimeExtent(0.5).after_step(FitState(leaves, None, None, None, 1, False, "smoe"))
    after = leaves.cholesky()
    assert torch.allclose(time_sigma(after), torch.tensor([0.5, 0.5, 4.0]), rtol=1e-5)
    assert torch.allclose(after[:, :5], chol[:, :5])
    # at a fixed pixel, the variance along t is 1 / P_tt = time_sigma^2
    precision = torch.linalg.inv(covariance_from_chol(after.double()))
    assert torch.allclose(precision[:, 2, 2].rsqrt(), time_sigma(after).double(), rtol=1e-5)
