"""``smoe render``, ``smoe eval`` and ``smoe info``: working with saved models and images."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from .guards import _prepare_output_file, _removed_on_failure
from .options import EXIT_OK, CliError, _positive_float, _size
from .video import _run_render_video

if TYPE_CHECKING:
    import numpy as np

    from ..spec import FitSpec


# ============================================================= quality
def _quality_lines(q: dict) -> list[str]:
    def fmt(key, digits, unit=""):
        value = q[key]
        return f"{value:.{digits}f}{unit}" if value is not None else "n/a (image too small or metric disabled)"

    psnr = "inf dB (identical)" if q["psnr"] is None else fmt("psnr", 2, " dB")
    lines = [f"PSNR     {psnr}", f"SSIM     {fmt('ssim', 4)}", f"MS-SSIM  {fmt('ms_ssim', 4)}",
             f"LPIPS    {fmt('lpips', 4)}"]
    if q["crops"] is not None:
        lines.append(f"(SSIM, MS-SSIM and LPIPS: mean over {len(q['crops'])} fixed crops of "
                     f"{q['crops'][0][2]}x{q['crops'][0][3]} px; PSNR over the whole image)")
    return lines


# =============================================================== render
def _add_render(p) -> None:
    from ..sizes import MAX_OUTPUT_PIXELS
    from ..spec import SCOPES
    from ..video.fitted import MAX_VIDEO_PIXELS

    p.description = ("Render a model file to an image, or a video model to a video or a folder of frames. The "
                     "model is continuous, so any output size works (and, for a video model, any frame rate): the "
                     "raster covers the area of the image or clip it was fitted on.")
    p.epilog = (f"Outputs larger than {MAX_OUTPUT_PIXELS // 1_000_000} megapixels a frame, or "
                f"{MAX_VIDEO_PIXELS // 1_000_000} megapixels over all frames of a video, are refused.")
    p.add_argument("model", metavar="MODEL", help="model file written by 'smoe fit' or 'smoe fit-video' "
                   "(model.smoe.npz)")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--scale", type=_positive_float, default=None, metavar="F",
                      help="output size = fitted size x F, e.g. 2 for twice the resolution (default: 1)")
    size.add_argument("--size", type=_size, default=None, metavar="WxH",
                      help="exact output size in pixels, width x height, e.g. 1920x1080 (aspect may change)")
    p.add_argument("--fps-scale", type=_positive_float, default=None, metavar="F",
                   help="video models: output frame rate = fitted rate x F; a whole F keeps every fitted frame and "
                        "adds F-1 between each pair (frame interpolation), giving (frames-1) x F + 1 frames "
                        "(default: 1)")
    p.add_argument("--sharpen", type=_positive_float, default=None, metavar="F",
                   help="image models: multiply every kernel's bandwidth by F before rendering: F < 1 (e.g. 0.7) "
                        "sharpens edges, F > 1 smooths; tiles keep the fitted kernel lists (default: off)")
    p.add_argument("--scope", choices=SCOPES, default=None,
                   help="image models: override the scope stored in the model (default: the model's)")
    p.add_argument("-o", "--output", metavar="OUT", required=True,
                   help="image model: image file to write, the suffix picks the format (.png, .jpg, .tif, .bmp); "
                        "video model: a video file (.mp4 or .mkv, H.264 preview) or a folder of PNG frames (a "
                        "path without suffix, or ending in /)")
    p.set_defaults(run=_run_render)


def _run_render(args) -> int:
    import dataclasses

    from ..modelfile import fitted_from_arrays, read_model_arrays
    from ..sizes import output_size

    arrays, meta, spec = read_model_arrays(args.model)
    if meta["dim"] == 3:
        return _run_render_video(args, arrays, meta)
    if args.fps_scale is not None:
        raise CliError(f"--fps-scale applies to video models only; {args.model} is an image model; drop "
                       "--fps-scale (use --scale or --size for its resolution)")
    # refused here, before any file and before torch loads
    h, w = output_size((meta["height"], meta["width"]), scale=args.scale, size=args.size)
    from ..imageio import write_image

    fitted = fitted_from_arrays(args.model, arrays, meta, spec)
    if args.scope:
        fitted = dataclasses.replace(fitted, scope=args.scope)
    out = Path(args.output)
    with _removed_on_failure(_prepare_output_file(out)):
        write_image(out, fitted.render(size=(h, w), sharpen=args.sharpen or 1.0))
    print(f"wrote {out} ({w}x{h}, {len(fitted.model)} kernels, {fitted.mode}/{fitted.scope})")
    return EXIT_OK


# ================================================================= eval
def _add_eval(p) -> None:
    p.description = ("Print PSNR (dB), SSIM, MS-SSIM and LPIPS (AlexNet) of IMAGE against REFERENCE. "
                     "Metrics need a minimum size: SSIM 11 px, LPIPS 31 px, MS-SSIM more than 160 px per side; "
                     "smaller images report n/a (null in JSON). Images above one megapixel are measured "
                     "on four fixed 512x512 crops (SSIM, MS-SSIM, LPIPS; PSNR on the whole image).")
    p.add_argument("reference", metavar="REFERENCE", help="the original image")
    p.add_argument("image", metavar="IMAGE", help="the image to judge, same size and colour type")
    p.add_argument("--no-lpips", action="store_true", help="skip LPIPS, the slowest metric")
    _add_json_flag(p)
    p.set_defaults(run=_run_eval)


def _run_eval(args) -> int:
    from ..imageio import read_image

    reference, image = read_image(args.reference), read_image(args.image)
    if reference.shape != image.shape:
        raise CliError(f"{args.image} is {_shape_text(image)} but {args.reference} is {_shape_text(reference)}; "
                       "compare images of the same size and colour type")
    from ..metrics import evaluate  # loads torch: after the images are known to be comparable
    q = evaluate(reference, image, lpips=not args.no_lpips)
    print(json.dumps(q) if args.json else "\n".join(_quality_lines(q)))
    return EXIT_OK


def _shape_text(image: np.ndarray) -> str:
    return f"{image.shape[1]}x{image.shape[0]} {'RGB' if image.ndim == 3 else 'grey'}"


def _add_json_flag(p) -> None:
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")


# ================================================================= info
def _add_info(p) -> None:
    p.description = ("Print what a model file holds: kernel count, channels, mode, scope, the size "
                     "of the image it was fitted on, format and writer version, kernels per tile, kernel "
                     "bandwidths and the fit settings; for a video model, its frame count, frame rate and "
                     "space-time tiles, and its kernels' mean extents along x, y and t.")
    p.add_argument("model", metavar="MODEL", help="model file written by 'smoe fit' (model.smoe.npz) or bitstream "
                   "written by 'smoe encode' (.smoe): size, kernels, bits per kernel, section sizes")
    _add_json_flag(p)
    p.set_defaults(run=_run_info)


def _run_info(args) -> int:
    from ..codec import is_bitstream
    from ..modelfile import read_model_arrays

    if is_bitstream(args.model):
        from .codec import _print_bitstream_info

        return _print_bitstream_info(args.model, args.json)

    arrays, meta, spec = read_model_arrays(args.model)
    facts = _model_facts(arrays, meta, spec)
    if args.json:
        print(json.dumps(facts, indent=2))
    elif facts["dim"] == 3:
        _print_video_info(args.model, facts)
    else:
        _print_image_info(args.model, facts, meta)
    return EXIT_OK


def _print_image_info(path: str, facts: dict, meta: dict) -> None:
    bw = facts["bandwidth_px"]
    _print_rows([
        ("file", path),
        ("kernels", facts["kernels"]),
        ("channels", _channels_text(facts["channels"])),
        ("mode / scope", f"{facts['mode']} / {facts['scope']}, tile offset {tuple(facts['tile_offset'])}"),
        ("fitted on", f"{facts['width']}x{facts['height']} pixels"),
        ("format", f"{meta['format']} version {facts['format_version']}, {facts['dtype']}, "
                   f"written by smoe {facts['smoe_version']}"),
        ("kernels/tile", f"{facts['kernels_per_tile']:.1f} (mean over {facts['tile']}x{facts['tile']} tiles at the "
                         "fitted size)"),
        ("bandwidth", "n/a (no kernels)" if bw is None else
         f"median sigma {bw['median_sigma']:.2f} px (major axis {bw['median_major']:.2f}, minor "
         f"{bw['median_minor']:.2f}; major axes {bw['min_major']:.2f} to {bw['max_major']:.2f} px)"),
    ])
    _print_settings("fit spec" if meta["format_version"] > 1 else "settings", facts["settings"])


def _print_video_info(path: str, facts: dict) -> None:
    bw = facts["bandwidth"]
    _print_rows([
        ("file", path),
        ("kernels", facts["kernels"]),
        ("channels", _channels_text(facts["channels"])),
        ("mode", facts["mode"]),
        ("fitted on", f"{facts['frames']} frames of {facts['width']}x{facts['height']} pixels at {facts['fps']:g} fps"),
        ("format", f"smoe-model version {facts['format_version']}, video (3D kernels over x, y, t), {facts['dtype']}, "
                   f"written by smoe {facts['smoe_version']}"),
        ("tiles", f"{facts['tile']}x{facts['tile']} pixels x {facts['tile_t']} frames"),
        ("bandwidth", "n/a (no kernels)" if bw is None else
         f"mean sigma x {bw['mean_sigma_x']:.2f} px, y {bw['mean_sigma_y']:.2f} px, t {bw['mean_sigma_t']:.2f} "
         "frames"),
    ])
    _print_settings("settings", facts["settings"])


def _channels_text(channels: int) -> str:
    return f"{channels} ({'RGB' if channels == 3 else 'grey'})"


def _print_rows(rows: list[tuple[str, object]]) -> None:
    for name, value in rows:
        print(f"{name:<13} {value}")


def _print_settings(title: str, settings: dict) -> None:
    print(f"{title:<14}(none stored)" if not settings else title)
    for key, value in settings.items():
        print(f"  {key:<17} {value}")


def _model_facts(arrays: dict[str, np.ndarray], meta: dict, spec: FitSpec | None) -> dict:
    """What ``smoe info`` prints, computed with NumPy (:mod:`smoe.kernelfacts`) so that torch never loads."""
    if meta["dim"] == 3:
        return _video_facts(arrays, meta)
    from ..kernelfacts import bandwidth, kernels_per_tile

    frame = (meta["height"], meta["width"])
    return {
        "dim": 2, "kernels": len(arrays["mu"]), "channels": arrays["experts"].shape[1], "mode": meta["mode"],
        "scope": meta["scope"], "height": frame[0], "width": frame[1], "tile_offset": list(meta["tile_offset"]),
        "tile": meta["tile"], "format_version": meta["format_version"], "smoe_version": meta["smoe_version"],
        "dtype": str(arrays["mu"].dtype),
        # at the fitted size, also for a global-scope model (as if rasterized)
        "kernels_per_tile": kernels_per_tile(arrays["mu"], arrays["chol"], arrays["pi"], frame, mode=meta["mode"],
                                             tile_offset=tuple(meta["tile_offset"]), tile=meta["tile"]),
        "bandwidth_px": bandwidth(arrays["chol"]),
        # Format 1 stored free settings, shown as they are; format 2 the fit spec.
        "settings": dict(sorted(meta["settings"].items())) if meta["format_version"] == 1
        else {} if spec is None else spec.to_dict(),
    }


def _video_facts(arrays: dict[str, np.ndarray], meta: dict) -> dict:
    """``smoe info``'s facts about a video model file."""
    return {
        "dim": 3, "kernels": len(arrays["mu"]), "channels": arrays["experts"].shape[1], "mode": meta["mode"],
        "frames": meta["frames"], "height": meta["height"], "width": meta["width"], "fps": float(meta["fps"]),
        "tile": meta["tile"], "tile_t": meta["tile_t"], "format_version": meta["format_version"],
        "smoe_version": meta["smoe_version"], "dtype": str(arrays["mu"].dtype),
        "bandwidth": _video_bandwidth(arrays["chol"]), "settings": dict(sorted(meta["settings"].items())),
    }


def _video_bandwidth(chol: np.ndarray) -> dict | None:
    """Mean standard deviations of (L, 6) space-time kernels along x, y (pixels) and t (frames); None for none.

    The NumPy twin of the diagonal of :func:`smoe.video.model.covariance_from_chol`:
    ``Sigma = B^-1 B^-T``, so ``Sigma_kk`` is the squared norm of row k of ``B^-1``.
    """
    import numpy as np

    if len(chol) == 0:
        return None
    b00, b10, b11, b20, b21, b22 = chol.astype(np.float64).T
    i00, i11, i22 = 1 / b00, 1 / b11, 1 / b22
    i10 = -b10 * i00 * i11
    i20, i21 = -(b20 * i00 + b21 * i10) * i22, -b21 * i11 * i22
    sigma = {"x": i00, "y": np.hypot(i10, i11), "t": np.sqrt(i20 ** 2 + i21 ** 2 + i22 ** 2)}
    return {f"mean_sigma_{axis}": float(np.mean(values)) for axis, values in sigma.items()}
