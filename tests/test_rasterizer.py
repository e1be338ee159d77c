"""The fused CPU rasterizer against the PyTorch reference, and both against finite differences."""

import itertools
import math

import numpy as np
import pytest
import torch

import smoe
from smoe import Model, fused_cpu
from smoe.fused_cpu import min_q_in_box
from smoe.tiles import TileGrid, active_kernels, bin_kernels, list_boxes, tile_boxes

from conftest import random_model

MODES = ("smoe", "rbf")
SCOPES = ("raster", "global")


def render_both(model, h, w, **kw):
    return [smoe.rasterizer.render(model, h, w, backend=b, **kw) for b in ("cpu", "torch")]


def grads(model, h, w, backend, weight, **kw):
    params = [t.detach().clone().requires_grad_() for t in (model.mu, model.chol, model.pi, model.experts)]
    out = smoe.rasterize(*params, h, w, backend=backend, **kw)
    (out * weight).sum().backward()
    return [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]


@pytest.mark.parametrize("mode,scope", list(itertools.product(MODES, SCOPES)))
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("size", [(37, 53), (16, 16), (5, 70)])
def test_forward_parity(mode, scope, channels, size):
    h, w = size
    model = random_model(60, h, w, channels=channels, margin=0.2)
    fast, ref = render_both(model, h, w, mode=mode, scope=scope)
    assert fast.shape == (h, w, channels)
    assert torch.isfinite(fast).all()
    assert (fast - ref).abs().max() < 1e-5


@pytest.mark.parametrize("offset", [(0, 0), (3, 11), (15, 1)])
def test_tile_offset_parity_and_effect(offset):
    model = random_model(80, 45, 61, scale=(0.05, 0.3))
    fast, ref = render_both(model, 45, 61, tile_offset=offset)
    assert (fast - ref).abs().max() < 1e-5
    # Tiles truncate each kernel's reach, so moving the grid changes the image a little.
    if offset != (0, 0):
        base = smoe.rasterizer.render(model, 45, 61)
        assert 0 < (fast - base).abs().max() < 0.2


@pytest.mark.parametrize("tile", [4, 8, 32, 64])
@pytest.mark.parametrize("mode", MODES)
def test_other_tile_sizes_parity_and_effect(tile, mode):
    h, w = 45, 70
    model = random_model(80, h, w, scale=(0.05, 0.3))
    offset = (tile // 2, 1)
    fast, ref = render_both(model, h, w, mode=mode, tile=tile, tile_offset=offset)
    assert (fast - ref).abs().max() < 1e-5
    weight = torch.randn(h, w, 3, generator=torch.Generator().manual_seed(2))
    for a, b in zip(grads(model, h, w, "cpu", weight, mode=mode, tile=tile, tile_offset=offset),
                    grads(model, h, w, "torch", weight, mode=mode, tile=tile, tile_offset=offset)):
        assert (a - b).abs().max() / b.abs().max().clamp(min=1e-12) < 1e-4
    # a kernel is listed for every tile its box touches: larger tiles list more of each kernel's reach
    assert 0 < (fast - smoe.rasterizer.render(model, h, w, mode=mode)).abs().max() < 0.3


@pytest.mark.parametrize("tile", [0, 12, 128, 16.5])
def test_tile_size_must_be_a_power_of_two_from_4_to_64(tile):
    model = random_model(5, 10, 10)
    with pytest.raises(ValueError, match="power of two from 4 to 64"):
        smoe.rasterizer.render(model, 10, 10, tile=tile)


@pytest.mark.parametrize("mode,scope", list(itertools.product(MODES, SCOPES)))
@pytest.mark.parametrize("channels", [1, 3])
def test_gradient_parity_float32(mode, scope, channels):
    h, w = 35, 42
    model = random_model(50, h, w, channels=channels, margin=0.1)
    weight = torch.randn(h, w, channels, generator=torch.Generator().manual_seed(5))
    fast = grads(model, h, w, "cpu", weight, mode=mode, scope=scope)
    ref = grads(model, h, w, "torch", weight, mode=mode, scope=scope)
    for name, a, b in zip(("mu", "chol", "pi", "experts"), fast, ref):
        scale = b.abs().max().clamp(min=1e-12)
        assert (a - b).abs().max() / scale < 1e-4, name


def test_gradients_of_mse_sized_losses_and_floating_point_state_restored():
    # Loss gradients of order 1e-9 times far-off kernel weights are denormal;
    # the fused kernels flush them while they run and must restore the state.
    h, w = 35, 42
    model = random_model(50, h, w, channels=3, margin=0.1)
    weight = torch.randn(h, w, 3, generator=torch.Generator().manual_seed(6)) * 1e-9
    fast = grads(model, h, w, "cpu", weight)
    ref = grads(model, h, w, "torch", weight)
    for name, a, b in zip(("mu", "chol", "pi", "experts"), fast, ref):
        assert (a - b).abs().max() / b.abs().max() < 1e-4, name
    tiny = np.float32(1e-38) * np.float32(1e-3)
    assert tiny != 0, "denormals are still flushed after the fused kernels returned"


def finite_difference(model, h, w, backend, weight, eps=1e-6, **kw):
    base = [t.detach().clone() for t in (model.mu, model.chol, model.pi, model.experts)]
    out = []
    for i, t in enumerate(base):
        g = torch.zeros_like(t)
        flat = t.view(-1)
        for k in range(flat.numel()):
            vals = []
            for step in (eps, -eps):
                flat[k] += step
                vals.append((smoe.rasterize(*base, h, w, backend=backend, **kw) * weight).sum())
                flat[k] -= step
            g.view(-1)[k] = (vals[0] - vals[1]) / (2 * eps)
        out.append(g)
    return out


@pytest.mark.parametrize("backend", ["cpu", "torch"])
@pytest.mark.parametrize("mode,scope", list(itertools.product(MODES, SCOPES)))
def test_gradients_match_finite_differences_float64(backend, mode, scope):
    h, w = 20, 23
    model = random_model(6, h, w, channels=3, dtype=torch.float64, scale=(0.15, 0.4), seed=3)
    weight = torch.randn(h, w, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    analytic = grads(model, h, w, backend, weight, mode=mode, scope=scope)
    numeric = finite_difference(model, h, w, backend, weight, mode=mode, scope=scope)
    for name, a, n in zip(("mu", "chol", "pi", "experts"), analytic, numeric):
        if mode == "rbf" and name == "pi":
            assert (a == 0).all() and n.abs().max() == 0
            continue
        assert (a - n).abs().max() / n.abs().max() < 1e-6, name


def test_kernels_outside_image_and_unreached_pixels():
    # One kernel well inside, one partly outside, one far outside: pixels no kernel
    # reaches are 0 and never NaN.
    model = Model([[5.0, 5.0], [-2.0, 30.0], [500.0, 500.0]], [[1.0, 0.0, 1.0]] * 3, [1.0, 1.0, 1.0],
                  [[0.2, 0.4, 0.6], [0.9, 0.1, 0.5], [1.0, 1.0, 1.0]])
    for mode, scope in itertools.product(MODES, SCOPES):
        fast, ref = render_both(model, 40, 40, mode=mode, scope=scope)
        assert torch.isfinite(fast).all() and torch.isfinite(ref).all()
        assert (fast - ref).abs().max() < 1e-5
        assert fast[20, 20].abs().max() == 0  # beyond every kernel's reach (raster) or underflowed (global)
    smoe_img = smoe.rasterizer.render(model, 40, 40)
    assert torch.allclose(smoe_img[4, 4], torch.tensor([0.2, 0.4, 0.6]), atol=1e-6)


def test_elongated_and_tiny_kernels():
    # Needle-like kernels (axis ratio 1000) and sub-pixel kernels.
    mu = [[20.0, 20.0], [10.5, 30.5], [33.3, 7.7]]
    chol = [[5.0, 0.0, 0.005], [0.004, 2.0, 3.0], [20.0, 0.0, 20.0]]
    model = Model(mu, chol, [1.0, 0.5, 2.0], [[1.0], [0.5], [0.25]])
    for mode, scope in itertools.product(MODES, SCOPES):
        fast, ref = render_both(model, 41, 47, mode=mode, scope=scope)
        assert (fast - ref).abs().max() < 1e-5
    weight = torch.randn(41, 47, 1, generator=torch.Generator().manual_seed(0))
    a = grads(model, 41, 47, "cpu", weight)
    b = grads(model, 41, 47, "torch", weight)
    for x, y in zip(a, b):
        assert (x - y).abs().max() <= 1e-4 * y.abs().max().clamp(min=1e-12)


def test_min_q_in_box_is_the_smallest_distance_over_the_box():
    rng = np.random.default_rng(7)
    t = np.linspace(0.0, 1.0, 401)
    for _ in range(200):
        mx, my = rng.uniform(-30, 30, 2)
        b00, b11 = np.exp(rng.uniform(-4, 1, 2))
        b10 = rng.normal(0, 2)
        x0, y0 = rng.uniform(-20, 20, 2)
        x1, y1 = x0 + rng.uniform(0, 16), y0 + rng.uniform(0, 16)
        xx, yy = np.meshgrid(x0 + (x1 - x0) * t, y0 + (y1 - y0) * t)
        u, v = b00 * (xx - mx), b10 * (xx - mx) + b11 * (yy - my)
        brute = (u * u + v * v).min()
        q = min_q_in_box(mx, my, b00, b10, b11, x0, x1, y0, y1)
        assert q <= brute * (1 + 1e-9) + 1e-12  # never above the true minimum: skipping stays exact
        assert q >= brute * 0.95 - 0.1  # and close to it (the grid only approximates the box)
    assert min_q_in_box(1.0, 1.0, 1.0, 0.0, 1.0, 0.0, 2.0, 0.0, 2.0) == 0  # centre inside
    assert min_q_in_box(np.nan, 50.0, 1.0, 0.0, 1.0, 0.0, 2.0, 0.0, 2.0) == 0  # NaN is never skipped


def test_skipping_kernels_that_underflow_in_a_tile_changes_no_bit(monkeypatch):
    # Needles listed for many tiles (square boxes) where they are exactly 0, plus ordinary
    # kernels; rendering and gradients must equal those computed without the skip.
    base = random_model(40, 48, 64, scale=(0.1, 0.5), seed=9)
    needles = Model([[30.0, 20.0], [10.0, 40.0]], [[5.0, 0.0, 0.01], [0.02, 0.5, 3.0]], [1.0, 0.7],
                    [[0.9, 0.1, 0.3], [0.2, 0.8, 0.5]])
    model = Model(*(torch.cat([a, b]) for a, b in zip(
        (base.mu, base.chol, base.pi, base.experts), (needles.mu, needles.chol, needles.pi, needles.experts))))
    grid = TileGrid(48, 64)
    bins = bin_kernels(model.mu, model.chol, model.pi, grid)
    redges, cedges = grid.edges()
    skippable = 0
    for tile in range(grid.num_tiles):
        ty, tx = divmod(tile, grid.shape[1])
        for j in bins.ids[bins.starts[tile]:bins.ends[tile]].tolist():
            q = min_q_in_box(*model.mu[j].tolist(), *model.chol[j].tolist(), cedges[tx] + 0.5,
                             cedges[tx + 1] - 0.5, redges[ty] + 0.5, redges[ty + 1] - 0.5)
            skippable += q > fused_cpu.underflow_q(np.float32)
    assert skippable > 5
    weight = torch.randn(48, 64, 3, generator=torch.Generator().manual_seed(1))
    for mode, sharpen in (("smoe", None), ("rbf", None), ("smoe", 0.5)):
        kw = {"mode": mode} if sharpen is None else {"sharpen": sharpen}
        skipped = smoe.rasterizer.render(model, 48, 64, **kw), grads(model, 48, 64, "cpu", weight, mode=mode)
        with monkeypatch.context() as m:
            m.setattr(fused_cpu, "underflow_q", lambda dtype: math.inf)
            full = smoe.rasterizer.render(model, 48, 64, **kw), grads(model, 48, 64, "cpu", weight, mode=mode)
        assert torch.equal(skipped[0], full[0])
        assert all(torch.equal(a, b) for a, b in zip(skipped[1], full[1]))


@pytest.mark.parametrize("mode,scope", list(itertools.product(MODES, SCOPES)))
def test_empty_model(mode, scope):
    model = Model.empty(channels=3)
    fast, ref = render_both(model, 19, 21, mode=mode, scope=scope)
    assert fast.shape == (19, 21, 3) and (fast == 0).all() and (ref == 0).all()


def test_pruned_kernels_are_ignored_in_smoe():
    model = random_model(40, 30, 30, seed=4)
    pi = model.pi.clone()
    pi[::3] = -0.5
    pi[1] = 0.0
    dead = Model(model.mu, model.chol, pi, model.experts)
    for scope in SCOPES:
        img = smoe.rasterizer.render(dead, 30, 30, scope=scope)
        assert torch.equal(img, smoe.rasterizer.render(dead.pruned(), 30, 30, scope=scope))
        ref = smoe.rasterizer.render(dead, 30, 30, scope=scope, backend="torch")
        assert (img - ref).abs().max() < 1e-5
    weight = torch.ones(30, 30, 3)
    g = grads(dead, 30, 30, "cpu", weight)
    assert (g[2][pi <= 0] == 0).all() and (g[0][pi <= 0] == 0).all()


def test_global_scope_is_the_untruncated_mixture():
    # With kernels far larger than the image, raster and global agree: every kernel reaches every tile.
    model = random_model(10, 32, 48, scale=(0.01, 0.02))
    assert torch.allclose(smoe.rasterizer.render(model, 32, 48, scope="raster"), smoe.rasterizer.render(model, 32, 48, scope="global"),
                          atol=1e-6)


def test_render_at_other_resolution():
    model = random_model(30, 24, 32, scale=(0.2, 0.4), seed=7)
    base = smoe.rasterizer.render(model, 24, 32, scope="global")
    same = smoe.rasterizer.render(model, 24, 32, extent=(24, 32), scope="global")
    assert torch.equal(base, same)
    big = smoe.rasterizer.render(model, 48, 64, extent=(24, 32), scope="global")
    # The centre of every 2x2 block of the big raster is the old pixel centre: the
    # mean of the four samples approximates the old pixel value.
    pooled = big.reshape(24, 2, 32, 2, 3).mean((1, 3))
    assert (pooled - base).abs().mean() < 0.01
    # An explicit stretch to the new raster gives the same picture.
    stretched = smoe.rasterizer.render(model.rescaled(2.0, 2.0), 48, 64, scope="global")
    assert torch.allclose(big, stretched)
    assert smoe.output_size((24, 32), scale=2.5) == (60, 80)


def test_bad_arguments():
    model = random_model(5, 10, 10)
    with pytest.raises(ValueError, match="mode"):
        smoe.rasterizer.render(model, 10, 10, mode="gauss")
    with pytest.raises(ValueError, match="scope"):
        smoe.rasterizer.render(model, 10, 10, scope="tiles")
    with pytest.raises(ValueError, match="tile offset"):
        smoe.rasterizer.render(model, 10, 10, tile_offset=(16, 0))
    with pytest.raises(ValueError, match="image size"):
        smoe.rasterizer.render(model, 0, 10)
    with pytest.raises(ValueError, match="scale"):
        smoe.output_size((10, 10), scale=-1)


def test_binning_lists_every_touched_tile():
    model = Model([[8.0, 8.0], [31.9, 0.5]], [[0.5, 0.0, 0.5], [1.0, 0.0, 0.25]], [1.0, 1.0], [[1.0], [1.0]])
    bins = bin_kernels(model.mu, model.chol, model.pi, TileGrid(40, 50))
    per_tile = [bins.ids[s:e].tolist() for s, e in zip(bins.starts.tolist(), bins.ends.tolist())]
    # Kernel 0: radius sqrt(9.21)/0.5 = 6.07 around (8, 8) stays inside tile 0.
    assert [t for t, ids in enumerate(per_tile) if 0 in ids] == [0]
    # Kernel 1: radius sqrt(9.21)/0.25 = 12.1 around (31.9, 0.5): columns 19.8..44 -> tiles 1, 2; row tile 0.
    assert [t for t, ids in enumerate(per_tile) if 1 in ids] == [1, 2]


@pytest.mark.parametrize("offset,scale", [((0, 0), (1.0, 1.0)), ((5, 11), (1.0, 1.0)), ((3, 0), (2.5, 0.75))])
def test_counting_sort_binning_equals_the_torch_sort(offset, scale):
    model = random_model(3000, 90, 130, scale=(0.02, 0.6), margin=0.3, seed=4)
    mu, chol, pi = model.mu.clone(), model.chol.clone(), model.pi.clone()
    mu[7] = float("nan")  # a diverged kernel must not write out of bounds
    chol[8, 0] = 1e-30  # a box wider than the image
    pi[:500:3] = -1.0  # pruned kernels are not listed
    grid = TileGrid(90, 130, offset, scale=scale)
    bins = bin_kernels(mu, chol, pi, grid)
    active = active_kernels(pi, "smoe")
    keep = ~torch.isnan(mu[active]).any(1)  # the sort's answer for a NaN box is not defined
    ref = list_boxes(tile_boxes(mu[active][keep], chol[active][keep], grid), active[keep], grid.shape[1],
                     grid.num_tiles)
    for a, b in zip((bins.starts, bins.ends, bins.ids), (ref.starts, ref.ends, ref.ids)):
        assert torch.equal(a, b)
    assert int((bins.ids == 8).sum()) == grid.num_tiles  # its box covers the grid
    assert not (bins.ids == 7).any() and not (bins.ids == 0).any()


def test_counting_sort_binning_of_nothing():
    grid = TileGrid(20, 20)
    empty = torch.zeros(0, 2), torch.zeros(0, 3), torch.zeros(0)
    for bins in (bin_kernels(*empty, grid), list_boxes(tile_boxes(*empty[:2], grid), torch.zeros(0, dtype=torch.long),
                                                       grid.shape[1], grid.num_tiles)):
        assert bins.ids.numel() == 0 and bins.counts.sum() == 0 and len(bins.starts) == grid.num_tiles


def brute_force(model, height, width, extent, offset=(0, 0)):
    """Per output pixel: map its centre to the model frame, find its tile, blend that tile's kernels."""
    h0, w0 = extent
    sy, sx = height / h0, width / w0
    grid = TileGrid(height, width, offset, scale=(sy, sx))
    bins = bin_kernels(model.mu, model.chol, model.pi, grid)
    ny, nx = grid.shape
    mu, chol, pi, m = (t.double().numpy() for t in (model.mu, model.chol, model.pi, model.experts))
    out = torch.zeros(height, width, m.shape[1], dtype=torch.float64).numpy()
    for r in range(height):
        for c in range(width):
            x, y = (c + 0.5) / sx, (r + 0.5) / sy
            t = int((y + offset[0]) // 16) * nx + int((x + offset[1]) // 16)
            ids = bins.ids[bins.starts[t]:bins.ends[t]].numpy()
            d = [x, y] - mu[ids]
            u = chol[ids, 0] * d[:, 0]
            v = chol[ids, 1] * d[:, 0] + chol[ids, 2] * d[:, 1]
            wgt = pi[ids] * torch.exp(torch.as_tensor(-0.5 * (u * u + v * v))).numpy()
            out[r, c] = wgt @ m[ids] / wgt.sum() if wgt.sum() > 1e-30 else 0
    return torch.as_tensor(out)


@pytest.mark.parametrize("size,offset", [((40, 56), (0, 0)), ((50, 70), (3, 5)), ((10, 14), (0, 0)),
                                         ((33, 28), (7, 0))])
def test_any_output_raster_samples_the_fitted_function(size, offset):
    extent = (20, 28)
    model = random_model(25, *extent, scale=(0.15, 0.6), seed=11)
    fast = smoe.rasterizer.render(model, *size, extent=extent, tile_offset=offset)
    ref = smoe.rasterizer.render(model, *size, extent=extent, tile_offset=offset, backend="torch")
    assert (fast - ref).abs().max() < 1e-5
    assert (fast.double() - brute_force(model, *size, extent, offset)).abs().max() < 1e-5


def test_scale_one_extent_is_the_plain_render_and_gradients_hold_at_scale():
    model = random_model(30, 24, 32, seed=8)
    assert torch.equal(smoe.rasterizer.render(model, 24, 32), smoe.rasterizer.render(model, 24, 32, extent=(24, 32)))
    weight = torch.randn(60, 80, 3, generator=torch.Generator().manual_seed(1))
    a = grads(model, 60, 80, "cpu", weight, extent=(24, 32))
    b = grads(model, 60, 80, "torch", weight, extent=(24, 32))
    for x, y in zip(a, b):
        assert (x - y).abs().max() <= 1e-4 * y.abs().max().clamp(min=1e-12)


def test_sharpening_keeps_the_fitted_tile_lists():
    model = random_model(30, 32, 32, scale=(0.1, 0.2), seed=2)
    sharp = smoe.rasterizer.render(model, 32, 32, sharpen=0.5)
    ref = smoe.rasterizer.render(model, 32, 32, sharpen=0.5, backend="torch")
    assert (sharp - ref).abs().max() < 1e-5
    # Same kernel lists as the unedited model, narrower kernels: the result equals a
    # brute-force blend of the fitted lists with B / f.
    edited = Model(model.mu, model.chol / 0.5, model.pi, model.experts)
    grid = TileGrid(32, 32)
    bins = bin_kernels(model.mu, model.chol, model.pi, grid)
    from smoe.fused_cpu import rasterize_cpu
    assert torch.allclose(sharp, rasterize_cpu(edited.mu, edited.chol, edited.pi, edited.experts, grid, bins))
    assert not torch.allclose(sharp, smoe.rasterizer.render(model, 32, 32))
    with pytest.raises(ValueError, match="sharpen"):
        smoe.rasterizer.render(model, 32, 32, sharpen=0)
