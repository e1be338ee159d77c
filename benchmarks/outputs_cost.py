"""What a fit's outputs cost next to the fit, at 4K (issue #19: at most 20 % of the fit).

Makes a 3840x2160 image (Kodak kodim05 resized with Pillow's LANCZOS filter), fits
50 000 kernels for 30 iterations with seed 0 (``smoe.fit``, raster scope), then times
each output step once, in the order a fit writes them, in this one process (so the
first figure pays for loading matplotlib, as it does after ``smoe fit``):

* render: the reconstruction, once;
* evaluate: ``smoe.metrics.evaluate`` with LPIPS, the one quality function (above one
  megapixel: PSNR over every pixel, SSIM, MS-SSIM and LPIPS on four fixed 512x512
  crops); its parts are timed again on their own, outside the total: PSNR alone
  (``metrics.psnr``) and ``evaluate`` without LPIPS;
* reconstruction PNG, model file, the two figures (as PNG bytes), history and
  metrics.json;
* end to end: ``smoe.outputs.write_fit_outputs`` into a temporary folder, everything a
  ``smoe fit`` writes (it also times five renders for ``render_ms``).

The ratio is the output steps' total over the fit call's wall time.  The table also
gives the machine, the versions and the peak resident memory of the whole run.  Times
from a machine shared with other jobs are upper bounds; compare ratios from one run.

    python benchmarks/outputs_cost.py
    python benchmarks/outputs_cost.py --size 1920x1080 --kernels 12500     # a quicker look

Writes benchmarks/results/outputs_cost.md and outputs_cost.csv.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import smoe
from smoe import metrics
from smoe.fitting import fit
from smoe.imageio import write_image
from smoe.modelfile import save_model

from _common import KODAK, RESULTS, header, markdown_table, write_results


def test_image(name: str, width: int, height: int) -> np.ndarray:
    """Kodak image ``name`` resized to width x height with LANCZOS, float32 RGB in [0, 1]."""
    path = KODAK / f"{name}.png"
    if not path.exists():
        raise SystemExit(f"Kodak image not found at {path}")
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB").resize((width, height), Image.LANCZOS), dtype=np.float32) / 255


class Stopwatch:
    """Times named steps; keeps each step's result."""

    def __init__(self):
        self.rows: list[dict] = []

    def __call__(self, step: str, fn, *, counted: bool = True):
        start = time.perf_counter()
        result = fn()
        seconds = time.perf_counter() - start
        self.rows.append({"step": step, "seconds": seconds, "counted": counted})
        print(f"{step}: {seconds:.3f} s", file=sys.stderr, flush=True)
        return result

    def total(self) -> float:
        return sum(r["seconds"] for r in self.rows if r["counted"])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--image", default="kodim05")
    ap.add_argument("--size", default="3840x2160", help="WIDTHxHEIGHT")
    ap.add_argument("--kernels", type=int, default=50_000)
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(RESULTS / "outputs_cost"))
    args = ap.parse_args(argv)
    width, height = (int(v) for v in args.size.lower().split("x"))

    image = test_image(args.image, width, height)
    start = time.perf_counter()
    result = fit(image, args.kernels, scope="raster", seed=args.seed, iters=args.iters)
    fit_wall = time.perf_counter() - start
    model, settings = result.model, result.settings
    print(f"fit: {fit_wall:.1f} s ({result.fit_seconds:.1f} s optimising)", file=sys.stderr, flush=True)

    clock = Stopwatch()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        with torch.no_grad():
            recon = clock("render", lambda: smoe.render(model, height, width).numpy())
        quality = clock("evaluate (PSNR, SSIM, MS-SSIM, LPIPS)", lambda: metrics.evaluate(image, recon))
        clock("  part: PSNR alone", lambda: metrics.psnr(image, recon), counted=False)
        clock("  part: evaluate without LPIPS", lambda: metrics.evaluate(image, recon, lpips=False), counted=False)
        clock("reconstruction PNG", lambda: write_image(tmp / "reconstruction.png", recon))
        clock("model file", lambda: save_model(tmp / "model.smoe.npz", model, mode="smoe", scope="raster",
                                               height=height, width=width, settings=settings))
        plots = clock("import matplotlib (smoe.plots)", lambda: __import__("smoe.plots").plots)
        convergence = clock("convergence figure", lambda: plots.plot_convergence(result.history))
        kernels = clock("kernel figure", lambda: plots.draw_kernels(image, model))
        clock("history + metrics.json", lambda: json.dumps({"history": result.history, **quality}))
        sizes = {"reconstruction.png": (tmp / "reconstruction.png").stat().st_size,
                 "model.smoe.npz": (tmp / "model.smoe.npz").stat().st_size,
                 "convergence.png": len(convergence), "kernels.png": len(kernels)}
        steps_total = clock.total()
        from smoe.outputs import write_fit_outputs

        (tmp / "fit").mkdir()
        end_to_end = clock("end to end: outputs.write_fit_outputs", lambda: write_fit_outputs(
            tmp / "fit", tmp / f"{args.image}.png", image, result), counted=False)
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kilobytes

    rows = [{"step": r["step"], "seconds": f"{r['seconds']:.3f}",
             "% of fit": f"{100 * r['seconds'] / fit_wall:.1f}",
             "in total": "yes" if r["counted"] else "no"} for r in clock.rows]
    summary = [{"fit s": f"{fit_wall:.2f}", "of which optimising s": f"{result.fit_seconds:.2f}",
                "outputs s": f"{steps_total:.2f}", "outputs / fit": f"{100 * steps_total / fit_wall:.1f} %",
                "end to end s": f"{clock.rows[-1]['seconds']:.2f}",
                "end to end / fit": f"{100 * clock.rows[-1]['seconds'] / fit_wall:.1f} %",
                "peak RSS MB": f"{peak_rss_mb:.0f}"}]
    crops = quality["crops"]
    rule = (f"SSIM, MS-SSIM and LPIPS on {len(crops)} crops of {crops[0][2]}x{crops[0][3]} px, PSNR on every pixel"
            if crops else "every metric on the whole image")
    text = "\n".join([
        header(f"Output cost of a {width}x{height} fit ({args.kernels} kernels, {args.iters} iterations)",
               vars(args)),
        f"Live kernels after the fit: {len(model)}; final PSNR {result.final_psnr:.2f} dB.", "",
        "### Summary", "", markdown_table(summary), "",
        "### Steps", "", markdown_table(rows), "",
        f"Quality rule: {rule}. Quality: " + ", ".join(
            f"{k} {v:.4f}" for k, v in quality.items() if isinstance(v, float)) + ".",
        f"metrics.json of the end-to-end run: PSNR {end_to_end['psnr']:.4f} dB.",
        "File sizes (bytes): " + ", ".join(f"{k} {v}" for k, v in sizes.items()) + ".", ""])
    print(text)
    write_results(args.out, text, summary + rows)


if __name__ == "__main__":
    main()
