"""``smoe render``, ``smoe eval`` and ``smoe info``: working with saved models and images."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from .guards import _prepare_output_file, _removed_on_failure
from .options import EXIT_OK, CliError, _positive_float, _size

if TYPE_CHECKING:
    import numpy as np

    from ..model import Model


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
    from ..limits import MAX_OUTPUT_PIXELS
    from ..rasterizer import SCOPES

    p.description = ("Render a model file to an image. The model is continuous, so any output size "
                     "works: the raster covers the area of the image it was fitted on.")
    p.epilog = f"Outputs larger than {MAX_OUTPUT_PIXELS // 1_000_000} megapixels are refused."
    p.add_argument("model", metavar="MODEL", help="model file written by 'smoe fit' (model.smoe.npz)")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--scale", type=_positive_float, default=None, metavar="F",
                      help="output size = fitted size x F, e.g. 2 for twice the resolution (default: 1)")
    size.add_argument("--size", type=_size, default=None, metavar="WxH",
                      help="exact output size in pixels, width x height, e.g. 1920x1080 (aspect may change)")
    p.add_argument("--sharpen", type=_positive_float, default=None, metavar="F",
                   help="multiply every kernel's bandwidth by F before rendering: F < 1 (e.g. 0.7) sharpens "
                        "edges, F > 1 smooths; tiles keep the fitted kernel lists (default: off)")
    p.add_argument("--scope", choices=SCOPES, default=None,
                   help="override the scope stored in the model (default: the model's)")
    p.add_argument("-o", "--output", metavar="OUT", required=True,
                   help="image file to write; the suffix picks the format (.png, .jpg, .tif, .bmp)")
    p.set_defaults(run=_run_render)


def _run_render(args) -> int:
    import torch
    from ..imageio import write_image
    from ..modelfile import load_model
    from ..rasterizer import output_size, render
    from ..limits import MAX_OUTPUT_PIXELS

    model, meta = load_model(args.model)
    extent = (meta["height"], meta["width"])
    h, w = output_size(extent, scale=args.scale, size=args.size)
    if h * w > MAX_OUTPUT_PIXELS:
        raise CliError(f"output of {w}x{h} = {h * w / 1e6:.0f} megapixels exceeds the limit of "
                       f"{MAX_OUTPUT_PIXELS // 1_000_000} megapixels; use a smaller --scale or --size")
    scope = args.scope or meta["scope"]
    out = Path(args.output)
    with _removed_on_failure(_prepare_output_file(out)):
        with torch.no_grad():
            pixels = render(model, h, w, mode=meta["mode"], scope=scope, extent=extent,
                            sharpen=args.sharpen or 1.0)
        write_image(out, pixels)
    print(f"wrote {out} ({w}x{h}, {len(model)} kernels, {meta['mode']}/{scope})")
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
    from ..metrics import evaluate

    reference, image = read_image(args.reference), read_image(args.image)
    if reference.shape != image.shape:
        raise CliError(f"{args.image} is {_shape_text(image)} but {args.reference} is {_shape_text(reference)}; "
                       "compare images of the same size and colour type")
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
                     "bandwidths and the fit settings.")
    p.add_argument("model", metavar="MODEL", help="model file written by 'smoe fit' (model.smoe.npz)")
    _add_json_flag(p)
    p.set_defaults(run=_run_info)


def _run_info(args) -> int:
    from ..modelfile import load_model

    model, meta = load_model(args.model)
    facts = _model_facts(model, meta)
    if args.json:
        print(json.dumps(facts, indent=2))
        return EXIT_OK
    bw = facts["bandwidth_px"]
    rows = [
        ("file", args.model),
        ("kernels", facts["kernels"]),
        ("channels", f"{facts['channels']} ({'RGB' if facts['channels'] == 3 else 'grey'})"),
        ("mode / scope", f"{facts['mode']} / {facts['scope']}"),
        ("fitted on", f"{facts['width']}x{facts['height']} pixels"),
        ("format", f"{meta['format']} version {facts['format_version']}, {facts['dtype']}, "
                   f"written by smoe {facts['smoe_version']}"),
        ("kernels/tile", f"{facts['kernels_per_tile']:.1f} (mean over 16x16 tiles at the fitted size)"),
        ("bandwidth", "n/a (no kernels)" if bw is None else
         f"median sigma {bw['median_sigma']:.2f} px (major axis {bw['median_major']:.2f}, minor "
         f"{bw['median_minor']:.2f}; major axes {bw['min_major']:.2f} to {bw['max_major']:.2f} px)"),
    ]
    for name, value in rows:
        print(f"{name:<13} {value}")
    print("settings" + ("      (none stored)" if not facts["settings"] else ""))
    for key, value in sorted(facts["settings"].items()):
        print(f"  {key:<17} {value}")
    return EXIT_OK


def _model_facts(model: Model, meta: dict) -> dict:
    from ..rasterizer import kernels_per_tile

    h, w = meta["height"], meta["width"]
    return {
        "kernels": len(model), "channels": model.channels, "mode": meta["mode"], "scope": meta["scope"],
        "height": h, "width": w, "format_version": meta["format_version"], "smoe_version": meta["smoe_version"],
        "dtype": str(model.dtype).replace("torch.", ""),
        "kernels_per_tile": kernels_per_tile(model, h, w, mode=meta["mode"]),
        "bandwidth_px": _bandwidth(model), "settings": meta["settings"],
    }


def _bandwidth(model: Model) -> dict | None:
    """Statistics of the kernels' standard deviations along their principal axes, in pixels."""
    import numpy as np
    import torch

    if len(model) == 0:
        return None
    axes = torch.linalg.eigvalsh(model.covariance.double()).clamp(min=0).sqrt().numpy()  # ascending: minor, major
    minor, major = axes[:, 0], axes[:, 1]
    return {"median_sigma": float(np.median(np.sqrt(minor * major))), "median_major": float(np.median(major)),
            "median_minor": float(np.median(minor)), "min_major": float(major.min()),
            "max_major": float(major.max())}
