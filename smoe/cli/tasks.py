"""``smoe denoise``, ``smoe upscale`` and ``smoe segment``: image tasks built on fitting."""

from __future__ import annotations

import time
from pathlib import Path

from .guards import _prepare_output_file, _removed_on_failure, _sigterm_as_interrupt
from .options import EXIT_OK, CliError, _non_negative_float, _non_negative_int, _positive_float, _positive_int, _size


# ============================================================== denoise
def _add_denoise(p) -> None:
    from .. import denoising_preset as dn
    from ..initializers import available as available_initializers
    from ..spec import MODES

    p.description = ("Fit several rasterized models to a noisy image, each with its 16x16 tile grid "
                     "shifted by a different offset and its own random start, and write the mean of their "
                     "renders. No noise level is needed: each model stops once its residual looks like fitted white "
                     "noise, and the kernel budget follows an estimate of the noise. The colour of an RGB image "
                     "comes from a few coarser models fitted at half resolution (--chroma-models).")
    p.epilog = ("Time grows linearly with the number of models; --workers fits models in parallel "
                "processes and does not change the result.")
    p.add_argument("noisy", metavar="NOISY", help="noisy image file (PNG, JPEG, TIFF, BMP; grey or RGB)")
    count = p.add_mutually_exclusive_group()
    count.add_argument("--models", type=_positive_int, default=None, metavar="H",
                       help=f"number of averaged models, 1 to {dn.MAX_MODELS}, e.g. 1, 4, 8, 16 or 64; 1, 4, 16 and "
                            f"64 use every shift of step 16, 8, 4 and 2 px, other counts spread their shifts evenly "
                            f"(default: {dn.DEFAULT_MODELS})")
    count.add_argument("--shift-step", type=_positive_int, default=None, metavar="S",
                       help="shift the tile grid in steps of S px (1, 2, 4, 8 or 16) along x and y: (16/S)^2 models")
    p.add_argument("--init", choices=available_initializers(), default="segment",
                   help="where each model's kernels start; 'segment' draws them inside MDBSCAN segments of the "
                        "noisy image (default: %(default)s)")
    p.add_argument("--threshold", type=_positive_float, default=dn.DEFAULT_THRESHOLD, metavar="D",
                   help="MDBSCAN colour threshold d_Th (RGB distance, 0-255 scale) for --init segment "
                        "(default: %(default)g)")
    p.add_argument("--area-power", type=_non_negative_float, default=dn.DEFAULT_AREA_POWER, metavar="P",
                   help="for --init segment: kernels per segment in proportion to its area to the power P, from 0 "
                        "(the same count in every segment) to 1 (the same density everywhere) (default: %(default)g)")
    p.add_argument("--chroma-models", type=_non_negative_int, default=dn.DEFAULT_CHROMA_MODELS, metavar="N",
                   help="RGB images: take the colour (not the brightness) from N coarser models fitted at half "
                        "resolution, which leave less colour noise; 0 takes it from the same models, as the R "
                        "paper does (default: %(default)s)")
    p.add_argument("--mode", choices=MODES, default="smoe",
                   help="regression function: 'smoe' gated mixture, 'rbf' sum of Gaussians (default: %(default)s)")
    p.add_argument("--sigma", type=_non_negative_float, default=None, metavar="S",
                   help="noise standard deviation on the 0-1 scale if known (e.g. 0.1 for 25.5/255); it sets the "
                        "default kernel count and when the colour models stop (default: estimated from the image)")
    p.add_argument("-n", "--kernels", dest="n_kernels", type=_positive_int, default=None, metavar="N",
                   help=f"initial kernels per model (default: one per {round(1 / dn.DEFAULT_DENSITY)} pixels)")
    p.add_argument("--iters", type=_positive_int, default=dn.PRESET.iters, metavar="N",
                   help="most gradient steps per model; many more start to reproduce the noise (default: %(default)s)")
    p.add_argument("--workers", type=_positive_int, default=None, metavar="N",
                   help="models fitted at the same time, one thread each (default: one per core, at most one per "
                        "model)")
    p.add_argument("--seed", type=int, default=0, help="model k starts from seed SEED + k (default: %(default)s)")
    p.add_argument("-o", "--output", metavar="OUT", required=True,
                   help="image file to write; the suffix picks the format (.png, .jpg, .tif, .bmp)")
    p.add_argument("--quiet", action="store_true", help="print nothing but errors and warnings")
    p.set_defaults(run=_run_denoise)


def _run_denoise(args) -> int:
    if args.sigma is not None and args.sigma > 1:
        raise CliError(f"--sigma {args.sigma:g} looks like the 0-255 scale; give it on the 0-1 scale, e.g. "
                       f"--sigma {args.sigma / 255:.3g}")
    from ..denoising_preset import MAX_MODELS
    from ..shifts import shift_offsets
    from ..validate import check_area_power

    offsets = shift_offsets(args.models, args.shift_step)  # a bad count or step fails before any heavy import
    try:
        check_area_power(args.area_power)
    except ValueError as exc:
        raise CliError(f"--area-power {args.area_power:g} is out of range; give a number from 0 (the same kernel "
                       "count in every segment) to 1 (the same density everywhere)") from exc
    if args.chroma_models > MAX_MODELS:
        raise CliError(f"--chroma-models {args.chroma_models} is more than the {MAX_MODELS} distinct shifts of the "
                       f"tile grid; give 0 to {MAX_MODELS}")
    from ..denoising import denoise, kernel_density
    from ..executor import ExecutorError, available_cores
    from ..imageio import read_image, write_image
    from ..noise import estimate_noise
    from ..spec import kernel_budget
    workers = args.workers or min(available_cores(), len(offsets))
    noisy = read_image(args.noisy)
    h, w = noisy.shape[:2]
    try:
        sigma = estimate_noise(noisy) if args.sigma is None else args.sigma
    except ValueError as exc:
        raise CliError(f"{args.noisy} ({w}x{h} pixels) is too small to estimate its noise level; give it with "
                       "--sigma") from exc
    n_kernels = args.n_kernels or kernel_budget(h, w, kernel_density(sigma))
    out = Path(args.output)
    start = time.perf_counter()
    with _removed_on_failure(_prepare_output_file(out)):
        if not args.quiet:
            source = "estimated" if args.sigma is None else "given"
            models = f"{len(offsets)} model{'s' * (len(offsets) != 1)}"
            colour = f", colour from {args.chroma_models} half-resolution models" \
                if args.chroma_models and noisy.ndim == 3 else ""
            print(f"denoising {args.noisy} ({w}x{h}), noise sigma {sigma:.4f} ({source}): {models} of {n_kernels} "
                  f"kernels{colour}, {args.mode}, init {args.init}, at most {args.iters} iterations, "
                  f"{workers} worker(s)")
        try:
            with _sigterm_as_interrupt():
                clean = denoise(noisy, len(offsets), init=args.init, threshold=args.threshold,
                                area_power=args.area_power, chroma_models=args.chroma_models, mode=args.mode,
                                n_kernels=n_kernels, iters=args.iters, sigma=sigma, seed=args.seed,
                                workers=workers, quiet=args.quiet)
        except ExecutorError as exc:
            raise CliError(str(exc)) from exc
        write_image(out, clean)
    if not args.quiet:
        print(f"wrote {out} ({w}x{h}) after {time.perf_counter() - start:.1f} s")
    return EXIT_OK


# ============================================================== upscale
def _add_upscale(p) -> None:
    from .. import superres_preset as sr
    from ..initializers import available as available_initializers
    from ..sizes import MAX_OUTPUT_PIXELS
    from ..spec import MODES

    p.description = ("Fit a model to an image and render it on a finer pixel raster covering the same "
                     "area; --sharpen below 1 narrows every kernel for crisper edges.")
    p.epilog = (f"Outputs larger than {MAX_OUTPUT_PIXELS // 1_000_000} megapixels are refused. To keep "
                "the model, use 'smoe fit' and then 'smoe render' instead.")
    p.add_argument("image", metavar="IMAGE", help="image file to enlarge (PNG, JPEG, TIFF, BMP; grey or RGB)")
    size = p.add_mutually_exclusive_group(required=True)
    size.add_argument("--scale", type=_positive_float, default=None, metavar="F",
                      help="output size = input size x F, any factor > 0, e.g. 4 or 2.5")
    size.add_argument("--size", type=_size, default=None, metavar="WxH",
                      help="exact output size in pixels, width x height, e.g. 1920x1080 (aspect may change)")
    p.add_argument("--sharpen", type=_positive_float, default=1.0, metavar="F",
                   help="multiply every kernel's bandwidth by F before rendering: F < 1 (e.g. 0.9) sharpens, "
                        "F > 1 smooths (default: %(default)g, off)")
    p.add_argument("-n", "--kernels", dest="n_kernels", type=_positive_int, default=None, metavar="N",
                   help=f"initial kernels, at most the pixel count (default: {sr.DEFAULT_DENSITY:g} per input "
                        "pixel)")
    p.add_argument("--iters", type=_positive_int, default=sr.PRESET.iters, metavar="N",
                   help="gradient steps of the fit (default: %(default)s)")
    p.add_argument("--mode", choices=MODES, default="smoe",
                   help="regression function: 'smoe' gated mixture, 'rbf' sum of Gaussians (default: %(default)s)")
    p.add_argument("--init", choices=available_initializers(), default=sr.PRESET.init,
                   help="where the kernels start (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the initializer (default: %(default)s)")
    p.add_argument("-o", "--output", metavar="OUT", required=True,
                   help="image file to write; the suffix picks the format (.png, .jpg, .tif, .bmp)")
    p.add_argument("--quiet", action="store_true", help="print nothing but errors (no progress bar)")
    p.set_defaults(run=_run_upscale)


def _run_upscale(args) -> int:
    from ..imageio import read_image, write_image
    from ..sizes import output_size

    image = read_image(args.image)
    h, w = image.shape[:2]
    output_size((h, w), scale=args.scale, size=args.size)  # a size past the limit fails before any file
    from ..superres import upscale  # loads torch: after the checks of the arguments

    out = Path(args.output)
    with _removed_on_failure(_prepare_output_file(out)):
        big, result = upscale(image, scale=args.scale, size=args.size, sharpen=args.sharpen,
                              n_kernels=args.n_kernels, mode=args.mode, iters=args.iters, init=args.init,
                              seed=args.seed, quiet=args.quiet, return_model=True)
        write_image(out, big)
    if not args.quiet:
        print(f"wrote {out} ({big.shape[1]}x{big.shape[0]} from {w}x{h}, {result.spec.n_kernels} kernels, "
              f"{args.mode})")
    return EXIT_OK


# ============================================================== segment
def _add_segment(p) -> None:
    p.description = ("Segment an image with MDBSCAN (the segmentation behind the 'segment' and "
                     "'adaptive' initializers) and draw the segment boundaries over it.")
    p.add_argument("image", metavar="IMAGE", help="image file (PNG, JPEG, TIFF, BMP; grey or RGB)")
    p.add_argument("--threshold", type=_positive_float, default=40.0, metavar="D",
                   help="colour distance on the 0-255 scale below which neighbouring pixels join a segment; "
                        "larger gives fewer, bigger segments (default: %(default)g)")
    p.add_argument("--labels", metavar="FILE", default=None,
                   help="also write the label map as a 16-bit PNG or TIFF whose pixel values are the labels 1..N")
    p.add_argument("-o", "--output", metavar="OUT", required=True,
                   help="picture to write: boundaries over the image; the suffix picks the format")
    p.add_argument("--quiet", action="store_true", help="print nothing but errors")
    p.set_defaults(run=_run_segment)


def _run_segment(args) -> int:
    from ..imageio import read_image, write_image

    image = read_image(args.image)
    from ..labels import draw_segmentation, segment_stats  # scipy and numba: after the image is read
    from ..segment import mdbscan

    labels = mdbscan(image, args.threshold)
    n = int(labels.max())
    if args.labels is not None and n > 65535:
        raise CliError(f"{n} segments do not fit a 16-bit label image; raise --threshold")
    outs = [Path(args.output)] + ([Path(args.labels)] if args.labels else [])
    with _removed_on_failure([d for out in outs for d in _prepare_output_file(out)]):
        write_image(outs[0], draw_segmentation(image, labels))
        if args.labels:
            write_image(outs[1], labels / 65535.0, bits=16)
    if not args.quiet:
        stats = segment_stats(labels)
        print(f"{n} segments (threshold {args.threshold:g}), median bounding box side "
              f"{stats['median_side']:.0f} px; wrote {', '.join(map(str, outs))}")
    return EXIT_OK
