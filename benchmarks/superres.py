"""Super-resolution on Kodak: SMoE and rasterized RBF resampling against bicubic and Lanczos.

Every selected image is reduced by each factor with Pillow's BOX filter
(area averaging: each low-resolution pixel is the mean of a factor x factor
block; Kodak's 768 x 512 divides by 2 and 4), then brought back to full size
by

* ``bicubic``, ``lanczos``: Pillow's ``resize`` on the float channels;
* ``smoe``, ``rbf``: ``smoe.superres.upscale`` with that regression function
  (same budget: one grid kernel per low-resolution pixel, ``--iters`` steps),
  rendered at full size;
* ``smoe-sharp``, ``rbf-sharp``: the same fitted models rendered with every
  bandwidth multiplied by ``--sharpen`` (R paper Section VII-C).

Outputs are clipped to [0, 1] and compared with the original: PSNR on [0, 1]
over all channels, SSIM, LPIPS (AlexNet).  Seconds: the fit plus the render
for the model rows, the resize for the others.

The figure repeats R paper Fig. 13: three 32 x 32 crops of kodim20 (the
propeller plane) magnified 10x by bicubic, RBF and SMoE, without (top) and
with (bottom) sharpening; bicubic's "sharpened" version is Pillow's unsharp
mask.  The models for the figure are fitted on the 64 x 64 neighbourhood of
each crop (density and iterations as above), so edges near the crop border
have context.

    python benchmarks/superres.py                      # 6 images, x2 and x4
    python benchmarks/superres.py --images 23 --factors 4 --iters 30     # a smoke run

Writes benchmarks/results/superres.md, superres.csv and superres_x10.png.
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import time

import numpy as np
import torch
from PIL import Image, ImageFilter

from smoe import superres as sr
from smoe.imageio import atomic_write_bytes, read_image
from smoe.metrics import evaluate
from smoe.rasterizer import render

from _common import KODAK, RESULTS, header, kodak_images, markdown_table, write_results

METHODS = ("bicubic", "lanczos", "smoe", "smoe-sharp", "rbf", "rbf-sharp")
LABELS = {"bicubic": "Bicubic (Pillow)", "lanczos": "Lanczos (Pillow)", "smoe": "R-SMoE",
          "smoe-sharp": "R-SMoE, sharpened", "rbf": "RBF (GaussianImage)", "rbf-sharp": "RBF, sharpened"}
#: (top, left) of the 32 x 32 crops of kodim20 in the figure: spinner and blade, guns at the wing's
#: leading edge, an edge of the wing's stripes.
FIGURE_CROPS = ((184, 150), (312, 470), (376, 560))
FIGURE_SIDE, FIGURE_MARGIN, FIGURE_ZOOM = 32, 16, 10


def resize(image: np.ndarray, height: int, width: int, method) -> np.ndarray:
    """Pillow resize of a float (H, W, C) image, channel by channel in 32-bit float mode."""
    return np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(image[:, :, c]), mode="F")
                                .resize((width, height), method)) for c in range(image.shape[2])], axis=2)


def model_rows(low: np.ndarray, height: int, width: int, args) -> dict[str, tuple[np.ndarray, float]]:
    """Full-size renders (and seconds) of SMoE and RBF fits of ``low``, plain and sharpened."""
    out = {}
    for mode in ("smoe", "rbf"):
        wanted = [m for m in (mode, f"{mode}-sharp") if m in args.methods]
        if not wanted:
            continue
        start = time.perf_counter()
        plain, result = sr.upscale(low, size=(height, width), mode=mode, iters=args.iters,
                                   n_kernels=_kernels(low, args), return_model=True)
        fit_seconds = time.perf_counter() - start
        out[mode] = (plain, fit_seconds)
        start = time.perf_counter()
        with torch.no_grad():
            sharp = render(result.model, height, width, mode=mode, extent=low.shape[:2],
                           sharpen=args.sharpen).numpy()
        # The sharpened row re-renders the same fit: its time is that fit plus its own render.
        out[f"{mode}-sharp"] = (sharp, fit_seconds + time.perf_counter() - start)
    return out


def _kernels(image: np.ndarray, args) -> int:
    h, w = image.shape[:2]
    return max(1, min(h * w, round(args.density * h * w)))


def warm_up() -> None:
    """Load the compiled kernels once, so that the first image's fit is not timed with it."""
    for mode in ("smoe", "rbf"):
        sr.upscale(np.full((16, 16, 3), 0.5, np.float32), 2, mode=mode, iters=2)


def measure(args, paths) -> list[dict]:
    warm_up()
    rows = []
    for path in paths:
        original = read_image(path, mode="rgb")
        h, w = original.shape[:2]
        for factor in args.factors:
            low = resize(original, h // factor, w // factor, Image.BOX)
            results = {}
            for name, method in (("bicubic", Image.BICUBIC), ("lanczos", Image.LANCZOS)):
                if name in args.methods:
                    start = time.perf_counter()
                    results[name] = (resize(low, h, w, method), time.perf_counter() - start)
            results.update(model_rows(low, h, w, args))
            for name in args.methods:
                image, seconds = results[name]
                q = evaluate(original, np.clip(image, 0, 1), lpips=not args.no_lpips)
                rows.append({"factor": factor, "image": path.stem, "method": LABELS[name], "PSNR": q["psnr"],
                             "SSIM": q["ssim"], "LPIPS": q["lpips"] if q["lpips"] is not None else float("nan"),
                             "seconds": seconds})
                print(f"x{factor} {path.stem} {LABELS[name]}: {q['psnr']:.2f} dB, {seconds:.1f} s",
                      file=sys.stderr, flush=True)
    return rows


def means(rows: list[dict], args) -> list[dict]:
    out = []
    for factor in args.factors:
        for name in args.methods:
            sub = [r for r in rows if r["factor"] == factor and r["method"] == LABELS[name]]
            if sub:
                out.append({"factor": factor, "method": LABELS[name], "images": len(sub),
                            **{c: f"{statistics.mean(r[c] for r in sub):.4f}" for c in ("PSNR", "SSIM", "LPIPS")},
                            "seconds": f"{statistics.mean(r['seconds'] for r in sub):.1f}"})
    return out


def figure(path, args) -> None:
    """R Fig. 13 analogue: 10x crops, bicubic / RBF / SMoE, without and with sharpening."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    image = read_image(KODAK / "kodim20.png", mode="rgb")
    columns = []
    for top, left in FIGURE_CROPS:
        t0, l0 = top - FIGURE_MARGIN, left - FIGURE_MARGIN
        patch = image[t0:t0 + FIGURE_SIDE + 2 * FIGURE_MARGIN, l0:l0 + FIGURE_SIDE + 2 * FIGURE_MARGIN]
        columns.extend(_zoomed_panels(patch, args))
    titles = ["Bicubic", "RBF (GaussianImage)", "R-SMoE"] * len(FIGURE_CROPS)
    fig = Figure(figsize=(2.2 * len(titles), 5.0))
    FigureCanvasAgg(fig)
    for col, ((plain, sharp), title) in enumerate(zip(columns, titles)):
        for row, (img, suffix) in enumerate(((plain, ""), (sharp, ", sharpened"))):
            ax = fig.add_subplot(2, len(titles), row * len(titles) + col + 1)
            ax.imshow(np.clip(img, 0, 1), interpolation="nearest")
            ax.set_title(title + suffix, fontsize=7)
            ax.set_axis_off()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=130)
    atomic_write_bytes(path, buf.getvalue())


def _zoomed_panels(patch: np.ndarray, args) -> list[tuple[np.ndarray, np.ndarray]]:
    """(plain, sharpened) 10x views of the patch centre for bicubic, RBF and SMoE."""
    z, m, side = FIGURE_ZOOM, FIGURE_MARGIN, FIGURE_SIDE
    ph, pw = patch.shape[:2]
    centre = (slice(m * z, (m + side) * z), slice(m * z, (m + side) * z))
    bicubic = np.clip(resize(patch, ph * z, pw * z, Image.BICUBIC), 0, 1)
    as8 = Image.fromarray((bicubic * 255 + 0.5).astype(np.uint8))
    unsharp = np.asarray(as8.filter(ImageFilter.UnsharpMask(radius=2 * z, percent=80, threshold=0))) / 255.0
    panels = [(bicubic[centre], unsharp[centre])]
    for mode in ("rbf", "smoe"):
        plain, result = sr.upscale(patch, z, mode=mode, iters=args.iters, n_kernels=_kernels(patch, args),
                                   return_model=True)
        with torch.no_grad():
            sharp = render(result.model, ph * z, pw * z, mode=mode, extent=(ph, pw), sharpen=args.sharpen).numpy()
        panels.append((plain[centre], sharp[centre]))
    return panels


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", nargs="+", default=["01", "03", "05", "13", "20", "23"], help="Kodak numbers")
    ap.add_argument("--factors", type=int, nargs="+", default=[2, 4], help="reduction factors")
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--iters", type=int, default=sr.DEFAULT_ITERS, help="gradient steps per fit")
    ap.add_argument("--density", type=float, default=sr.DEFAULT_DENSITY,
                    help="initial kernels per low-resolution pixel (at most 1)")
    ap.add_argument("--sharpen", type=float, default=0.9, help="bandwidth factor of the sharpened rows")
    ap.add_argument("--no-lpips", action="store_true", help="skip LPIPS")
    ap.add_argument("--no-figure", action="store_true", help="skip the 10x figure")
    ap.add_argument("--out", default=str(RESULTS / "superres"))
    args = ap.parse_args(argv)
    paths = kodak_images(args.images)
    if not paths:
        raise SystemExit(f"no Kodak images match {args.images}")
    rows = measure(args, paths)
    settings = {**vars(args), "init": sr.DEFAULT_INIT, "downscaling": "Pillow BOX (area mean)"}
    per_image = [{k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in r.items()} for r in rows]
    text = "\n".join([header("Super-resolution on Kodak (BOX-reduced, upscaled back)", settings), "",
                      "### Means", "", markdown_table(means(rows, args)), "",
                      "### Per image", "", markdown_table(per_image), ""])
    print(text)
    write_results(args.out, text, per_image)
    if not args.no_figure:
        figure(args.out + "_x10.png", args)


if __name__ == "__main__":
    main()
