"""The encoder: fit, fine-tune under quantization, and meet the rate (SPEC-free; see docs/bitstream.md).

``compress`` runs four stages:

1. **Count.** For ``bpp=R`` the kernel count is estimated from the budget
   ``R * H * W`` bits and :func:`kernel_bits`, the measured cost of one
   kernel at these step sizes, with a few per cent to spare.
2. **Fit.** :func:`smoe.fit` with its defaults (content start, growth,
   bounded extent), within a share of the time budget, with the gates held
   at their start (1): fitting them gained under 0.05 dB on Kodak and cost
   2-2.5 bits per kernel, while a constant gate codes in no bits at all.
3. **Fine-tune.** More steps rendered through the quantizer
   (:class:`smoe.strategy.QuantizeStraightThrough`), at lower rates, so the
   rounded model is the one optimised.
4. **Trim.** While the stream is over the budget, the kernels that matter
   least (smallest gate times area) are dropped, by bisection on how many,
   so the file lands just below the budget; what is dropped never changes
   the symbols of the others, so the reported render is the decoder's.  A
   stream that holds every kernel and still falls short of the rate takes
   finer steps instead (down to half), the finest that fit.

``kernels=N`` skips stage 1 and 4; ``target_psnr=P`` grows the model until
the float fit reaches ``P`` plus the expected quantization loss.
"""

from __future__ import annotations

import dataclasses
import math
import time
import warnings
from dataclasses import dataclass

import numpy as np

from ..validate import check_finite, check_kernel_count
from .bitstream import Header, write_bitstream
from .quantizer import Steps, grid_size, quantize

__all__ = ["Compressed", "compress", "kernel_bits", "MAX_BPP"]

#: Largest rate accepted: 24 bits per pixel is an uncompressed 8-bit RGB image.
MAX_BPP = 24.0
#: Bits of one kernel besides its centre, measured on Kodak at the default steps (shape 17, colour 13-16).
KERNEL_BITS_BESIDES_CENTRE = 31.0
#: Kernels fitted beyond the estimate: the stream is measured and trimmed to the budget before fine-tuning.
SPARE = 1.08
#: Share of the budget below which a stream is reported as short of its rate.
RATE_TOLERANCE = 0.97
#: Finest step factor a stream short of its rate may take, and the bisection probes that find it.
MIN_STEP_SCALE = 0.5
STEP_SCALE_PROBES = 6
#: Share of the budget the pre-fine-tuning trim aims at, leaving room for fine-tuning to change the bits.
TRIM_AIM = 0.985
#: Share of the time budget spent on the float fit; the rest fine-tunes under quantization.
FIT_SHARE = 0.75
#: Fine-tuning learning rates, relative to the fit's (the centres' at its final rate).
FINETUNE_RATE = 0.3
#: Most fine-tuning steps; the time budget ends it sooner on any real image.
FINETUNE_ITERS = 5000
#: Steps between growth events of the fit: the model is complete early in even a short time budget.
GROW_EVERY = 20
#: Quantization loss the target-PSNR mode adds to its float target, in dB.
EXPECTED_LOSS = 0.2


@dataclass
class Compressed:
    """What :func:`compress` returns.

    data : the bitstream
    fitted : the decoded model (what :func:`smoe.decode` returns for ``data``)
    psnr : PSNR of ``fitted``'s render against the image, in dB
    float_psnr : PSNR of the float model that fine-tuning started from (the fit, trimmed to the rate):
        ``float_psnr - psnr`` is the quantization loss
    sizes : bytes of the header and of each section
    seconds : time to encode
    steps : the quantizer's steps
    history : the fit's logged records, then the fine-tuning's (``stage`` "finetune")
    """

    data: bytes
    fitted: object
    psnr: float
    float_psnr: float
    sizes: dict
    seconds: float
    steps: Steps
    history: list

    @property
    def bits_per_kernel(self) -> float:
        return 8 * len(self.data) / max(1, len(self.fitted.model))

    def bpp(self) -> float:
        h, w = self.fitted.frame
        return 8 * len(self.data) / (h * w)


def kernel_bits(kernels: int, frame: tuple[int, int], steps: Steps) -> float:
    """Estimated bits of one kernel of ``kernels`` in a ``frame`` (H, W) at ``steps``.

    A centre costs about ``log2(cells per kernel) + 1.5`` bits (:mod:`smoe.codec.positions`).
    """
    nx, ny = grid_size(frame, steps.position)
    return max(1.0, math.log2(nx * ny / kernels)) + 1.5 + KERNEL_BITS_BESIDES_CENTRE


def kernels_for_rate(bits: float, frame: tuple[int, int], steps: Steps) -> int:
    """The kernel count whose estimated stream fills ``bits``."""
    n = max(1, int(bits / 40))
    for _ in range(8):  # the centre cost depends weakly on the count: a few fixed-point steps settle it
        n = max(1, int(bits / kernel_bits(n, frame, steps)))
    return n


def check_rate(bpp=None, kernels=None, target_psnr=None) -> None:
    """Refuse a request before any work: exactly one of the three, each in range."""
    given = [name for name, v in (("bpp", bpp), ("kernels", kernels), ("target_psnr", target_psnr)) if v is not None]
    if len(given) != 1:
        raise ValueError(f"give exactly one of bpp, kernels or target_psnr, got {', '.join(given) or 'none'}")
    if bpp is not None:
        check_finite("bpp", bpp, low=0, low_open=True, high=MAX_BPP)
    if target_psnr is not None:
        check_finite("target_psnr", target_psnr, low=10, high=60)


def compress(image, *, bpp: float | None = None, kernels: int | None = None, target_psnr: float | None = None,
             steps: Steps | None = None, seconds: float = 45.0, seed: int = 0, quiet: bool = True) -> Compressed:
    """Encode an image as an SMoE bitstream at a rate, a kernel count or a quality.

    Parameters
    ----------
    image : (H, W) or (H, W, C) array
        Float image in [0, 1], C = 1 or 3.
    bpp : float, optional
        Bits per pixel the file must not exceed; it lands at most a few per cent below.
    kernels : int, optional
        Kernel count to fit instead.
    target_psnr : float, optional
        Quality to reach instead (10-60 dB); the kernel count follows.
    steps : Steps, optional
        Quantizer step sizes (default :class:`Steps`).
    seconds : float
        Time budget of the fit and fine-tuning together (> 0).
    seed : int
    quiet : bool
        False shows the fits' progress bars.

    Returns
    -------
    Compressed

    Examples
    --------
    >>> import numpy as np, smoe
    >>> image = np.random.default_rng(0).random((32, 32, 3)).astype(np.float32)
    >>> c = compress(image, bpp=4.0, seconds=1)
    >>> len(c.data) <= 4.0 * 32 * 32 / 8
    True
    """
    from ..fitting import as_image

    check_rate(bpp, kernels, target_psnr)
    seconds = check_finite("seconds", seconds, low=0, low_open=True)
    img = as_image(image)
    h, w, c = img.shape
    steps = steps or Steps()
    t0 = time.perf_counter()
    budget = None if bpp is None else int(bpp * h * w / 8)
    if budget is not None:
        fixed = 116  # header, CRC and stored models, roughly: what benchmarks/results/codec was measured with
        if budget < fixed + 8:
            raise ValueError(f"{bpp} bpp of a {w}x{h} image is {budget} bytes, too few for a bitstream "
                             f"(at least {fixed + 8}); ask for a higher rate")
        kernels = max(1, int(SPARE * kernels_for_rate(8 * (budget - fixed), (h, w), steps)))
    if kernels is not None:
        kernels = check_kernel_count(kernels, h * w)
    fit_result = _fit(img, kernels, target_psnr, FIT_SHARE * seconds, seed, quiet)
    start = _trimmed(dataclasses.replace(fit_result.fitted, spec=None), steps,
                     None if budget is None else int(TRIM_AIM * budget))[0]
    float_psnr = _psnr(img, start)
    tuned = _finetune(img, start.model, fit_result.spec, steps, (1 - FIT_SHARE) * seconds, quiet)
    tuned_fitted = dataclasses.replace(tuned.fitted, spec=None)
    data, sizes, fitted = _encode(tuned_fitted, steps, budget)
    if budget is not None and len(data) < RATE_TOLERANCE * budget:
        steps = _finest_steps(tuned_fitted, steps, budget)
        data, sizes, fitted = _encode(tuned_fitted, steps, budget)
    history = fit_result.history + [dict(r, stage="finetune") for r in tuned.history]
    if budget is not None and len(data) < RATE_TOLERANCE * budget:
        warnings.warn(f"the stream takes {len(data)} of {budget} bytes: the fit reached only "
                      f"{len(fit_result.model)} of {kernels} kernels in its time; give it more seconds")
    return Compressed(data, fitted, _psnr(img, fitted), float_psnr, sizes, time.perf_counter() - t0, steps, history)


def _fit(img, kernels, target_psnr, seconds, seed, quiet):
    from ..fitting import fit
    from ..spec import ALLOCATION_RATES, FitSpec

    rates = {**ALLOCATION_RATES, "lr_pi": 0.0}  # what benchmarks/results/codec was measured with
    if target_psnr is not None:
        spec = FitSpec(target_psnr=min(60.0, target_psnr + EXPECTED_LOSS), seed=seed, time_budget=seconds,
                       **rates).growing(img.shape[:2])
        return fit(img, spec=spec, quiet=quiet)
    return fit(img, kernels, seed=seed, time_budget=seconds, grow_every=GROW_EVERY, quiet=quiet, **rates)


def _finetune(img, model, spec, steps, seconds, quiet):
    from ..fitting import fit
    from ..strategy import QuantizeStraightThrough

    rates = {k: getattr(spec, k) * FINETUNE_RATE for k in ("lr_chol", "lr_pi", "lr_experts")}  # lr_pi stays 0
    rates["lr_mu"] = rates["lr_mu_final"] = spec.lr_mu_final * FINETUNE_RATE
    return fit(img, len(model), init=model, spec=spec, grow_start=None, min_gain=None, target_psnr=None,
               time_budget=seconds, iters=FINETUNE_ITERS, quiet=quiet,
               strategies=[QuantizeStraightThrough(img.shape[:2], spec.mode, steps)], **rates)


def _encode(fitted, steps, budget):
    """Quantize and code ``fitted``, trimmed to ``budget`` bytes; returns data, sizes and the decoded model."""
    from . import decode

    fitted, symbols = _trimmed(fitted, steps, budget)
    data, sizes = _write(fitted, steps, symbols)
    return data, sizes, decode(data)


def _finest_steps(fitted, steps, budget):
    """The finest of ``steps`` scaled by at most :data:`MIN_STEP_SCALE` at which every kernel of ``fitted`` still fits.

    A fit that reached its whole count and still leaves the stream short of
    the rate spends the rest on precision: bisection on a log scale of the
    step factor, each probe a full write of the stream.
    """
    def fits(factor):
        return _stream_bytes(fitted, steps.scaled(factor)) <= budget

    if fits(MIN_STEP_SCALE):
        return steps.scaled(MIN_STEP_SCALE)
    lo, hi = math.log(MIN_STEP_SCALE), 0.0  # lo overflows the budget, hi (the steps as they are) fits
    for _ in range(STEP_SCALE_PROBES):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if fits(math.exp(mid)) else (mid, hi)
    return steps.scaled(math.exp(hi))


def _stream_bytes(fitted, steps) -> int:
    """Bytes of the stream of every kernel of ``fitted`` at ``steps``, quantized as :func:`_encode` codes them."""
    kept, symbols = _trimmed(fitted, steps, None)
    return len(_write(kept, steps, symbols)[0])


def _trimmed(fitted, steps, budget):
    """``fitted`` without the kernels that matter least, as few dropped as its stream needs to fit ``budget``,
    and the symbols of the kernels it keeps."""
    model = fitted.model.pruned() if fitted.mode == "smoe" else fitted.model
    arrays = model.numpy()
    symbols = quantize(arrays, fitted.frame, fitted.mode, steps)
    order = np.argsort(-_importance(arrays), kind="stable")
    n = len(order)
    if budget is not None and len(_write(fitted, steps, symbols)[0]) > budget:
        lo, hi = 0, n  # bisection: the most kernels whose stream fits
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if len(_write(fitted, steps, symbols[order[:mid]])[0]) <= budget:
                lo = mid
            else:
                hi = mid
        if lo == 0:
            raise ValueError(f"{budget} bytes cannot hold a single kernel of this image; ask for a higher rate")
        n = lo
    keep = np.sort(order[:n])
    import torch

    idx = torch.from_numpy(keep)
    kept = dataclasses.replace(fitted, model=type(model)(model.mu[idx], model.chol[idx], model.pi[idx],
                                                         model.experts[idx]))
    return kept, symbols[keep]


def _write(fitted, steps, symbols):
    header = Header(fitted.frame, fitted.model.channels, fitted.mode, fitted.scope, fitted.tile,
                    fitted.tile_offset, len(symbols), steps)
    return write_bitstream(header, symbols)


def _importance(arrays) -> np.ndarray:
    """How much each kernel is worth keeping: its gate times its 1-sigma area (what it covers, and how strongly)."""
    chol = arrays["chol"].astype(np.float64)
    return np.abs(arrays["pi"].astype(np.float64)) / (chol[:, 0] * chol[:, 2])


def _psnr(img, fitted) -> float:
    from ..metrics import psnr

    return psnr(img, np.clip(fitted.render(), 0, 1))
