"""Super-resolution and sharpening by resampling a fitted model (R paper, Sections II-B, VII-C; SPEC §6).

A fitted model is a continuous function over the image plane, so
:func:`upscale` fits the image once and renders the model on a finer (or
coarser, or differently shaped) pixel raster covering the same area:
``result.fitted.render(scale=s)``.  The tile grid stays in the fitted
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

from numbers import Integral

import numpy as np

from .fitting import as_image, fit
from .sizes import output_size
from .spec import kernel_budget
from .superres_preset import DEFAULT_DENSITY, PRESET
from .validate import check_finite

__all__ = ["upscale", "PRESET", "DEFAULT_DENSITY"]


def upscale(image, scale: float | None = None, size: tuple[int, int] | None = None, *, sharpen: float = 1.0,
            n_kernels: int | None = None, mode: str = PRESET.mode, iters: int = PRESET.iters, seed: int = 0,
            init: str = PRESET.init, quiet: bool = True, return_model: bool = False, **settings):
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
        Initial kernels; default :data:`DEFAULT_DENSITY` per pixel.
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
        On bad arguments or an output above :data:`smoe.sizes.MAX_OUTPUT_PIXELS`,
        before any fitting.

    Examples
    --------
    >>> import numpy as np
    >>> image = np.random.default_rng(0).random((16, 24)).astype(np.float32)
    >>> upscale(image, 2.5, iters=5).shape
    (40, 60)
    """
    img = as_image(image)
    h, w = img.shape[:2]
    if scale is None and size is None:
        raise ValueError("give a scale factor or an output size")
    out_size = output_size((h, w), scale=scale, size=size)
    check_finite("sharpen (a bandwidth factor, < 1 sharpens)", sharpen, low=0, low_open=True)
    if n_kernels is None:
        n_kernels = kernel_budget(h, w, DEFAULT_DENSITY)
    settings.setdefault("log_every", max(1, iters // 10) if isinstance(iters, Integral) else 1)
    spec = PRESET.replace(n_kernels=n_kernels, mode=mode, iters=iters, seed=seed, init=init, **settings)
    result = fit(img, spec=spec.validate(img.shape), quiet=quiet)
    pixels = result.fitted.render(size=out_size, sharpen=sharpen)
    if np.ndim(image) == 2:
        pixels = pixels[:, :, 0]
    return (pixels, result) if return_model else pixels
