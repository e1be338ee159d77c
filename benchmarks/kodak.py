"""Reproduce R paper Table I on Kodak: R-SMoE, GaussianImage-style RBF, GSMoE, global RBF.

Every method fits every selected image with the same kernel pool, random
initialization (R paper: uniform centres, round 5 px kernels), optimizer
settings and iteration budget; only the regression function (SMoE or RBF) and
scope (raster or global) differ.  Global scope costs pixels x kernels per
iteration, so its rows run on ``--global-images`` with ``--global-iters``
(the table says so).

    python benchmarks/kodak.py --images 01 02 03 04 05 23 --pools 2000 10000 --iters 3000

Writes benchmarks/results/kodak.md and kodak.csv (one row per image and method,
then the means) and prints, for kodim23 with R-SMoE at the largest pool, the
fitting seconds needed to reach 30 dB and 32 dB.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

import smoe
from smoe.fitting import fit
from smoe.imageio import read_image
from smoe.metrics import evaluate

from _common import RESULTS, header, kodak_images, markdown_table, timed, write_results

METHODS = {
    "R-SMoE": ("smoe", "raster"),
    "GaussianImage (raster RBF)": ("rbf", "raster"),
    "GSMoE (global)": ("smoe", "global"),
    "RBF (global)": ("rbf", "global"),
}


def seconds_to_reach(history, psnr):
    for rec in history:
        if rec["psnr"] >= psnr:
            return rec["seconds"]
    return None


def run_one(image, pool, method, iters, seed):
    mode, scope = METHODS[method]
    res = fit(image, pool, mode=mode, scope=scope, init="random", seed=seed, iters=iters, log_every=10)
    h, w, _ = image.shape
    model = res.model
    with torch.no_grad():
        recon = smoe.render(model, h, w, mode=mode, scope=scope)
        render_s = timed(lambda: smoe.render(model, h, w, mode=mode, scope=scope), repeat=5 if scope == "raster" else 1)
    m = evaluate(image, recon.numpy(), lpips=True)
    kpt = smoe.kernels_per_tile(model, h, w, mode=mode) if scope == "raster" else float(len(model))
    return res, {
        "kernels/tile": f"{kpt:.0f}",
        "PSNR": f"{m['psnr']:.2f}",
        "SSIM": f"{m['ssim']:.4f}",
        "LPIPS": f"{m['lpips']:.4f}",
        "iters": res.settings["iterations"],
        "fit s": f"{res.fit_seconds:.0f}",
        "render ms": f"{1e3 * render_s:.1f}",
        "FPS": f"{1 / render_s:.0f}",
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", nargs="+", default=["01", "02", "03", "04", "05", "23"])
    ap.add_argument("--pools", type=int, nargs="+", default=[2000, 10000])
    ap.add_argument("--iters", type=int, default=3000)
    ap.add_argument("--methods", nargs="+", default=["R-SMoE", "GaussianImage (raster RBF)"],
                    choices=list(METHODS))
    ap.add_argument("--global-images", nargs="+", default=["23"])
    ap.add_argument("--global-iters", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(RESULTS / "kodak"))
    args = ap.parse_args(argv)

    rows, reach = [], {}
    for pool in args.pools:
        for method in args.methods:
            is_global = METHODS[method][1] == "global"
            names = args.global_images if is_global else args.images
            iters = args.global_iters if is_global else args.iters
            for path in kodak_images(names):
                image = read_image(path, mode="rgb")
                t = time.perf_counter()
                res, row = run_one(image, pool, method, iters, args.seed)
                rows.append({"pool": pool, "method": method, "image": path.stem, **row})
                print(rows[-1], f"({time.perf_counter() - t:.0f} s)", file=sys.stderr, flush=True)
                if path.stem == "kodim23" and method == "R-SMoE" and pool == max(args.pools):
                    reach = {db: seconds_to_reach(res.history, db) for db in (30.0, 32.0)}

    means = []
    for pool in args.pools:
        for method in args.methods:
            sub = [r for r in rows if r["pool"] == pool and r["method"] == method]
            if not sub:
                continue
            mean = {"pool": pool, "method": method, "image": f"mean of {len(sub)}"}
            for k in sub[0]:
                if k not in mean:
                    mean[k] = f"{statistics.mean(float(r[k]) for r in sub):.4g}"
            means.append(mean)

    reach_text = ", ".join(f"{db:.0f} dB after {s:.0f} s" if s is not None else f"{db:.0f} dB not reached"
                           for db, s in reach.items())
    text = "\n".join([
        header("Kodak, R paper Table I analogue", vars(args)),
        f"Global-scope rows: images {args.global_images}, {args.global_iters} iterations.", "",
        "### Means", "", markdown_table(means), "",
        f"kodim23, R-SMoE, pool {max(args.pools)}: {reach_text or 'n/a'} of fitting.", "",
        "### Per image", "", markdown_table(rows), ""])
    print(text)
    write_results(args.out, text, rows + means)


if __name__ == "__main__":
    main()
