"""Multi-model denoising with rasterized SMoE, MM-RSMoE (R paper, Section V; SPEC §5).

A single rasterized model fitted to a noisy image reproduces part of the
noise.  MM-RSMoE fits H models to the same noisy image, each with the 16 x 16
tile grid shifted by a different offset and started from a different random
draw, and averages their renders: the part of each model's error that differs
between models (its "model noise", R Eq. 10-14) shrinks like 1/H.

Offsets: :func:`smoe.shifts.shift_offsets` (the paper's full grids, and a sheared
layout for any other model count).

Initialization.  By default every model starts from the segmentation-based
initializer (``init="segment"``, MDBSCAN with ``d_Th = threshold``, default 20,
as the paper's MM-RSMoE-seg-20): MDBSCAN runs once on the noisy image and its
labels are shared by all models, which then differ only in where the kernels
are drawn inside the segments (model k uses ``seed + k``) and in the tile
offset.  Segment s gets kernels in proportion to ``area_s ** area_power``
(default 0.5), so large flat segments get fewer and wider kernels per pixel
than textured ones (R Eq. 9 gives every segment the same count, power 0).
``init="random"`` is the paper's plain MM-RSMoE; ``mode="rbf"`` gives the
multi-model GaussianImage comparison.

Colour (:data:`DEFAULT_CHROMA_MODELS`).  Beyond the paper, which fits the
three RGB channels with the same models, the colour of an RGB result comes
from a second, coarser set of models.  Chroma (each pixel's RGB minus its
channel mean) is smoother than brightness, and the models fitted for the
brightness reproduce noise in it too: on kodim03 at sigma^2 = 0.01 the joint
fit's chroma error is 3.5 times BM3D's, its brightness error 1.7 times.  The second set
(``chroma_models`` models, shifted like the first) fits the noisy image
box-averaged 2 x 2, with :data:`CHROMA_DENSITY` kernels per pixel of that
half-resolution image and at most :data:`CHROMA_ITERS` steps, and is rendered
back at full resolution (the models are continuous, so this is their
super-resolution render).  The result keeps the channel mean of the first
set's average and takes the chroma of the second's.  ``chroma_models=0``
gives the paper's joint fit; grey images have no chroma.

Budget and stopping.  The defaults need no noise level.  Without ``sigma``
the noise level is estimated from the noisy image (:func:`smoe.noise.estimate_noise`);
it sets the kernel count (:func:`kernel_density`).  Each model of the first
set stops once its residual to the noisy image looks like white noise that has
begun to be fitted: the correlation of the residual with itself one pixel
across and down falls to :data:`STOP_CORR` (a little below 0).  A model that
still misses structure leaves a positively correlated residual; one that
follows the noise takes out its smooth part and leaves a negatively correlated
one.  Unlike a residual-energy rule this needs no noise level and lets
textured images fit deeper than flat ones.  The colour models stop by
Morozov's discrepancy principle: their mean squared residual falls to
:data:`STOP_FACTOR` times the variance of their (halved) noise.  At
sigma^2 = 0.01 on 2 cores, 8 models of kodim23 (and the 4 colour models) take
25 s; kodim13's foliage uses all ``PRESET.iters`` steps, 57 s.

Parallelism and determinism.  The H fits are independent work units
(:func:`fit_shift`, a top-level function on NumPy arrays) run by
:mod:`smoe.executor`: ``workers=N`` fits N models at a time, each with one
numba and one torch thread, and ``workers=1`` runs them in-process, also with
one thread each.  The fused rasterizer is deterministic for a fixed thread
count and the renders are summed in model order, so the output is
bit-identical for any ``workers`` given the same seeds.  On a machine with n
cores use ``workers=n``: independent fits scale better than threads inside
one fit.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
import warnings
from dataclasses import dataclass
from numbers import Integral, Real

import numpy as np

from .denoising_preset import (CHROMA_DENSITY, CHROMA_ITERS, DEFAULT_AREA_POWER, DEFAULT_CHROMA_MODELS,
                               DEFAULT_DENSITY, DEFAULT_MODELS, DEFAULT_THRESHOLD, MAX_MODELS, PRESET, STOP_CORR,
                               STOP_FACTOR)
from .executor import Executor, make_executor
from .fitted import FittedModel
from .fitting import as_image, fit, psnr_from_mse
from .model import Model
from .noise import estimate_noise
from .segment import mdbscan
from .shifts import check_models, shift_offsets
from .spec import FitSpec, kernel_budget
from .validate import check_area_power

__all__ = ["denoise", "shift_offsets", "kernel_density", "fit_shift", "ShiftModel", "PRESET",
           "DEFAULT_MODELS", "DEFAULT_DENSITY",
           "DEFAULT_THRESHOLD", "DEFAULT_AREA_POWER", "DEFAULT_CHROMA_MODELS", "CHROMA_DENSITY", "CHROMA_ITERS",
           "MAX_MODELS", "STOP_CORR", "STOP_FACTOR"]

#: Steps between checks of the stop rule.
_CHECK_EVERY = 10
#: Noise standard deviation (on [0, 1]) that :data:`DEFAULT_DENSITY` is tuned for (sigma^2 = 0.01).
_REFERENCE_SIGMA = 0.1


@dataclass(frozen=True)
class ShiftModel:
    """One of the averaged models.

    fitted : the fitted model with its tile offset; its frame is the noisy
        image, or for a colour model its half-resolution version (render it
        with ``scale=2`` and crop)
    seed : the seed its initializer used
    fit_seconds : wall time of its fit (initialization included)
    chroma : True for a model of the separate colour fit
    """

    fitted: FittedModel
    seed: int
    fit_seconds: float
    chroma: bool = False


# ----------------------------------------------------------------- budget
def kernel_density(sigma: float | None = None, density: float = DEFAULT_DENSITY) -> float:
    """Initial kernels per pixel of each model at noise level ``sigma``.

    ``density`` kernels per pixel (:data:`DEFAULT_DENSITY`).  With a noise level ``sigma``
    (std on [0, 1], given or estimated) below 0.1 the density grows by ``0.1 / sigma``,
    at most 2x: weaker noise leaves more detail worth a kernel (one model on
    the kodim05 crop at sigma^2 = 0.0037: 27.53 dB with the 1.64x budget,
    26.05 without).  Stronger noise keeps the default: there the 0.45x
    budget lost 0.46 dB at sigma^2 = 0.05 (20.39 against 20.85).
    :func:`smoe.spec.kernel_budget` turns it into a count.

    Examples
    --------
    >>> kernel_density(0.05) == 2 * kernel_density(0.1) == 2 * DEFAULT_DENSITY
    True
    """
    if sigma is not None and sigma > 0:
        density *= min(2.0, max(1.0, _REFERENCE_SIGMA / sigma))
    return density


# ------------------------------------------------------------------ work
def fit_shift(shift: tuple[int, tuple[int, int]], *, image: np.ndarray, spec: FitSpec, scale: int = 1) -> dict:
    """Fit one model with a shifted tile grid and render it: the unit of parallel work.

    Parameters
    ----------
    shift : (int, (int, int))
        ``(seed, (oy, ox))``: the initializer's seed and the tile offset.
    image : (H, W, C) float32 array
    spec : FitSpec
        The fit, raster scope; ``seed`` and ``tile_offset`` come from ``shift``.
    scale : int
        Render at ``scale`` times the image's size (the same area).

    Returns
    -------
    dict with ``render`` (scale H, scale W, C) float32, the model's parameter
    arrays ``mu``, ``chol``, ``pi``, ``experts`` and ``seconds``.
    """
    seed, tile_offset = shift
    start = time.perf_counter()
    h, w, _ = image.shape
    result = fit(image, spec=spec.replace(seed=seed, tile_offset=tile_offset), quiet=True)
    out = result.fitted.render(size=(scale * h, scale * w))
    return {"render": out, **result.model.numpy(), "seconds": time.perf_counter() - start}


def _in_order(outcomes):
    """Re-order executor outcomes (completion order) by index, raising the first failure."""
    pending, nxt = {}, 0
    for outcome in outcomes:
        if outcome.error is not None:
            raise outcome.error
        pending[outcome.index] = outcome.value
        while nxt in pending:
            yield nxt, pending.pop(nxt)
            nxt += 1


# ------------------------------------------------------------------ main
def _noisy_input(noisy) -> np.ndarray:
    """The noisy image as float32 (H, W, C), clipped to [0, 1] with a warning if needed."""
    img = as_image(noisy, "noisy image")
    lo, hi = float(img.min()), float(img.max())
    if lo < 0.0 or hi > 1.0:
        warnings.warn(f"noisy image has values outside [0, 1] (min {lo:.4g}, max {hi:.4g}); clipped to [0, 1]",
                      stacklevel=3)
        img = np.clip(img, 0.0, 1.0)
    return img


def denoise(noisy, models: int | None = DEFAULT_MODELS, *, shift_step: int | None = None, init: str = "segment",
            threshold: float = DEFAULT_THRESHOLD, area_power: float = DEFAULT_AREA_POWER, mode: str = "smoe",
            n_kernels: int | None = None, iters: int = PRESET.iters, sigma: float | None = None,
            stop_corr: float | None = STOP_CORR, stop_factor: float | None = STOP_FACTOR,
            chroma_models: int = DEFAULT_CHROMA_MODELS, seed: int = 0, workers: int = 1, return_models: bool = False,
            quiet: bool = True, init_options: dict | None = None, executor: Executor | None = None, **settings):
    """Denoise an image by averaging H rasterized models with shifted tile grids.

    Parameters
    ----------
    noisy : (H, W) or (H, W, C) array
        Noisy image, float in [0, 1], C = 1 or 3.  Values outside [0, 1] are
        clipped with a warning (noise on a [0, 1] image can overshoot; the
        models are fitted to displayable values); NaN or infinity raises.
    models : int, optional
        Number of models H (see :func:`shift_offsets`); None with a
        ``shift_step`` lets the step decide.
    shift_step : int, optional
        Shift step in pixels, a divisor of 16; gives ``(16 / s)^2`` models.
    init : str
        Initializer of every model: ``"segment"`` (default; MDBSCAN computed
        once on the noisy image and shared), ``"random"``, or any registered
        name.
    threshold : float
        MDBSCAN ``d_Th`` for ``init="segment"`` (the paper uses 10 and 20).
    area_power : float
        For ``init="segment"``: kernels per segment in proportion to
        ``area ** area_power``, between 0 (the same count in every segment,
        R Eq. 9) and 1 (the same density everywhere).
    mode : {"smoe", "rbf"}
        ``"rbf"`` is the multi-model GaussianImage comparison.
    n_kernels : int, optional
        Initial kernels per model; default :func:`kernel_density` per pixel.
    iters : int
        Most gradient steps per model.
    sigma : float, optional
        Noise standard deviation on [0, 1] if known; by default it is
        estimated (:func:`smoe.noise.estimate_noise`).  It sets the default kernel count
        and the colour models' stop rule.
    stop_corr : float or None
        Stop each model of the first set once the neighbour correlation of
        its residual to the noisy image is at most this (checked every 10
        steps); None gives them the ``stop_factor`` rule instead.
    stop_factor : float or None
        Stop each colour model (and with ``stop_corr=None`` each model) once
        its mean squared residual is at most ``stop_factor * sigma**2`` (of
        its image's noise; checked every 10 steps).  None with
        ``stop_corr=None`` runs all ``iters`` steps.
    chroma_models : int
        RGB only: models of the separate, half-resolution colour fit (module
        docstring, "Colour"), 0 to 256; 0 takes the colour from the same
        models as the brightness, as the paper does.  They use at most
        :data:`CHROMA_ITERS` (and ``iters``) steps and the default kernel
        count of their density :data:`CHROMA_DENSITY`.
    seed : int
        Model k uses seed ``seed + k``; the colour models continue the count.
    workers : int
        Models fitted at the same time, each with one thread
        (:func:`smoe.executor.make_executor`); the result does not depend on it.
        Scripts that use ``workers > 1`` need the usual
        ``if __name__ == "__main__":`` guard (worker processes are spawned).
    return_models : bool
        Also return the fitted models.
    quiet : bool
        False prints one line per fitted model to stderr.
    init_options : dict, optional
        Extra initializer options.
    executor : smoe.executor.Executor, optional
        Run the fits on this executor (e.g. a Dask cluster) instead of one made
        for ``workers``; it is not closed.  Keep its ``threads_per_worker`` at 1
        for results identical to ``workers=1``.
    **settings
        Other :class:`smoe.spec.FitSpec` fields (``lam``, learning rates...); the
        fit starts from :data:`PRESET`.

    Returns
    -------
    image : float32 array, the input's shape
        Mean of the H renders (not clipped), its chroma replaced by that of
        the colour models' mean when there are any.
    models : list of ShiftModel
        Only with ``return_models=True``: the H models, then the colour models.
    """
    img = _noisy_input(noisy)
    offsets = shift_offsets(models, shift_step)
    if isinstance(workers, bool) or not isinstance(workers, Integral) or workers < 1:
        raise ValueError(f"workers must be a whole number >= 1, got {workers!r}")
    if sigma is not None and not (isinstance(sigma, Real) and math.isfinite(sigma) and sigma >= 0):
        raise ValueError(f"sigma must be a finite noise standard deviation >= 0 (on the [0, 1] scale), "
                         f"got {sigma!r}")
    if stop_factor is not None and not (isinstance(stop_factor, Real) and math.isfinite(stop_factor)
                                        and stop_factor > 0):
        raise ValueError(f"stop_factor must be a finite number > 0 (or None for no stop rule), got {stop_factor!r}")
    if stop_corr is not None and not (isinstance(stop_corr, Real) and math.isfinite(stop_corr)
                                      and -1 <= stop_corr <= 1):
        raise ValueError(f"stop_corr must be a correlation between -1 and 1 (or None), got {stop_corr!r}")
    n_chroma = check_models(chroma_models, allow_zero=True)
    if img.shape[2] == 1:
        n_chroma = 0  # grey has no chroma
    h, w, _ = img.shape
    noise = estimate_noise(img) if sigma is None else float(sigma)
    if n_kernels is None:
        n_kernels = kernel_budget(h, w, kernel_density(noise))
    for name in ("scope", "tile_offset"):
        if name in settings:
            raise ValueError(f"denoise sets {name} itself (raster scope, one tile offset per model); drop {name}")
    # Validated here, so that a bad kernel count, initializer or setting fails before MDBSCAN or any worker runs.
    spec = PRESET.replace(n_kernels=n_kernels, mode=mode, init=init, seed=seed,
                          **{**_stop_rule(noise, stop_factor, iters, stop_corr), **settings, "iters": iters})
    spec = spec.validate(img.shape).replace(init_options=_init_options(img, init, threshold, area_power,
                                                                       init_options))
    sets = [{"image": img, "offsets": offsets, "first_seed": seed, "spec": spec}]
    if n_chroma:
        half = _half_resolution(img)
        chroma_iters = min(iters, CHROMA_ITERS)
        # A 2 x 2 mean of white noise has half its standard deviation.
        chroma = spec.replace(n_kernels=kernel_budget(*half.shape[:2], kernel_density(noise, CHROMA_DENSITY)),
                              init_options=_init_options(half, init, threshold, area_power, init_options, step=2),
                              **{**settings, **_stop_rule(noise / 2, stop_factor, chroma_iters), "iters": chroma_iters})
        sets.append({"image": half, "offsets": shift_offsets(n_chroma), "first_seed": seed + len(offsets),
                     "scale": 2, "spec": chroma.validate(half.shape)})
    own = executor is None
    ex = make_executor(min(workers, len(offsets))) if own else executor
    fitted = [] if return_models else None
    try:
        result, *colour = [_average(**job, executor=ex, fitted=fitted, quiet=quiet) for job in sets]
    finally:
        if own:
            ex.close()
    if colour:
        chroma = colour[0][:h, :w]
        result = result.mean(axis=2, keepdims=True) + chroma - chroma.mean(axis=2, keepdims=True)
    result = result.astype(np.float32).reshape(np.shape(noisy))
    return (result, fitted) if return_models else result


def _average(image: np.ndarray, offsets: list, first_seed: int, spec: FitSpec, *, executor: Executor,
             fitted: list | None, quiet: bool, scale: int = 1) -> np.ndarray:
    """Fit one model per tile offset (model k seeded ``first_seed + k``) and average their renders.

    Returns the float64 ``(scale H, scale W, C)`` mean; appends a :class:`ShiftModel`
    per fit to ``fitted`` unless it is None.
    """
    shifts = [(first_seed + k, off) for k, off in enumerate(offsets)]
    h, w, _ = image.shape
    name = "colour model" if scale > 1 else "model"
    # Summed in model order whatever order the fits finish in, so the float sum never depends on workers.
    total = np.zeros((scale * h, scale * w, image.shape[2]), dtype=np.float64)
    # closing() stops the fits still running if this loop ends early (an error, Ctrl-C).
    with contextlib.closing(executor.imap(fit_shift, shifts, image=image, spec=spec, scale=scale)) as outcomes:
        for k, out in _in_order(outcomes):
            total += out["render"]
            if not quiet:
                print(f"{name} {k + 1}/{len(shifts)} (tile offset {offsets[k]}): {len(out['pi'])} kernels, "
                      f"{out['seconds']:.1f} s", file=sys.stderr, flush=True)
            if fitted is not None:
                model = Model(out["mu"], out["chol"], out["pi"], out["experts"])
                shifted = FittedModel(model, (h, w), spec.mode, "raster", offsets[k],
                                      spec.replace(seed=first_seed + k, tile_offset=offsets[k]))
                fitted.append(ShiftModel(shifted, first_seed + k, out["seconds"], chroma=scale > 1))
    return total / len(shifts)


def _init_options(image: np.ndarray, init: str, threshold: float, area_power: float, init_options: dict | None,
                  step: int = 1) -> dict:
    """Initializer options; for ``init="segment"`` with the MDBSCAN labels of ``image``, computed once.

    Labels given in ``init_options`` belong to the full-resolution image; ``step`` samples them
    for an image box-averaged ``step x step``.
    """
    options = dict(init_options or {})
    if init == "segment":
        if "labels" not in options:
            options["labels"] = mdbscan(image, threshold, sigma=options.pop("sigma", 1.0))
            options["threshold"] = threshold  # still validated by the initializer
        elif step > 1:
            labels = np.asarray(options["labels"])
            # Labels of any other shape go through as they are, for the initializer to report.
            options["labels"] = labels[::step, ::step] if labels.ndim == 2 else labels
        options.setdefault("area_power", area_power)
        check_area_power(options["area_power"])
    return options


def _half_resolution(image: np.ndarray) -> np.ndarray:
    """Means of 2 x 2 pixel blocks, ``(ceil(H / 2), ceil(W / 2), C)``; an odd last row or column is doubled."""
    h, w, c = image.shape
    padded = np.pad(image, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    blocks = padded.reshape(padded.shape[0] // 2, 2, padded.shape[1] // 2, 2, c)
    return blocks.mean(axis=(1, 3), dtype=np.float64).astype(np.float32)


def _stop_rule(noise: float, stop_factor: float | None, iters: int, stop_corr: float | None = None) -> dict:
    """Fit settings that end a model at a residual neighbour correlation of ``stop_corr`` if given,
    else at the discrepancy principle's residual, if there is one."""
    if stop_corr is not None:
        return {"target_corr": stop_corr, "log_every": _CHECK_EVERY}
    if stop_factor is None or noise <= 0:
        # Only the last iteration is logged, which saves a tile binning every few steps.
        return {"target_corr": None, "log_every": iters}
    return {"target_corr": None, "target_psnr": psnr_from_mse(stop_factor * noise * noise),
            "log_every": _CHECK_EVERY}
