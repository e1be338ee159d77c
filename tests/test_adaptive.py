"""Tests of the AS-SMoE initializer (smoe.initializers.adaptive; SPEC §3, AS paper Section IV)."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

import smoe
import smoe.segment
from smoe.initializers import available, initialize
from smoe.executor import InProcessExecutor, ProcessExecutor, make_executor
from smoe.initializers import adaptive as A
from smoe.initializers.adaptive.local_fit import _LocalFit
from smoe.initializers.adaptive.mosaic import quantize
from smoe.parameters import from_log_chol


# ---------------------------------------------------------------------------
# Helpers


def smoe_eval(mu, chol, pi, experts, xy):
    """Global SMoE at points xy (P, 2), in float64 NumPy: the oracle for geometry tests."""
    mu, chol, pi, experts = (np.asarray(a, np.float64) for a in (mu, chol, pi, experts))
    d = xy[:, None, :] - mu[None]
    u = chol[None, :, 0] * d[..., 0]
    v = chol[None, :, 1] * d[..., 0] + chol[None, :, 2] * d[..., 1]
    wk = pi[None] * np.exp(-0.5 * (u * u + v * v))
    return (wk @ experts) / wk.sum(1, keepdims=True)


def local_kernels(n_blocks, per_block, size=32, channels=3, seed=0):
    """Random kernels in local block coordinates, ``per_block`` per block, shaped like a fit result."""
    g = np.random.default_rng(seed)
    n = n_blocks * per_block
    chol = np.stack([g.uniform(0.15, 0.4, n), g.uniform(-0.1, 0.1, n), g.uniform(0.15, 0.4, n)], 1)
    return {"mu": g.uniform(0, size, (n, 2)).astype(np.float32), "chol": chol.astype(np.float32),
            "pi": g.uniform(0.2, 1.0, n).astype(np.float32),
            "experts": g.uniform(0, 1, (n, channels)).astype(np.float32),
            "owner": np.repeat(np.arange(n_blocks), per_block)}


def shapes_image(h=64, w=96, seed=0):
    """A few flat shapes on a smooth background, plus a textured patch: several segments of all kinds."""
    g = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w] + 0.5
    img = np.stack([0.3 + 0.3 * xx / w, 0.4 + 0.2 * yy / h, 0.5 * np.ones_like(xx)], -1)
    img[np.hypot(xx - 25, yy - 30) < 14] = (0.9, 0.2, 0.1)
    img[(xx > 55) & (xx < 85) & (yy > 8) & (yy < 28)] = (0.1, 0.3, 0.8)
    img[(xx > 60) & (yy > 40)] = (0.95, 0.9, 0.2)
    patch = (xx > 5) & (xx < 20) & (yy > 50)
    img[patch] = g.uniform(0, 1, (int(patch.sum()), 3))
    return img.astype(np.float32)


FAST = dict(max_iters=60, double_every=15, max_kernels=40)


# ---------------------------------------------------------------------------
# The mosaic


def test_registered():
    assert "adaptive" in available()


def test_mosaic_renders_each_block_as_its_own_global_smoe():
    k = local_kernels(3, 6)
    out = A.render_blocks(k["mu"], k["chol"], k["pi"], k["experts"], k["owner"], 3)
    assert out.shape == (3, 32, 32, 3)
    yy, xx = np.mgrid[:32, :32] + 0.5
    xy = np.stack([xx.ravel(), yy.ravel()], 1)
    mu = quantize(k["mu"])
    for b in range(3):
        s = k["owner"] == b
        ref = smoe_eval(mu[s], k["chol"][s], k["pi"][s], k["experts"][s], xy).reshape(32, 32, 3)
        np.testing.assert_allclose(out[b], ref, atol=2e-5)


def test_mosaic_isolates_blocks():
    k = local_kernels(4, 5, seed=1)
    before = A.render_blocks(k["mu"], k["chol"], k["pi"], k["experts"], k["owner"], 4)
    # Move a kernel of block 1 onto block 2's area in local terms, widen it and change its colour.
    j = 5
    k["mu"][j] = (16.0, 16.0)
    k["chol"][j] = (0.01, 0.0, 0.01)
    k["pi"][j] = 100.0
    k["experts"][j] = (1.0, 1.0, 1.0)
    after = A.render_blocks(k["mu"], k["chol"], k["pi"], k["experts"], k["owner"], 4)
    assert np.abs(after[1] - before[1]).max() > 0.1
    for b in (0, 2, 3):
        np.testing.assert_array_equal(after[b], before[b])


def test_gradients_do_not_depend_on_batching():
    """The same block fitted alone or among others, at another mosaic place: identical result."""
    g = np.random.default_rng(3)
    blocks = g.uniform(0, 1, (5, 32, 32, 3)).astype(np.float32)
    cfg = dict(A.LocalFitSettings(max_iters=12, double_every=5).__dict__)
    together = A.fit_block_chunk(blocks, None, np.arange(5), 7, cfg)
    alone = A.fit_block_chunk(blocks[3:4], None, np.array([3]), 7, cfg)
    sel = together["owner"] == 3
    for name in ("mu", "chol", "pi", "experts"):
        np.testing.assert_array_equal(together[name][sel], alone[name])
    assert together["psnr"][3] == alone["psnr"][0]


# ---------------------------------------------------------------------------
# Batched local fits (Algorithm 1)


def test_local_fit_targets_freezing_and_doubling():
    yy, xx = np.mgrid[:32, :32] + 0.5
    flat = np.full((32, 32, 3), 0.4, np.float32)
    edge = np.where((xx + 0.5 * yy < 24)[..., None], [0.9, 0.2, 0.1], [0.1, 0.3, 0.8]).astype(np.float32)
    noise = np.random.default_rng(0).uniform(0, 1, (32, 32, 3)).astype(np.float32)
    blocks = np.stack([flat, edge, noise])
    cfg = dict(A.LocalFitSettings(target_psnr=35.0, **FAST).__dict__)
    start = A.fit_block_chunk(blocks, None, np.arange(3), 0, {**cfg, "max_iters": 1})
    res = A.fit_block_chunk(blocks, None, np.arange(3), 0, cfg)
    counts = np.bincount(res["owner"], minlength=3)
    # The flat block reaches any target at once and is frozen with its 10 kernels.
    assert res["reached"][0] and res["iterations"][0] == 1 and counts[0] == 10
    # Fitting improves the edge block a lot; the noise block cannot reach the target:
    # it doubles twice (10 -> 20 -> 40) and gives up at the cap.
    assert res["psnr"][1] > start["psnr"][1] + 5
    assert res["psnr"][2] > start["psnr"][2]
    assert not res["reached"][2] and 20 < counts[2] <= 40
    assert res["iterations"][2] == 45
    # The reported PSNR is that of the returned (best) parameters.
    out = A.render_blocks(res["mu"], res["chol"], res["pi"], res["experts"], res["owner"], 3)
    mse = ((out - blocks) ** 2).reshape(3, -1).mean(1)
    np.testing.assert_allclose(-10 * np.log10(mse[1:]), res["psnr"][1:], atol=0.05)


def test_easy_target_freezes_early():
    yy, xx = np.mgrid[:32, :32] + 0.5
    ramp = np.repeat((xx / 32)[..., None], 3, 2).astype(np.float32)
    res = A.fit_block_chunk(ramp[None], None, np.arange(1), 0,
                            dict(A.LocalFitSettings(target_psnr=20.0, **FAST).__dict__))
    assert res["reached"][0] and res["iterations"][0] < 15 and res["psnr"][0] >= 20.0


def test_doubling_keeps_the_block_output():
    g = np.random.default_rng(1)
    blocks = g.uniform(0, 1, (2, 32, 32, 3)).astype(np.float32)
    cfg = A.LocalFitSettings(max_iters=10, double_every=5, jitter=0.0, lr_mu=0.1)
    fitter = _LocalFit(blocks, None, np.arange(2), 0, cfg)
    for it in range(1, 5):
        fitter._iterate(it, False, cfg.lr_mu)
    k = fitter.k
    before = A.render_blocks(k["mu"], from_log_chol(k["chol"]), k["pi"], k["experts"], k["owner"], 2)
    n = len(k["pi"])
    fitter._checkpoint(5)
    k = fitter.k
    assert len(k["pi"]) == 2 * n
    after = A.render_blocks(k["mu"], from_log_chol(k["chol"]), k["pi"], k["experts"], k["owner"], 2)
    np.testing.assert_allclose(after, before, atol=1e-5)


# ---------------------------------------------------------------------------
# Boxes, resampling and export geometry


@pytest.mark.parametrize("side,atol", [(64, 1e-5), (20, 1e-5), (32, 1e-5), (80, 2e-4)])
def test_resampling_is_exact_for_linear_images(side, atol):
    """Area averaging (shrink) and bilinear sampling (enlarge) reproduce a linear image at the mapped
    block pixel centres.  With a fractional footprint (side 80: 2.5 px) a partly covered pixel
    counts with its whole value, an error of at most a quarter pixel times the slope."""
    h, w = 160, 170
    yy, xx = np.mgrid[:h, :w] + 0.5
    img = np.stack([0.002 * xx + 0.001 * yy, 0.003 * yy, 0.5 + 0 * xx], -1).astype(np.float32)
    labels = np.zeros((h, w), np.int32)
    labels[50:50 + side - 10, 40:40 + side - 10] = 1
    boxes = A.corona_blocks(labels, corona=5)
    (x0, y0), s = boxes.origins[0], boxes.sides[0] / 32
    assert boxes.sides[0] == side and (x0, y0) == (35, 45)
    pixels, masks = A.extract_blocks(img, boxes, 32)
    v, u = np.mgrid[:32, :32] + 0.5
    X, Y = x0 + s * u, y0 + s * v
    ref = np.stack([0.002 * X + 0.001 * Y, 0.003 * Y, 0.5 + 0 * X], -1)
    np.testing.assert_allclose(pixels[0], ref, atol=atol)
    # The mask is the segment's share of each block pixel: all of the centre, none of the corona's edge.
    assert masks[0, 16, 16] == pytest.approx(1.0) and masks[0, 0, 0] == pytest.approx(0.0)


def test_export_map_is_exact():
    k = local_kernels(1, 7, seed=2)
    boxes = A.Blocks(np.array([[37, -11]]), np.array([83]), np.array([1]), np.zeros((200, 200), np.int32))
    mu, chol = A.map_to_image(k, boxes, 32)
    s = 83 / 32
    g = np.random.default_rng(0)
    local_pts = g.uniform(0, 32, (50, 2))
    image_pts = np.array([37.0, -11.0]) + s * local_pts
    np.testing.assert_allclose(smoe_eval(mu, chol, k["pi"], k["experts"], image_pts),
                               smoe_eval(k["mu"], k["chol"], k["pi"], k["experts"], local_pts), atol=1e-9)
    # The same through the renderer: the image-domain model sampled at the block's pixel centres.
    shifted = smoe.Model((mu - [37.0, -11.0]).astype(np.float32), chol.astype(np.float32), k["pi"], k["experts"])
    on_box = smoe.rasterizer.render(shifted, 32, 32, extent=(83, 83), scope="global").numpy()
    local = smoe.rasterizer.render(smoe.Model(k["mu"], k["chol"], k["pi"], k["experts"]), 32, 32, scope="global").numpy()
    np.testing.assert_allclose(on_box, local, atol=1e-5)
    # Covariances scale by s^2.
    cov_l = smoe.Model(k["mu"], k["chol"], k["pi"], k["experts"]).covariance.double().numpy()
    cov_i = smoe.Model(mu, chol, k["pi"], k["experts"]).covariance.double().numpy()
    np.testing.assert_allclose(cov_i, s * s * cov_l, rtol=1e-5)


def test_supporting_kernels_outside_the_segment_are_dropped():
    h, w = 64, 64
    yy, xx = np.mgrid[:h, :w] + 0.5
    labels = np.where(np.hypot(xx - 32, yy - 32) < 12, 1, 2).astype(np.int32)
    img = np.where(labels[..., None] == 1, [0.9, 0.1, 0.1], [0.1, 0.1, 0.9]).astype(np.float32)
    boxes = A.corona_blocks(labels, corona=5)
    b = 0  # the disk: box of side 24 + 10 = 34 at (15, 15)
    assert boxes.sides[b] == 34 and tuple(boxes.origins[b]) == (15, 15)
    s = 34 / 32
    # Local centres mapped to the disk centre, just inside, and two outside (corona corners).
    img_pts = np.array([[32.0, 32.0], [40.0, 32.5], [16.0, 16.0], [47.5, 20.0]])
    local = {"mu": ((img_pts - 15) / s).astype(np.float32), "chol": np.full((4, 3), [0.3, 0.0, 0.3], np.float32),
             "pi": np.ones(4, np.float32), "experts": np.tile(np.float32([0.9, 0.1, 0.1]), (4, 1)),
             "owner": np.zeros(4, np.int64)}
    mu, _ = A.map_to_image(local, boxes, 32)
    np.testing.assert_array_equal(A.inside_kernels(mu, local["owner"], boxes), [True, True, False, False])
    for mode in A.EXPORTS:
        out = A.export_kernels(local, boxes, img, 32, mode=mode)
        assert len(out["pi"]) == 2 + (1 if mode == "moments" else 0)  # block 1 (the rest) gets a fallback
        disk = out["owner"] == 0
        assert disk.sum() == 2
        px = np.floor(out["mu"][disk]).astype(int)
        assert (labels[px[:, 1], px[:, 0]] == 1).all()


def test_moments_export_tiles_the_segment_and_keeps_colours():
    labels = np.ones((40, 60), np.int32)
    labels[:, 30:] = 2
    img = np.where(labels[..., None] == 1, [0.8, 0.2, 0.2], [0.2, 0.2, 0.8]).astype(np.float32)
    model, rep = A.adaptive_init_with_report(img, labels=labels, **FAST)
    out = smoe.rasterizer.render(model, 40, 60).numpy()
    assert smoe.metrics.psnr(img, out) > 20
    assert rep.segments == 2 and rep.kernels_final == len(model)
    np.testing.assert_allclose(out[:, :20], img[:, :20], atol=0.05)
    np.testing.assert_allclose(out[:, 40:], img[:, 40:], atol=0.05)


def test_large_segments_are_tiled():
    labels = np.ones((100, 150), np.int32)
    labels[40:60, 60:90] = 2
    boxes = A.corona_blocks(labels, corona=5, max_side=40)
    assert (boxes.sides <= 40).all() and len(boxes) > 2
    assert (boxes.owner >= 0).all()
    # Every pixel is owned by one block of its own segment, and lies inside that block's box.
    seg_of_pixel = boxes.segment[boxes.owner]
    np.testing.assert_array_equal(seg_of_pixel, labels)
    yy, xx = np.mgrid[:100, :150]
    o = boxes.origins[boxes.owner]
    side = boxes.sides[boxes.owner]
    assert ((xx >= o[..., 0]) & (xx < o[..., 0] + side) & (yy >= o[..., 1]) & (yy < o[..., 1] + side)).all()
    # Without a cap: one block per segment.
    assert len(A.corona_blocks(labels, corona=5)) == 2


def test_border_segments_keep_their_box_inside_the_image():
    labels = np.ones((50, 70), np.int32)
    labels[:12, :9] = 2        # top-left corner
    labels[40:, 60:] = 3       # bottom-right corner
    boxes = A.corona_blocks(labels, corona=5, max_side=None)
    for (x0, y0), side in zip(boxes.origins[1:], boxes.sides[1:]):
        assert x0 >= 0 and y0 >= 0 and x0 + side <= 70 and y0 + side <= 50
    img = np.random.default_rng(0).uniform(0, 1, (50, 70, 3)).astype(np.float32)
    model, rep = A.adaptive_init_with_report(img, labels=labels, **FAST)
    assert rep.segments == 3 and len(model) >= 3


# ---------------------------------------------------------------------------
# Whole initializer


def test_initializer_on_shapes():
    img = shapes_image()
    model, rep = A.adaptive_init_with_report(img, seed=0, **FAST)
    assert rep.segments >= 4 and rep.blocks >= rep.segments
    assert rep.kernels_final == rep.kernels_exported == len(model) > 0
    assert rep.kernels_inside <= rep.kernels_local
    assert rep.seconds_total >= rep.seconds_local_fit > 0
    assert len(rep.block_psnr) == len(rep.block_kernels) == len(rep.block_iterations) == rep.blocks
    assert smoe.metrics.psnr(img, smoe.rasterizer.render(model, 64, 96).numpy()) > 17
    # The registry gives the same model for the same seed.
    again = initialize("adaptive", img, None, seed=0, **FAST)
    again2 = initialize("adaptive", img, None, seed=0, **FAST)
    assert torch.equal(again.mu, again2.mu)


def test_beats_grid_and_kmeans_on_a_kodak_crop(kodak_dir):
    img = smoe.read_image(kodak_dir / "kodim23.png")[192:320, 320:448]
    model = initialize("adaptive", img, None, seed=0, **FAST)
    psnr = {name: smoe.metrics.psnr(img, smoe.rasterizer.render(m, 128, 128).numpy()) for name, m in
            [("adaptive", model), ("grid", initialize("grid", img, len(model))),
             ("kmeans", initialize("kmeans", img, len(model)))]}
    assert psnr["adaptive"] > psnr["grid"] + 1 and psnr["adaptive"] > psnr["kmeans"] + 1, psnr


def test_kernel_cap():
    img = shapes_image()[:48, :64]
    full = initialize("adaptive", img, None, seed=0, **FAST)
    capped = initialize("adaptive", img, 8, seed=0, **FAST)
    assert len(capped) == 8 < len(full)


def test_budget_keeps_a_kernel_per_block_and_covers_every_pixel():
    img = shapes_image()
    dense, _ = A.dense_labels(smoe.segment.mdbscan(img, 40), img.shape[:2])
    boxes = A.corona_blocks(dense, 5, 48)
    pixels, masks = A.extract_blocks(img, boxes, 32)
    local = A.fit_blocks(pixels, masks, 0, A.LocalFitSettings(**FAST))
    full = A.export_kernels(local, boxes, img, 32)
    nb = len(boxes)
    assert full["uncapped"] == len(full["pi"]) > nb
    capped = A.export_kernels(local, boxes, img, 32, budget=nb)
    assert len(capped["pi"]) == nb and capped["uncapped"] == len(full["pi"])
    np.testing.assert_array_equal(np.sort(capped["owner"]), np.arange(nb))
    # The survivors gate all the pixels of their blocks (responsibilities sum to one per pixel).
    assert capped["mass"].sum() == pytest.approx(img.shape[0] * img.shape[1])
    assert len(A.export_kernels(local, boxes, img, 32, budget=2)["pi"]) == 2
    assert len(A.export_kernels(local, boxes, img, 32, mode="exact", budget=3)["pi"]) == 3


@pytest.mark.dask  # workers=2 starts a Dask LocalCluster where Dask is installed (local processes otherwise)
def test_workers_give_identical_results():
    img = shapes_image(seed=1)[:48, :80]
    m1, r1 = A.adaptive_init_with_report(img, seed=3, workers=1, **FAST)
    m2, r2 = A.adaptive_init_with_report(img, seed=3, workers=2, **FAST)
    for name in ("mu", "chol", "pi", "experts"):
        assert torch.equal(getattr(m1, name), getattr(m2, name)), name
    np.testing.assert_array_equal(r1.block_psnr, r2.block_psnr)
    np.testing.assert_array_equal(r1.block_iterations, r2.block_iterations)


def assert_same_init(a, b):
    (m1, r1), (m2, r2) = a, b
    assert r1.blocks > 2  # enough blocks for every chunk to get some
    for name in ("mu", "chol", "pi", "experts"):
        assert torch.equal(getattr(m1, name), getattr(m2, name)), name
    for name in ("block_psnr", "block_kernels", "block_iterations"):
        np.testing.assert_array_equal(getattr(r1, name), getattr(r2, name), err_msg=name)


def test_explicit_executors_give_identical_models():
    img = shapes_image(seed=1)[:48, :80]
    reference = A.adaptive_init_with_report(img, seed=3, **FAST)
    registry = initialize("adaptive", img, None, seed=4, **FAST)  # seeds its own rng: another base seed
    with InProcessExecutor() as ex:
        inproc = A.adaptive_init_with_report(img, seed=3, executor=ex, **FAST)
    assert inproc[1].settings["executor"].startswith("in-process")
    assert_same_init(reference, inproc)
    # Two local processes.  The executor is the caller's: still open after a first
    # initialization, it serves a second one (here through the registry, as fit() calls it).
    with ProcessExecutor(2) as ex:
        assert_same_init(reference, A.adaptive_init_with_report(img, seed=3, executor=ex, **FAST))
        model = initialize("adaptive", img, None, seed=4, executor=ex, **FAST)
        for name in ("mu", "chol", "pi", "experts"):
            assert torch.equal(getattr(model, name), getattr(registry, name)), name


@pytest.mark.dask
@pytest.mark.skipif(importlib.util.find_spec("distributed") is None, reason="needs dask and distributed")
def test_dask_executor_gives_identical_models():
    img = shapes_image(seed=1)[:48, :80]
    reference = A.adaptive_init_with_report(img, seed=3, **FAST)
    with make_executor(2, backend="dask") as ex:
        assert_same_init(reference, A.adaptive_init_with_report(img, seed=3, executor=ex, **FAST))


def test_flat_image_is_one_segment():
    img = np.full((40, 50, 3), 0.3, np.float32)
    model, rep = A.adaptive_init_with_report(img, **FAST)
    assert rep.segments == 1 and rep.blocks_reached_target == rep.blocks and rep.iterations == 1
    np.testing.assert_allclose(smoe.rasterizer.render(model, 40, 50).numpy(), img, atol=1e-5)


@pytest.mark.parametrize("shape", [(20, 20, 3), (20, 20, 1), (5, 3, 3), (1, 1, 1)])
def test_images_smaller_than_a_block(shape):
    g = np.random.default_rng(0)
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    img = (0.5 + 0.4 * np.sin(xx / 3.0 + yy / 5.0))[..., None].repeat(shape[2], 2).astype(np.float32)
    img += g.uniform(0, 0.01, img.shape).astype(np.float32)
    model, rep = A.adaptive_init_with_report(img, **FAST)
    out = smoe.rasterizer.render(model, shape[0], shape[1]).numpy()
    assert model.channels == shape[2] and np.isfinite(out).all()
    assert smoe.metrics.psnr(img, out) > 15


def test_fit_end_to_end():
    img = shapes_image()
    res = smoe.fit(img, None, init="adaptive", iters=20)
    assert res.init_kernels > 0 and np.isfinite(res.final_psnr) and res.final_psnr > 20


@pytest.mark.parametrize("options,match", [
    (dict(threshold=0), "threshold"),
    (dict(threshold=-5.0), "threshold"),
    (dict(target_psnr=float("nan")), "target_psnr"),
    (dict(target_psnr=float("inf")), "target_psnr"),
    (dict(max_iters=0), "max_iters"),
    (dict(kernels=20, max_kernels=10), "max_kernels"),
    (dict(block=40), "multiple of 16"),
    (dict(corona=-1), "corona"),
    (dict(max_side=8), "max_side"),
    (dict(workers=0), "workers"),
    (dict(workers=1.5), "workers"),
    (dict(executor="processes"), "executor must be a smoe.executor.Executor"),
    (dict(bandwidth_factor=0.0), "bandwidth_factor"),
    (dict(export="nearest"), "export"),
    (dict(labels=np.ones((3, 3), np.int32)), "labels"),
    (dict(labels=np.zeros((40, 50), np.int32)), "no segment"),
    (dict(speed=3), "unknown option"),
])
def test_bad_options(options, match):
    img = np.full((40, 50, 3), 0.3, np.float32)
    with pytest.raises(ValueError, match=match):
        A.adaptive_init_with_report(img, **options)


@pytest.mark.parametrize("image,match", [
    (np.full((10, 10, 4), 0.5, np.float32), "shape"),
    (np.full((10, 10, 3), np.nan, np.float32), "NaN"),
    (np.full((10, 10, 3), 128, np.uint8), "float"),
])
def test_bad_images(image, match):
    with pytest.raises(ValueError, match=match):
        A.adaptive_init_with_report(image)


def test_n_kernels_must_be_positive():
    with pytest.raises(ValueError, match="n_kernels"):
        initialize("adaptive", np.full((10, 10, 3), 0.5, np.float32), 0)
