"""Tests for smoe.metrics.

What is checked against what:

* PSNR: closed-form values worked out by hand in the tests.
* SSIM: ``pytorch_msssim.ssim`` (the reference the SPEC names, 1e-5 and, in float64,
  1e-10) and ``skimage.metrics.structural_similarity`` (an independent implementation;
  its mean over the interior, where the Gaussian fits, is exactly our valid region;
  the only difference left is pytorch-msssim's float32 window taps, see below).
* MS-SSIM: ``pytorch_msssim.ms_ssim``, on sizes that make the odd-side padding matter.
* LPIPS:
  - the AlexNet features and the whole distance against a second implementation in
    this file built from ``torch.nn`` layers (Conv2d/ReLU/MaxPool2d) that reads the
    shipped npz directly;
  - the Flax (kh, kw, in, out) -> PyTorch (out, in, kh, kw) re-layout of
    ``tools/convert_lpips_weights.py`` against a NumPy cross-correlation written the
    way Flax/JAX defines it;
  - properties: d(x, x) == 0, symmetry, grey == replicated RGB, growth with noise
    level on a Kodak crop, a plausible range;
  - published values: the LPIPS row of pyiqa's ``ResultsCalibra/results_official.csv``
    (computed by the pyiqa authors with the original LPIPS code) for its five image
    pairs. Those images are not redistributable with smoe, so that test runs only when
    ``SMOE_LPIPS_CALIBRA_DIR`` points to an unpacked ``ResultsCalibra`` folder, e.g.
    ``pip download --no-deps --no-binary :all: pyiqa==0.1.16`` and untar it. With it,
    all five pairs matched to the printed precision (0.7237, 0.2572, 0.05079, 0.05205,
    0.4253).
"""

from __future__ import annotations

import csv
import importlib.resources
import importlib.util
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

from smoe import metrics

REPO = Path(__file__).resolve().parents[1]
KODAK = Path(os.environ.get("SMOE_KODAK_DIR", REPO.parent / "shared" / "data" / "kodak"))


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def kodim23() -> np.ndarray:
    path = KODAK / "kodim23.png"
    if not path.exists():
        pytest.skip(f"Kodak image not found at {path} (set SMOE_KODAK_DIR)")
    from PIL import Image

    return np.asarray(Image.open(path).convert("RGB"), dtype=np.float64) / 255.0


def noisy(image: np.ndarray, sigma: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(image + rng.normal(0.0, sigma, image.shape), 0.0, 1.0)


def nchw(image: np.ndarray, dtype=torch.float64) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(image)).to(dtype)
    if t.ndim == 2:
        t = t[:, :, None]
    return t.permute(2, 0, 1).unsqueeze(0)


# --------------------------------------------------------------------------- PSNR


def test_psnr_matches_hand_computation():
    ref = np.zeros((4, 5, 3))
    img = ref.copy()
    img[0, 0, 0] = 0.5
    img[1, 2, 1] = 0.25
    # MSE = (0.25 + 0.0625) / 60 = 1 / 192, so PSNR = 10 log10(192).
    assert metrics.psnr(ref, img) == pytest.approx(10 * math.log10(192), abs=1e-12)
    assert metrics.psnr(255 * ref, 255 * img, data_range=255) == pytest.approx(10 * math.log10(192), abs=1e-12)


def test_psnr_uniform_offset_and_identity():
    ref = np.full((8, 8), 0.5)
    assert metrics.psnr(ref, ref + 0.1) == pytest.approx(20.0, abs=1e-9)  # MSE = 0.01
    assert metrics.psnr(ref, ref) == math.inf


def test_psnr_torch_and_numpy_agree(kodim23):
    a = kodim23[:40, :50]
    b = noisy(a, 0.05)
    want = metrics.psnr(a, b)
    got = metrics.psnr(torch.from_numpy(a).float().requires_grad_(), torch.from_numpy(b).float())
    assert got == pytest.approx(want, abs=1e-4)


# --------------------------------------------------------------------------- SSIM


@pytest.mark.parametrize("grey", [False, True])
def test_ssim_matches_pytorch_msssim(kodim23, grey):
    pm = pytest.importorskip("pytorch_msssim")
    a = kodim23[100:197, 300:421]
    if grey:
        a = a.mean(axis=2)
    b = noisy(a, 0.05)
    ours = metrics.ssim(a, b)
    # float64 input: same arithmetic, so agreement down to rounding.
    assert ours == pytest.approx(float(pm.ssim(nchw(a), nchw(b), data_range=1.0)), abs=1e-10)
    # float32 input (how the package is normally used): the SPEC's 1e-5.
    ref32 = float(pm.ssim(nchw(a, torch.float32), nchw(b, torch.float32), data_range=1.0))
    assert ours == pytest.approx(ref32, abs=1e-5)


def test_ssim_matches_skimage_on_valid_region(kodim23):
    skm = pytest.importorskip("skimage.metrics")
    a = kodim23[50:130, 60:170]
    b = noisy(a, 0.08, seed=3)
    _, smap = skm.structural_similarity(
        a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
        data_range=1.0, channel_axis=2, full=True,
    )
    # skimage filters with reflective padding; its maps equal ours where the 11-tap
    # window lies inside the image, i.e. 5 pixels in from each border.
    sk_valid = float(smap[5:-5, 5:-5].mean())
    # Remaining gap: our window taps are pytorch-msssim's float32 ones (off by ~1e-8
    # from skimage's float64 Gaussian), which moves SSIM of noisy images by ~1e-5.
    assert metrics.ssim(a, b) == pytest.approx(sk_valid, abs=5e-5)


def test_ssim_identity_and_channel_forms(kodim23):
    a = kodim23[:64, :64, 1]
    b = noisy(a, 0.1)
    assert metrics.ssim(a, a) == pytest.approx(1.0, abs=1e-12)
    assert metrics.ssim(a, b) == pytest.approx(metrics.ssim(a[:, :, None], b[:, :, None]), abs=1e-15)
    assert metrics.ssim(a, b) < metrics.ssim(a, noisy(a, 0.02))


# --------------------------------------------------------------------------- MS-SSIM


@pytest.mark.parametrize("shape", [(161, 161), (193, 171), (200, 250)])
def test_ms_ssim_matches_pytorch_msssim(kodim23, shape):
    pm = pytest.importorskip("pytorch_msssim")
    h, w = shape
    a = kodim23[150 : 150 + h, 250 : 250 + w]
    b = noisy(a, 0.06, seed=1)
    ours = metrics.ms_ssim(a, b)
    assert ours == pytest.approx(float(pm.ms_ssim(nchw(a), nchw(b), data_range=1.0)), abs=1e-10)
    ref32 = float(pm.ms_ssim(nchw(a, torch.float32), nchw(b, torch.float32), data_range=1.0))
    assert ours == pytest.approx(ref32, abs=1e-5)


def test_ms_ssim_too_small_says_so():
    a = np.zeros((160, 300))
    with pytest.raises(ValueError, match=r"160.*ssim\(\)"):
        metrics.ms_ssim(a, a)


# --------------------------------------------------------------------------- LPIPS: weights


def _load_converter():
    spec = importlib.util.spec_from_file_location("convert_lpips_weights", REPO / "tools" / "convert_lpips_weights.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_converter_layout_reproduces_flax_convolution():
    conv = _load_converter()
    rng = np.random.default_rng(0)
    kh, kw, cin, cout = 3, 2, 4, 5  # all different so any axis mix-up changes the result
    kernel = rng.normal(size=(kh, kw, cin, cout)).astype(np.float32)
    x = rng.normal(size=(1, 7, 6, cin)).astype(np.float32)  # NHWC, as Flax sees it
    # Flax/JAX convolution (lax.conv_general_dilated, NHWC / HWIO, VALID) is a
    # cross-correlation: out[n, i, j, o] = sum_{a, b, c} x[n, i + a, j + b, c] K[a, b, c, o].
    ho, wo = 7 - kh + 1, 6 - kw + 1
    want = np.zeros((1, ho, wo, cout), dtype=np.float64)
    for a in range(kh):
        for b in range(kw):
            want += np.einsum("nijc,co->nijo", x[:, a : a + ho, b : b + wo, :], kernel[a, b])
    weight = torch.from_numpy(conv.flax_to_torch_conv(kernel))
    got = torch.nn.functional.conv2d(torch.from_numpy(x).permute(0, 3, 1, 2), weight)
    np.testing.assert_allclose(got.permute(0, 2, 3, 1).numpy(), want, rtol=1e-5, atol=1e-5)


def _shipped_weights() -> dict[str, np.ndarray]:
    path = importlib.resources.files("smoe").joinpath("data").joinpath("lpips_alexnet.npz")
    with path.open("rb") as fh, np.load(fh, allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}


def test_shipped_weights_have_pytorch_layout():
    w = _shipped_weights()
    conv = _load_converter()
    for name, shape in conv.CONV_SHAPES.items():
        assert w[f"{name}.weight"].shape == shape and w[f"{name}.weight"].dtype == np.float32
        assert w[f"{name}.bias"].shape == (shape[0],)
    for i, shape in enumerate(conv.CONV_SHAPES.values()):
        lin = w[f"lin{i + 1}.weight"]
        assert lin.shape == (1, shape[0], 1, 1)
        # LPIPS clamps its linear weights to >= 0 during training.
        assert lin.min() >= 0 and lin.max() > 0


# --------------------------------------------------------------------------- LPIPS: independent network


class ReferenceLPIPS(nn.Module):
    """LPIPS v0.1 written with torch.nn layers, as the original paper code lays it out."""

    RELU_INDICES = (1, 4, 7, 9, 11)

    def __init__(self, w: dict[str, np.ndarray]):
        super().__init__()
        self.alexnet = nn.Sequential(
            nn.Conv2d(3, 64, 11, stride=4, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
            nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
            nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(),
            nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(),
            nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(),
        )
        convs = [m for m in self.alexnet if isinstance(m, nn.Conv2d)]
        for i, m in enumerate(convs):
            m.weight.data = torch.from_numpy(w[f"conv{i + 1}.weight"])
            m.bias.data = torch.from_numpy(w[f"conv{i + 1}.bias"])
        self.lins = nn.ModuleList(nn.Conv2d(c.out_channels, 1, 1, bias=False) for c in convs)
        for i, m in enumerate(self.lins):
            m.weight.data = torch.from_numpy(w[f"lin{i + 1}.weight"])
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1))

    def features(self, x01: torch.Tensor) -> list[torch.Tensor]:
        x = (x01 * 2 - 1 - self.shift) / self.scale
        out = []
        for i, layer in enumerate(self.alexnet):
            x = layer(x)
            if i in self.RELU_INDICES:
                out.append(x)
        return out

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        total = 0.0
        for lin, fa, fb in zip(self.lins, self.features(a), self.features(b)):
            na = fa / (fa.norm(dim=1, keepdim=True) + 1e-10)
            nb = fb / (fb.norm(dim=1, keepdim=True) + 1e-10)
            total = total + lin((na - nb) ** 2).mean()
        return total


@pytest.fixture(scope="module")
def reference_lpips():
    return ReferenceLPIPS(_shipped_weights()).eval()


def test_lpips_features_match_torch_nn_alexnet(kodim23, reference_lpips):
    x = nchw(kodim23[:97, :130], torch.float32)
    with torch.no_grad():
        want = reference_lpips.features(x)
        net = metrics._lpips_net(torch.device("cpu"))
        got = net.features(((2 * x - 1) - net.shift) / net.scale)
    assert [f.shape[1] for f in got] == [64, 192, 384, 256, 256]
    for g, w in zip(got, want):
        assert g.shape == w.shape
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)


def test_lpips_matches_torch_nn_reference(kodim23, reference_lpips):
    a = kodim23[200:296, 300:428]
    b = noisy(a, 0.07, seed=5)
    with torch.no_grad():
        want = float(reference_lpips(nchw(a, torch.float32), nchw(b, torch.float32)))
    assert metrics.lpips(a, b) == pytest.approx(want, rel=1e-5, abs=1e-7)


# --------------------------------------------------------------------------- LPIPS: properties


def test_lpips_identity_symmetry_and_range(kodim23):
    a = kodim23[10:106, 20:116]
    b = noisy(a, 0.1)
    assert metrics.lpips(a, a) == 0.0
    d_ab, d_ba = metrics.lpips(a, b), metrics.lpips(b, a)
    assert d_ab == pytest.approx(d_ba, rel=1e-6)
    assert 0.05 < d_ab < 1.5


def test_lpips_grows_with_noise(kodim23):
    a = kodim23[300:396, 400:496]
    d = [metrics.lpips(a, noisy(a, s, seed=2)) for s in (0.01, 0.03, 0.1, 0.3)]
    assert all(x < y for x, y in zip(d, d[1:])), d
    assert d[0] < 0.05


def test_lpips_grey_is_replicated_rgb(kodim23):
    a = kodim23[:64, :80].mean(axis=2)
    b = noisy(a, 0.05)
    rgb = metrics.lpips(np.repeat(a[:, :, None], 3, axis=2), np.repeat(b[:, :, None], 3, axis=2))
    assert metrics.lpips(a, b) == pytest.approx(rgb, rel=1e-6)
    assert metrics.lpips(a[:, :, None], b[:, :, None]) == pytest.approx(rgb, rel=1e-6)


def test_lpips_accepts_tensors_and_device(kodim23):
    a = kodim23[:48, :48]
    b = noisy(a, 0.05)
    want = metrics.lpips(a, b)
    got = metrics.lpips(torch.from_numpy(a).float(), torch.from_numpy(b).float().requires_grad_(), device="cpu")
    assert got == pytest.approx(want, rel=1e-5)


def test_lpips_published_values_pyiqa_calibration():
    root = os.environ.get("SMOE_LPIPS_CALIBRA_DIR")
    if not root:
        pytest.skip("set SMOE_LPIPS_CALIBRA_DIR to pyiqa's ResultsCalibra folder to check published LPIPS values")
    from PIL import Image

    root = Path(root)
    with open(root / "results_official.csv", newline="") as fh:
        rows = list(csv.reader(fh))
    names = rows[0][1:]
    official = next(r[1:] for r in rows if r[0] == "lpips")
    for name, text in zip(names, official):
        ref, dist = (np.asarray(Image.open(root / d / name).convert("RGB"), dtype=np.float64) / 255 for d in ("ref_dir", "dist_dir"))
        # The file prints 4 significant digits: allow half a unit of the last one.
        decimals = len(text.split(".")[1])
        assert metrics.lpips(ref, dist) == pytest.approx(float(text), abs=0.5 * 10.0**-decimals + 1e-6), name


# --------------------------------------------------------------------------- evaluate


def test_evaluate_combines_the_metrics(kodim23):
    a = kodim23[:170, :180]
    b = noisy(a, 0.05)
    out = metrics.evaluate(a, b)
    assert set(out) == {"psnr", "ssim", "ms_ssim", "lpips", "crops"}
    assert out["crops"] is None
    # Measured whole, each value is exactly what the single-metric function gives.
    assert out["psnr"] == metrics.psnr(a, b)
    assert out["ssim"] == metrics.ssim(a, b)
    assert out["ms_ssim"] == metrics.ms_ssim(a, b)
    assert out["lpips"] == metrics.lpips(a, b)


def test_evaluate_none_rules(kodim23):
    a = kodim23[:64, :100]
    out = metrics.evaluate(a, noisy(a, 0.05), lpips=False)
    assert out["ms_ssim"] is None and out["lpips"] is None
    assert isinstance(out["psnr"], float) and isinstance(out["ssim"], float)
    # Identical images: infinite PSNR is None (JSON has no infinity), the rest perfect.
    same = metrics.evaluate(a, a)
    assert same["psnr"] is None and same["ssim"] == pytest.approx(1.0) and same["lpips"] == 0.0
    # Too small for a metric: None, not an error.
    tiny = metrics.evaluate(a[:10], noisy(a[:10], 0.05))
    assert tiny["ssim"] is None and tiny["ms_ssim"] is None and tiny["lpips"] is None
    assert tiny["psnr"] == metrics.psnr(a[:10], noisy(a[:10], 0.05))
    narrow = metrics.evaluate(a[:30], noisy(a[:30], 0.05))
    assert isinstance(narrow["ssim"], float) and narrow["lpips"] is None


def _resized(image: np.ndarray, h: int, w: int) -> np.ndarray:
    from PIL import Image

    pil = Image.fromarray(np.round(image * 255).astype(np.uint8)).resize((w, h), Image.LANCZOS)
    return np.asarray(pil, dtype=np.float32) / 255


def test_evaluate_one_megapixel_is_measured_whole(kodim23):
    a = _resized(kodim23, 1000, 1000)
    b = noisy(a, 0.03).astype(np.float32)
    out = metrics.evaluate(a, b)
    assert out["crops"] is None
    assert out == {"psnr": metrics.psnr(a, b), "ssim": metrics.ssim(a, b), "ms_ssim": metrics.ms_ssim(a, b),
                   "lpips": metrics.lpips(a, b), "crops": None}


def test_evaluate_above_one_megapixel_uses_the_fixed_crops(kodim23):
    h, w = 1001, 1100
    a = _resized(kodim23, h, w)
    b = noisy(a, 0.03).astype(np.float32)
    out = metrics.evaluate(a, b)
    boxes = metrics.crop_boxes(h, w)
    assert out["crops"] == [list(box) for box in boxes]
    crops = [(a[r:r + ch, c:c + cw], b[r:r + ch, c:c + cw]) for r, c, ch, cw in boxes]
    assert out["psnr"] == pytest.approx(metrics.psnr(a, b), abs=1e-10)  # every pixel, not the crops
    assert out["psnr"] != pytest.approx(np.mean([metrics.psnr(x, y) for x, y in crops]), abs=1e-3)
    # SSIM and MS-SSIM in float32 agree with the float64 functions on the crops to ~1e-6.
    assert out["ssim"] == pytest.approx(np.mean([metrics.ssim(x, y) for x, y in crops]), abs=1e-5)
    assert out["ms_ssim"] == pytest.approx(np.mean([metrics.ms_ssim(x, y) for x, y in crops]), abs=1e-5)
    assert out["lpips"] == pytest.approx(np.mean([metrics.lpips(x, y) for x, y in crops]), rel=1e-5)
    # ... and differ from the whole-image values by more than that: the crops are what was measured.
    assert abs(out["lpips"] - metrics.lpips(a, b)) > 1e-4


def test_crop_boxes():
    assert metrics.crop_boxes(1000, 1000) is None and metrics.crop_boxes(512, 768) is None
    assert metrics.crop_boxes(2160, 3840) == [(284, 704, 512, 512), (284, 2624, 512, 512), (1364, 704, 512, 512),
                                               (1364, 2624, 512, 512)]
    for h, w in [(1001, 1000), (600, 2000), (300, 4000), (4000, 300), (7, 200_000)]:
        boxes = metrics.crop_boxes(h, w)
        assert len(boxes) == 4 and len(set(boxes)) <= 4
        for top, left, ch, cw in boxes:
            assert (ch, cw) == (min(512, h), min(512, w))
            assert 0 <= top <= h - ch and 0 <= left <= w - cw
    # A short side gives crops of that side: one row of full-height crops for a wide strip.
    assert {box[0] for box in metrics.crop_boxes(300, 4000)} == {0}


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-6), (torch.float64, 1e-14)])
def test_shift_blur_matches_the_conv_blur(dtype, tol):
    x = torch.rand(2, 3, 40, 57, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    want = metrics._blur(x, metrics._gaussian_window("cpu", torch.float64))
    got = metrics._shift_blur(x.to(dtype), metrics._gaussian_window("cpu", dtype))
    assert got.shape == want.shape == (2, 3, 30, 47) and got.dtype == dtype
    torch.testing.assert_close(got.double(), want, atol=tol, rtol=0)


def test_finite_large_values_are_accepted():
    """The finiteness check sums first; a sum that overflows on finite values must not reject them."""
    big = np.full((64, 64), 3e38, np.float32)
    assert metrics.psnr(big, big) == math.inf


# --------------------------------------------------------------------------- errors


FUNCS = [metrics.psnr, metrics.ssim, metrics.ms_ssim, metrics.lpips, metrics.evaluate]


def _bad_inputs():
    good = np.full((40, 40, 3), 0.5)
    nan, inf = good.copy(), good.copy()
    nan[3, 4, 1] = np.nan
    inf[0, 0, 0] = np.inf
    return [
        ("shape-mismatch", good, np.full((40, 41, 3), 0.5), "shapes differ"),
        ("nan", good, nan, "NaN or infinite"),
        ("inf", inf, good, "NaN or infinite"),
        ("ndim", good[None], good[None], r"shape \(H, W\)"),
        ("channels", good[:, :, :2], good[:, :, :2], r"C in \{1, 3\}"),
        ("ndim-1", good[0, 0], good[0, 0], r"shape \(H, W\)"),
        ("integer", np.full((40, 40), 128, np.uint8), np.full((40, 40), 128, np.uint8), "float image"),
        ("not-an-array", [[0.5]], [[0.5]], "numpy array or torch tensor"),
    ]


@pytest.mark.parametrize("func", FUNCS, ids=lambda f: f.__name__)
@pytest.mark.parametrize("case", _bad_inputs(), ids=lambda c: c[0])
def test_bad_inputs_raise_one_line_value_error(func, case):
    _, ref, img, pattern = case
    with pytest.raises(ValueError, match=pattern) as err:
        func(ref, img)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "func, side, pattern",
    [(metrics.ssim, 10, ">= 11"), (metrics.lpips, 30, ">= 31"), (metrics.ms_ssim, 150, "160")],
    ids=["ssim", "lpips", "ms_ssim"],
)
def test_too_small_images_raise(func, side, pattern):
    a = np.full((side, 200), 0.5)
    with pytest.raises(ValueError, match=pattern):
        func(a, a)
