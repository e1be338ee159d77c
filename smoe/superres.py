"""Super-resolution and sharpening by resampling a fitted model (R paper, Sections II-B, VII-C; SPEC §6).

A fitted model is a continuous function over the image plane, so
:func:`upscale` fits the image once and renders the model on a finer (or
coarser, or differently shaped) pixel raster covering the same area:
``render(model, H', W', extent=(H, W))``.  The tile grid stays in the fitted
image's frame, so every output size samples exactly the fitted function.
Sharpening narrows every kernel before rendering (``Sigma -> f^2 Sigma``,
``f < 1``): SMoE edges get steeper while flat regions stay flat.

Pixel grids: input pixel (r, c) covers ``[c, c+1) x [r, r+1)`` of the fitted
frame and output pixel (R, C) at scale s covers ``[C/s, (C+1)/s) x [R/s,
(R+1)/s)``; the model is sampled at the output pixel centres.  This is the
same alignment as Pillow's ``resize`` and as area (box) downscaling, so an
image reduced by an integer factor and upscaled back lines up with the
original.
"""

from __future__ import annotations

import math
from numbers import Integral, Real

import numpy as np
import torch

from .fitting import as_image, fit
from .limits import MAX_OUTPUT_PIXELS
from .rasterizer import MODES, output_size, render
from .validate import check_choice

__all__ = ["upscale", "target_size", "default_kernels", "MAX_OUTPUT_PIXELS", "DEFAULT_DENSITY", "DEFAULT_ITERS",
           "DEFAULT_INIT"]

#: Initial kernels per input pixel (see :func:`default_kernels`).  Upscaling needs a model that
#: interpolates the input.  kodim23 reduced 4x (192 x 128), rendered 4x: one grid kernel per pixel
#: scored 29.01 dB after 100 iterations (bicubic 28.89, Lanczos 29.02); with 300 iterations and the
#: learning rates used before the shipped fit defaults, 1/2, 1/4 and 1/8 kernels per pixel scored
#: 28.95, 28.69 and 28.22.  kodim05: 21.95 dB with 1 and 21.84 with 1/2 (bicubic 21.81).
DEFAULT_DENSITY = 1.0
#: Gradient steps of the fit; at one kernel per pixel 30 steps already gave 28.99 dB, 100 gave 29.01.
DEFAULT_ITERS = 100
#: Initializer: the regular grid puts one kernel on every pixel at density 1 and keeps kernels small
#: (half the spacing), so each tile lists few kernels; 5 px random kernels made each step about 10x slower.
DEFAULT_INIT = "grid"


def target_size(extent: tuple[int, int], *, scale: float | None = None,
                size: tuple[int, int] | None = None) -> tuple[int, int]:
    """Output ``(height, width)`` for an image of size ``extent``, checked against :data:`MAX_OUTPUT_PIXELS`.

    Parameters
    ----------
    extent : (int, int)
        ``(height, width)`` of the input image.
    scale : float, optional
        Any real factor > 0 (also non-integer); sizes round to the nearest
        pixel, at least 1.
    size : (int, int), optional
        Explicit ``(height, width)``; give ``scale`` or ``size``, not both.

    Raises
    ------
    ValueError
        On a bad scale or size, or an output above the pixel limit.
    """
    if scale is None and size is None:
        raise ValueError("give a scale factor or an output size")
    h, w = output_size(extent, scale=scale, size=size)
    if h * w > MAX_OUTPUT_PIXELS:
        raise ValueError(f"output of {w}x{h} = {h * w / 1e6:.0f} megapixels exceeds the limit of "
                         f"{MAX_OUTPUT_PIXELS // 1_000_000} megapixels; use a smaller scale or size")
    return h, w


def default_kernels(height: int, width: int) -> int:
    """Initial kernel count for fitting a ``height x width`` image: :data:`DEFAULT_DENSITY` per pixel."""
    return max(1, min(height * width, round(DEFAULT_DENSITY * height * width)))


def upscale(image, scale: float | None = None, size: tuple[int, int] | None = None, *, sharpen: float = 1.0,
            n_kernels: int | None = None, mode: str = "smoe", iters: int = DEFAULT_ITERS, seed: int = 0,
            init: str = DEFAULT_INIT, quiet: bool = True, return_model: bool = False, **settings):
    """Fit an image and render it at another resolution.

    Parameters
    ----------
    image : (H, W) or (H, W, C) array
        Float image in [0, 1], C = 1 or 3.
    scale : float, optional
        Magnification, any real number > 0 (2.5 and 0.5 work too).
    size : (int, int), optional
        Output ``(height, width)`` instead of a scale (the aspect may change).
    sharpen : float
        Bandwidth factor f applied before rendering; f < 1 sharpens, 1 is off.
    n_kernels : int, optional
        Initial kernels; default :func:`default_kernels`.
    mode : {"smoe", "rbf"}
        Regression function (``"rbf"`` is the GaussianImage model).
    iters : int
        Gradient steps.
    seed : int
        Seed of the initializer.
    init : str
        Initializer name.
    quiet : bool
        False shows the fit's progress bar.
    return_model : bool
        Also return the :class:`smoe.fitting.FitResult`.
    **settings
        Other :class:`smoe.fitting.FitSettings` fields.

    Returns
    -------
    image : float32 array (H', W') or (H', W', C), like the input's layout
        Not clipped: a render may overshoot [0, 1] slightly (RBF more than SMoE).
    result : FitResult
        Only with ``return_model=True``.

    Raises
    ------
    ValueError
        On bad arguments or an output above :data:`MAX_OUTPUT_PIXELS`, before
        any fitting.
    """
    img = as_image(image)
    check_choice("mode", mode, MODES)
    h, w = img.shape[:2]
    out_h, out_w = target_size((h, w), scale=scale, size=size)
    if isinstance(sharpen, bool) or not (isinstance(sharpen, Real) and math.isfinite(sharpen) and sharpen > 0):
        raise ValueError(f"sharpen must be a positive finite factor (< 1 sharpens), got {sharpen!r}")
    if n_kernels is None:
        n_kernels = default_kernels(h, w)
    if isinstance(n_kernels, bool) or not isinstance(n_kernels, Integral):
        raise ValueError(f"n_kernels must be a whole number, got {n_kernels!r}")
    settings = {"log_every": max(1, iters // 10) if isinstance(iters, Integral) else 1, **settings}
    result = fit(img, int(n_kernels), mode=mode, scope="raster", init=init, seed=seed, quiet=quiet, iters=iters,
                 **settings)
    with torch.no_grad():
        out = render(result.model, out_h, out_w, mode=mode, scope="raster", extent=(h, w), sharpen=float(sharpen))
    pixels = out.numpy()
    if np.ndim(image) == 2:
        pixels = pixels[:, :, 0]
    return (pixels, result) if return_model else pixels
