"""Image quality metrics: PSNR, SSIM, MS-SSIM and LPIPS (SPEC §8).

Every public function takes two float images in [0, 1], the reference first, as NumPy
arrays or torch tensors of shape ``(H, W)`` or ``(H, W, C)`` with ``C`` in {1, 3}, and
returns a Python float.

* :func:`psnr` over all pixels and channels.
* :func:`ssim` and :func:`ms_ssim` follow the conventions of ``pytorch-msssim``
  (Gaussian window 11, sigma 1.5, K1 = 0.01, K2 = 0.03, data range 1, valid
  convolution, per-channel mean, 2x2 average pooling between MS-SSIM scales).
  They are computed in float64 with that package's window, so they agree with it to
  ~1e-12 on float64 input and ~1e-6 on float32 input.
* :func:`lpips` is LPIPS v0.1 with the AlexNet backbone (Zhang et al., CVPR 2018),
  evaluated in plain PyTorch on weights shipped in ``smoe/data/lpips_alexnet.npz``
  (converted once by ``tools/convert_lpips_weights.py``; see ``LICENSE-lpips.txt``).

* :func:`evaluate` gives all four in one JSON-ready dict and is the one quality
  function of smoe (``metrics.json``, ``smoe eval``, ``fit-batch`` and the benchmarks).
  Images of at most :data:`CROP_ABOVE_PIXELS` (one megapixel; Kodak is 0.39) are
  measured whole, exactly as the functions above measure them.  Larger images keep PSNR
  over every pixel, but SSIM, MS-SSIM and LPIPS are the means over the fixed crops of
  :func:`crop_boxes` (four 512 x 512 crops centred in the image's quadrants), with SSIM
  computed in float32; the result's ``"crops"`` entry lists the crops used.

Values are not clipped to [0, 1]: a slight overshoot of a rendered image is part of
its error.
"""

from __future__ import annotations

import importlib.resources
import math
import threading

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["psnr", "ssim", "ms_ssim", "lpips", "evaluate", "crop_boxes", "MS_SSIM_MIN_SIDE", "CROP_ABOVE_PIXELS"]

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1, SSIM_K2 = 0.01, 0.03
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
# Four 2x downsamplings must leave at least one full window at the coarsest scale.
MS_SSIM_MIN_SIDE = (SSIM_WINDOW - 1) * 2 ** (len(MS_SSIM_WEIGHTS) - 1)

# LPIPS "ScalingLayer": maps [-1, 1] inputs to the statistics AlexNet was trained on.
LPIPS_SHIFT = (-0.030, -0.088, -0.188)
LPIPS_SCALE = (0.458, 0.448, 0.450)
# Smallest side for which AlexNet's two 3x3/2 max-pools still have an input to pool.
LPIPS_MIN_SIDE = 31
_LPIPS_WEIGHTS_FILE = "lpips_alexnet.npz"
#: Images with more pixels than this are measured on crops by :func:`evaluate`.
CROP_ABOVE_PIXELS = 1_000_000
#: Side of the square crops (shorter when the image side is shorter).
CROP_SIDE = 512
#: Crop centres as fractions of (height, width): the centres of the four quadrants.
CROP_CENTRES = ((0.25, 0.25), (0.25, 0.75), (0.75, 0.25), (0.75, 0.75))
# Rows of this many pixels at most go into one PSNR partial sum: a 4K image in float64
# at once would cost two 200 MB copies; in cache-sized pieces it costs a few MB.
_PSNR_CHUNK_PIXELS = 1 << 18
# (name, stride, padding, max-pool before this conv) in torchvision's AlexNet order.
_ALEXNET_LAYERS = (
    ("conv1", 4, 2, False),
    ("conv2", 1, 2, True),
    ("conv3", 1, 1, True),
    ("conv4", 1, 1, False),
    ("conv5", 1, 1, False),
)


# --------------------------------------------------------------------------- inputs


def _as_tensor(x, name: str) -> torch.Tensor:
    """One image as a detached floating tensor of shape (H, W, C)."""
    if isinstance(x, torch.Tensor):
        t = x.detach()
    elif isinstance(x, np.ndarray):
        t = torch.from_numpy(np.ascontiguousarray(x))
    else:
        raise ValueError(f"{name} must be a numpy array or torch tensor, got {type(x).__name__}")
    if not t.is_floating_point():
        raise ValueError(f"{name} must be a float image in [0, 1], got dtype {t.dtype}; convert (e.g. / 255) first")
    if t.ndim == 2:
        t = t[:, :, None]
    if t.ndim != 3 or t.shape[2] not in (1, 3):
        raise ValueError(f"{name} must have shape (H, W) or (H, W, C) with C in {{1, 3}}, got {tuple(x.shape)}")
    # A sum is finite only if every term is (NaN and infinities propagate), and one
    # reduction is far cheaper than an element-wise mask on a 4K image; a non-finite sum
    # may also be an overflow of finite values, so only then look at the elements.
    if not math.isfinite(float(t.sum())) and not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} contains NaN or infinite values")
    return t


def _pair(reference, image) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate a (reference, image) pair; both come back as (H, W, C) on the reference's device."""
    ref = _as_tensor(reference, "reference")
    img = _as_tensor(image, "image")
    if ref.shape != img.shape:
        raise ValueError(f"reference and image shapes differ: {tuple(ref.shape)} vs {tuple(img.shape)}")
    return ref, img.to(ref.device)


def _nchw(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(H, W, C) -> (1, C, H, W)."""
    return t.to(dtype).permute(2, 0, 1).unsqueeze(0).contiguous()


# --------------------------------------------------------------------------- PSNR


def psnr(reference, image, data_range: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB over all pixels and channels.

    Parameters
    ----------
    reference, image : array or tensor, shape (H, W) or (H, W, C)
        Float images; ``image`` is compared with ``reference``.
    data_range : float
        Peak value of the signal (1 for images in [0, 1]).

    Returns
    -------
    float
        ``10 log10(data_range**2 / MSE)``; ``inf`` for identical images.

    Notes
    -----
    Differences are squared in float64.  Above :data:`CROP_ABOVE_PIXELS` pixels the
    squared errors are summed in row blocks to bound memory; this changes only the
    order of the float64 summation.

    Examples
    --------
    >>> import numpy as np
    >>> round(psnr(np.zeros((4, 4)), np.full((4, 4), 0.1)), 6)
    20.0
    """
    ref, img = _pair(reference, image)
    return _psnr_db(_mse(ref, img), data_range)


def _psnr_db(mse: float, data_range: float) -> float:
    return math.inf if mse == 0.0 else 10.0 * math.log10(data_range**2 / mse)


def _mse(ref: torch.Tensor, img: torch.Tensor) -> float:
    """Mean squared difference of two (H, W, C) tensors, accumulated in float64."""
    h, w = ref.shape[:2]
    if h * w <= CROP_ABOVE_PIXELS:
        return float(torch.mean((ref.double() - img.double()) ** 2))
    rows = max(1, _PSNR_CHUNK_PIXELS // w)
    total = 0.0
    for top in range(0, h, rows):
        d = ref[top:top + rows].double() - img[top:top + rows].double()
        total += float(torch.sum(d * d))
    return total / ref.numel()


# --------------------------------------------------------------------------- SSIM / MS-SSIM


def _gaussian_window(device, dtype) -> torch.Tensor:
    """Normalised 1-D Gaussian of length SSIM_WINDOW, shape (SSIM_WINDOW,)."""
    # Built and normalised in float32 on purpose: pytorch-msssim does so, and the ~1e-8
    # rounding of the taps moves SSIM of noisy images by up to ~1e-5, which would make
    # our numbers differ from the ones published with that package.
    x = torch.arange(SSIM_WINDOW, dtype=torch.float32) - SSIM_WINDOW // 2
    g = torch.exp(-(x**2) / (2 * SSIM_SIGMA**2))
    return (g / g.sum()).to(device=device, dtype=dtype)


def _blur(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian filter per channel, 'valid' region only: (N, C, H, W) -> (N, C, H-10, W-10)."""
    c = x.shape[1]
    x = F.conv2d(x, g.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
    return F.conv2d(x, g.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)


def _shift_blur(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """The same filter as :func:`_blur` as eleven shifted multiply-adds per axis.

    In float32 it takes about a fifth of the time of the float64 ``conv2d`` on CPU
    (10 against 51 ms for a 768 x 512 RGB image on two cores) and agrees with it to
    float32 rounding (~1e-7).
    """
    taps = [float(t) for t in g]
    k = len(taps)
    h, w = x.shape[2] - k + 1, x.shape[3] - k + 1
    rows = x[:, :, :h] * taps[0]
    for i in range(1, k):
        rows.add_(x[:, :, i:i + h], alpha=taps[i])
    out = rows[:, :, :, :w] * taps[0]
    for i in range(1, k):
        out.add_(rows[:, :, :, i:i + w], alpha=taps[i])
    return out


def _ssim_cs(x: torch.Tensor, y: torch.Tensor, blur=_blur) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean SSIM and contrast-structure term, each of shape (N, C)."""
    g = _gaussian_window(x.device, x.dtype)
    c1, c2 = SSIM_K1**2, SSIM_K2**2  # data range 1
    mu_x, mu_y = blur(x, g), blur(y, g)
    var_x = blur(x * x, g) - mu_x**2
    var_y = blur(y * y, g) - mu_y**2
    cov = blur(x * y, g) - mu_x * mu_y
    cs_map = (2 * cov + c2) / (var_x + var_y + c2)
    lum_map = (2 * mu_x * mu_y + c1) / (mu_x**2 + mu_y**2 + c1)
    return (lum_map * cs_map).mean(dim=(2, 3)), cs_map.mean(dim=(2, 3))


def _check_min_side(ref: torch.Tensor, minimum: int, metric: str, advice: str) -> None:
    h, w = ref.shape[:2]
    if min(h, w) < minimum:
        raise ValueError(f"{metric} needs both image sides >= {minimum} pixels, got {h}x{w}; {advice}")


def ssim(reference, image) -> float:
    """Structural similarity, averaged over the valid window positions and the channels.

    Matches ``pytorch_msssim.ssim(X, Y, data_range=1, size_average=True)``.

    Parameters
    ----------
    reference, image : array or tensor, shape (H, W) or (H, W, C)
        Float images in [0, 1] with ``H, W >= 11``.

    Returns
    -------
    float
        SSIM in [-1, 1]; 1 for identical images.
    """
    ref, img = _pair(reference, image)
    _check_min_side(ref, SSIM_WINDOW, "ssim", "use a larger image")
    return _structural(_nchw(ref, torch.float64), _nchw(img, torch.float64), multi_scale=False)[0]


def ms_ssim(reference, image) -> float:
    """Multi-scale SSIM over five scales.

    Matches ``pytorch_msssim.ms_ssim(X, Y, data_range=1, size_average=True)``, including
    its 2x2 average pooling that pads odd-sized sides by one pixel (zeros counted in the
    mean) and the ReLU on each scale's term before the weighted geometric mean.

    Parameters
    ----------
    reference, image : array or tensor, shape (H, W) or (H, W, C)
        Float images in [0, 1] whose smaller side exceeds ``MS_SSIM_MIN_SIDE`` (160).

    Returns
    -------
    float
        MS-SSIM in [0, 1]; 1 for identical images.

    Raises
    ------
    ValueError
        If the smaller image side is not above 160 pixels.
    """
    ref, img = _pair(reference, image)
    h, w = ref.shape[:2]
    if min(h, w) <= MS_SSIM_MIN_SIDE:
        raise ValueError(
            f"ms_ssim needs the smaller image side > {MS_SSIM_MIN_SIDE} pixels (4 halvings of an "
            f"{SSIM_WINDOW}-pixel window), got {h}x{w}; use ssim() for smaller images"
        )
    return _structural(_nchw(ref, torch.float64), _nchw(img, torch.float64), multi_scale=True)[1]


def _structural(x: torch.Tensor, y: torch.Tensor, *, multi_scale: bool, blur=_blur) -> tuple[float, float | None]:
    """SSIM and MS-SSIM (None unless ``multi_scale``) of (N, C, H, W) tensors, averaged over batch and channels.

    SSIM is MS-SSIM's first scale, so computing both costs one SSIM less than apart.
    """
    s, cs = _ssim_cs(x, y, blur)
    ssim_value = float(s.mean())
    if not multi_scale:
        return ssim_value, None
    weights = torch.tensor(MS_SSIM_WEIGHTS, dtype=x.dtype, device=x.device)
    terms = []
    for level in range(len(MS_SSIM_WEIGHTS)):
        if level:
            s, cs = _ssim_cs(x, y, blur)
        if level == len(MS_SSIM_WEIGHTS) - 1:
            terms.append(torch.relu(s))
            break
        terms.append(torch.relu(cs))
        pad = [side % 2 for side in x.shape[2:]]
        x, y = F.avg_pool2d(x, 2, padding=pad), F.avg_pool2d(y, 2, padding=pad)
    stacked = torch.stack(terms)  # (levels, N, C)
    per_channel = torch.prod(stacked ** weights.view(-1, 1, 1), dim=0)
    return ssim_value, float(per_channel.mean())


# --------------------------------------------------------------------------- LPIPS


class _AlexLPIPS:
    """LPIPS v0.1 (AlexNet) as plain tensors and functional ops, for one device."""

    def __init__(self, arrays: dict[str, np.ndarray], device: torch.device):
        self.params = {k: torch.from_numpy(v).to(device) for k, v in arrays.items()}
        self.shift = torch.tensor(LPIPS_SHIFT, device=device).view(1, 3, 1, 1)
        self.scale = torch.tensor(LPIPS_SCALE, device=device).view(1, 3, 1, 1)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """AlexNet ReLU outputs relu1..relu5 for x of shape (N, 3, H, W), already scaled."""
        feats = []
        for name, stride, padding, pool_first in _ALEXNET_LAYERS:
            if pool_first:
                x = F.max_pool2d(x, kernel_size=3, stride=2)
            x = F.conv2d(x, self.params[f"{name}.weight"], self.params[f"{name}.bias"], stride, padding)
            x = torch.relu(x)
            feats.append(x)
        return feats

    def __call__(self, x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
        """Distance per batch item, shape (N,), for inputs (N, 3, H, W) in [0, 1]."""
        f0 = self.features(((2 * x0 - 1) - self.shift) / self.scale)
        f1 = self.features(((2 * x1 - 1) - self.shift) / self.scale)
        total = torch.zeros(x0.shape[0], device=x0.device)
        for i, (a, b) in enumerate(zip(f0, f1)):
            d = (_unit_normalize(a) - _unit_normalize(b)) ** 2
            total = total + F.conv2d(d, self.params[f"lin{i + 1}.weight"]).mean(dim=(1, 2, 3))
        return total


def _unit_normalize(f: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """Scale each spatial position's feature vector to unit length (LPIPS's eps kept for parity)."""
    return f / (torch.sqrt(torch.sum(f * f, dim=1, keepdim=True)) + eps)


_lpips_lock = threading.Lock()
_lpips_arrays: dict[str, np.ndarray] | None = None
_lpips_nets: dict[torch.device, _AlexLPIPS] = {}


def _load_lpips_arrays() -> dict[str, np.ndarray]:
    """Read the packaged weights (no pickle: plain arrays only)."""
    resource = importlib.resources.files("smoe").joinpath("data").joinpath(_LPIPS_WEIGHTS_FILE)
    with resource.open("rb") as fh, np.load(fh, allow_pickle=False) as npz:
        return {k: npz[k].astype(np.float32, copy=False) for k in npz.files}


def _lpips_net(device: torch.device) -> _AlexLPIPS:
    """The network for ``device``, built on first use and cached for the process."""
    global _lpips_arrays
    with _lpips_lock:
        if _lpips_arrays is None:
            _lpips_arrays = _load_lpips_arrays()
        if device not in _lpips_nets:
            _lpips_nets[device] = _AlexLPIPS(_lpips_arrays, device)
        return _lpips_nets[device]


def lpips(reference, image, device=None) -> float:
    """LPIPS v0.1 perceptual distance with the AlexNet backbone.

    Grey images are replicated to three channels. Runs in float32 without autograd.

    Parameters
    ----------
    reference, image : array or tensor, shape (H, W) or (H, W, C)
        Float images in [0, 1], RGB channel order, with ``H, W >= 31``.
    device : str or torch.device, optional
        Where to run the network; default: the reference tensor's device (CPU for NumPy).

    Returns
    -------
    float
        Distance >= 0; 0 for identical images, roughly 0.05 for slight and 0.7 for
        severe distortions.
    """
    ref, img = _pair(reference, image)
    _check_min_side(ref, LPIPS_MIN_SIDE, "lpips", "use a larger image")
    dev = torch.device(device) if device is not None else ref.device
    x0, x1 = (_nchw(t, torch.float32).to(dev).expand(-1, 3, -1, -1) for t in (ref, img))
    with torch.no_grad():
        return float(_lpips_net(dev)(x0, x1)[0])


# --------------------------------------------------------------------------- all at once


def crop_boxes(height: int, width: int) -> list[tuple[int, int, int, int]] | None:
    """The fixed crops :func:`evaluate` measures SSIM, MS-SSIM and LPIPS on.

    Parameters
    ----------
    height, width : int
        Image size in pixels.

    Returns
    -------
    list of (top, left, crop_height, crop_width) or None
        None for images of at most :data:`CROP_ABOVE_PIXELS` pixels (measured whole).
        Otherwise one ``CROP_SIDE``-square crop (shorter along a shorter image side)
        centred on each of :data:`CROP_CENTRES`, moved inside the image where needed.

    Examples
    --------
    >>> crop_boxes(512, 768) is None
    True
    >>> crop_boxes(2160, 3840)
    [(284, 704, 512, 512), (284, 2624, 512, 512), (1364, 704, 512, 512), (1364, 2624, 512, 512)]
    """
    if height * width <= CROP_ABOVE_PIXELS:
        return None
    ch, cw = min(CROP_SIDE, height), min(CROP_SIDE, width)
    return [(min(max(round(fy * height - ch / 2), 0), height - ch), min(max(round(fx * width - cw / 2), 0), width - cw),
             ch, cw) for fy, fx in CROP_CENTRES]


def evaluate(reference, image, *, lpips: bool = True) -> dict:
    """PSNR, SSIM, MS-SSIM and LPIPS of ``image`` against ``reference``: smoe's one quality function.

    Parameters
    ----------
    reference, image : array or tensor, shape (H, W) or (H, W, C)
        Float images in [0, 1].
    lpips : bool
        Compute LPIPS (the slowest of the four).

    Returns
    -------
    dict
        ``{"psnr", "ssim", "ms_ssim", "lpips": float | None, "crops": list | None}``,
        ready for JSON:

        * ``psnr`` is None for identical images (infinite PSNR; JSON has no infinity);
        * a metric the measured region is too small for is None (SSIM below 11 pixels a
          side, MS-SSIM at 160 or fewer, LPIPS below 31), as is LPIPS when disabled;
        * ``crops`` is None when the image (at most :data:`CROP_ABOVE_PIXELS` pixels) was
          measured whole, each metric exactly as :func:`psnr`, :func:`ssim`,
          :func:`ms_ssim` and :func:`lpips` give it.  For larger images it lists the
          ``[top, left, height, width]`` crops of :func:`crop_boxes`: PSNR still covers
          every pixel, SSIM and MS-SSIM (in float32, within ~1e-5 of float64) and LPIPS
          are the means over the crops.

    Examples
    --------
    >>> import numpy as np
    >>> a = np.linspace(0, 1, 64 * 64).reshape(64, 64)
    >>> q = evaluate(a, a, lpips=False)
    >>> q["psnr"] is None, q["ssim"], q["ms_ssim"], q["crops"]
    (True, 1.0, None, None)
    """
    ref, img = _pair(reference, image)
    boxes = crop_boxes(*ref.shape[:2])
    if boxes is None:
        x, y = _nchw(ref, torch.float64), _nchw(img, torch.float64)
        blur = _blur
    else:
        x, y = (torch.stack([_nchw(t[r:r + h, c:c + w], torch.float32)[0] for r, c, h, w in boxes]) for t in (ref, img))
        blur = _shift_blur
    side = min(x.shape[2:])
    ssim_value, ms_ssim_value = (_structural(x, y, multi_scale=side > MS_SSIM_MIN_SIDE, blur=blur)
                                 if side >= SSIM_WINDOW else (None, None))
    psnr_value = _psnr_db(_mse(ref, img), 1.0)
    return {
        "psnr": psnr_value if math.isfinite(psnr_value) else None,
        "ssim": ssim_value,
        "ms_ssim": ms_ssim_value,
        "lpips": _lpips_batch(x, y) if lpips and side >= LPIPS_MIN_SIDE else None,
        "crops": None if boxes is None else [list(box) for box in boxes],
    }


def _lpips_batch(x: torch.Tensor, y: torch.Tensor) -> float:
    """Mean LPIPS over a batch (N, C, H, W) of crops, in float32 on their device."""
    x0, x1 = (t.float().expand(-1, 3, -1, -1) for t in (x, y))
    with torch.no_grad():
        return float(_lpips_net(x0.device)(x0, x1).mean())
