"""smoe.superres and ``smoe upscale``: rendering a fit on other rasters (tiny images, few steps)."""

import numpy as np
import pytest
import torch

import smoe.superres as sr
from smoe import Model, render
from smoe.cli import main
from smoe.imageio import read_image, write_image
from smoe.superres import MAX_OUTPUT_PIXELS, target_size, upscale

H, W = 48, 64
FAST = {"n_kernels": 300, "iters": 15}


def _image():
    y, x = np.mgrid[0:H, 0:W] / np.array([H, W])[:, None, None]
    disc = ((x - 0.6) ** 2 + (y - 0.5) ** 2 < 0.06).astype(np.float32)
    return np.stack([x, y, 0.3 + 0.5 * disc], axis=2).astype(np.float32)


def _blob(cy=20.3, cx=27.6, sigma=2.5):
    """A grey Gaussian spot centred at (cx, cy) in pixel-centre coordinates."""
    r, c = np.mgrid[0:H, 0:W] + 0.5
    return np.exp(-0.5 * ((c - cx) ** 2 + (r - cy) ** 2) / sigma ** 2).astype(np.float32)


def _centroid(image, scale=1.0):
    """Intensity-weighted centre (x, y) in input-pixel units of an image rendered at ``scale``."""
    r, c = (np.mgrid[0:image.shape[0], 0:image.shape[1]] + 0.5) / scale
    weight = np.clip(image - 0.3, 0, None)  # the spot only: a fit's faint background would pull the centre
    return np.array([(weight * c).sum(), (weight * r).sum()]) / weight.sum()


# ==================================================================== renders
def test_scale_one_equals_the_fits_render():
    image = _image()
    out, result = upscale(image, 1, return_model=True, **FAST)
    with torch.no_grad():
        again = render(result.model, H, W).numpy()
    assert out.shape == (H, W, 3)
    assert np.array_equal(out, again)


def test_a_kernel_peak_lands_at_twice_its_position():
    # One round kernel centred on the model point (10.25, 7.25): at scale 2 that is exactly the
    # centre of output pixel (row 14, column 20), since output pixel centres sit at (C + 1/2) / 2.
    model = Model([[10.25, 7.25]], [[0.5, 0.0, 0.5]], [1.0], [[1.0]])
    with torch.no_grad():
        big = render(model, 2 * H, 2 * W, mode="rbf", extent=(H, W)).numpy()[:, :, 0]
    assert np.unravel_index(np.argmax(big), big.shape) == (14, 20)
    assert big[14, 20] == pytest.approx(1.0, abs=1e-5)


def test_upscaled_content_keeps_its_place():
    blob = _blob()
    big = upscale(blob, 2, n_kernels=200, iters=40)
    assert big.shape == (2 * H, 2 * W)
    np.testing.assert_allclose(_centroid(big, 2.0), _centroid(blob), atol=0.1)
    np.testing.assert_allclose(_centroid(blob), [27.6, 20.3], atol=0.05)


@pytest.mark.parametrize("scale, shape", [(2.5, (120, 160)), (0.5, (24, 32)), (1.3, (62, 83)), (3, (144, 192))])
def test_any_real_scale(scale, shape):
    assert target_size((H, W), scale=scale) == shape
    assert upscale(_image(), scale, n_kernels=50, iters=3).shape == (*shape, 3)


def test_explicit_size_may_change_the_aspect():
    assert upscale(_image(), size=(30, 100), n_kernels=50, iters=3).shape == (30, 100, 3)


def test_sharpening_changes_the_render():
    image = _image()
    plain, result = upscale(image, 2, return_model=True, **FAST)
    sharp = upscale(image, 2, sharpen=0.6, **FAST)
    with torch.no_grad():
        expected = render(result.model, 2 * H, 2 * W, extent=(H, W), sharpen=0.6).numpy()
    assert np.array_equal(sharp, expected)
    assert np.abs(sharp - plain).max() > 1e-2


def test_rbf_mode_and_grey_layout():
    out = upscale(_image()[:, :, 1], 2, mode="rbf", n_kernels=100, iters=5)
    assert out.shape == (2 * H, 2 * W) and np.isfinite(out).all()


# ==================================================================== errors
@pytest.mark.parametrize("kwargs, match", [
    ({"scale": 0}, "scale must be"), ({"scale": -2}, "scale must be"), ({"scale": float("nan")}, "scale must be"),
    ({"scale": float("inf")}, "scale must be"), ({}, "give a scale"), ({"scale": 2, "size": (4, 4)}, "not both"),
    ({"size": (0, 5)}, "positive"), ({"scale": 2000}, "megapixels exceeds the limit"),
    ({"size": (20_000, 20_000)}, "exceeds the limit"), ({"scale": 2, "sharpen": 0}, "sharpen"),
    ({"scale": 2, "sharpen": float("nan")}, "sharpen"), ({"scale": 2, "mode": "nope"}, "mode"),
    ({"scale": 2, "n_kernels": 2.5}, "n_kernels"),
])
def test_bad_arguments_fail_before_fitting(kwargs, match, monkeypatch):
    monkeypatch.setattr(sr, "fit", lambda *a, **k: pytest.fail("fitted although the request is invalid"))
    with pytest.raises(ValueError, match=match) as info:
        upscale(_image(), **kwargs)
    assert "\n" not in str(info.value)


def test_cli_render_refuses_outputs_past_the_pixel_limit(tmp_path, capsys, monkeypatch):
    import smoe.rasterizer
    from smoe.modelfile import save_model

    model_file = tmp_path / "m.smoe.npz"
    save_model(model_file, Model([[3.0, 2.0]], [[0.5, 0.0, 0.5]], [1.0], [[0.2, 0.4, 0.6]]),
               mode="smoe", scope="raster", height=4, width=6)
    # One row more than a 10 000-wide raster of exactly the limit: W x H = limit + W, just past it.
    width = 10_000
    height = MAX_OUTPUT_PIXELS // width + 1
    assert MAX_OUTPUT_PIXELS < width * height <= MAX_OUTPUT_PIXELS + width
    # Should the size check be missing, fail at once instead of allocating a 100-megapixel raster.
    monkeypatch.setattr(smoe.rasterizer, "render", lambda *a, **k: pytest.fail("rendered an output past the pixel limit"))
    out = tmp_path / "o" / "big.png"
    assert main(["render", str(model_file), "--size", f"{width}x{height}", "-o", str(out)]) == 2
    err = _one_line_error(capsys)
    assert "megapixels" in err and "limit" in err
    assert f"{MAX_OUTPUT_PIXELS // 1_000_000} megapixels" in err  # the limit itself is named
    assert f"{width}x{height}" in err  # and the refused size
    assert not out.exists() and not (tmp_path / "o").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.smoe.npz"]


def test_bad_images_are_refused():
    with pytest.raises(ValueError, match="NaN"):
        upscale(np.full((H, W), np.nan), 2)
    with pytest.raises(ValueError, match="shape"):
        upscale(np.zeros((H, W, 4)), 2)


# ======================================================================= CLI
@pytest.fixture
def image_file(tmp_path):
    path = tmp_path / "tiny.png"
    write_image(path, _image())
    return path


def _one_line_error(capsys):
    err = capsys.readouterr().err
    assert err.startswith("smoe: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_cli_upscale_end_to_end(image_file, tmp_path, capsys):
    out = tmp_path / "sub" / "big.png"
    assert main(["upscale", str(image_file), "--scale", "2.5", "-n", "100", "--iters", "5", "--sharpen", "0.9",
                 "-o", str(out)]) == 0
    assert read_image(out).shape == (120, 160, 3)
    assert "wrote" in capsys.readouterr().out
    size = tmp_path / "size.png"
    assert main(["upscale", str(image_file), "--size", "100x30", "-n", "50", "--iters", "3", "--quiet",
                 "-o", str(size)]) == 0
    assert read_image(size).shape == (30, 100, 3)
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize("options", [
    ["--scale", "0"], ["--scale", "-1"], ["--scale", "nan"], ["--size", "0x5"], ["--scale", "2", "--size", "4x4"],
    [], ["--scale", "10000"], ["--size", "20000x20000"], ["--scale", "2", "--sharpen", "0"],
    ["--scale", "2", "-n", "0"], ["--scale", "2", "-n", str(H * W + 1)], ["--scale", "2", "--iters", "0"],
    ["--scale", "2", "--mode", "nope"],
])
def test_cli_upscale_rejects_bad_options(options, image_file, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sr, "fit", lambda *a, **k: pytest.fail("fitted although the request is invalid"))
    out = tmp_path / "o" / "big.png"
    assert main(["upscale", str(image_file), *options, "-o", str(out)]) == 2
    _one_line_error(capsys)
    assert not (tmp_path / "o").exists()


def test_cli_upscale_rejects_missing_images_and_bad_outputs(image_file, tmp_path, capsys):
    assert main(["upscale", str(tmp_path / "missing.png"), "--scale", "2", "-o", str(tmp_path / "x.png")]) == 2
    _one_line_error(capsys)
    assert main(["upscale", str(image_file), "--scale", "2", "-o", str(tmp_path / "x.xyz")]) == 2
    _one_line_error(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.png"]
