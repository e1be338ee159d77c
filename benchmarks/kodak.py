"""Kodak: R paper Table I, and time to quality of the default fit against the paper's method.

**Table I** (the default): R-SMoE, GaussianImage-style RBF, GSMoE and global
RBF, each fitting every selected image the R paper's way (:data:`PAPER`:
random centres, round 5 px kernels, a fixed pool, a fixed iteration count);
only the regression function (SMoE or RBF) and scope (raster or global)
differ.  Global scope costs pixels x kernels per iteration, so its rows run on
``--global-images`` with ``--global-iters`` (the table says so).

    python benchmarks/kodak.py --images 01 02 03 04 05 23 --pools 2000 10000 --iters 3000

writes benchmarks/results/kodak.md and kodak.csv (one row per image and method,
then the means) and prints, for kodim23 with R-SMoE at the largest pool, the
fitting seconds needed to reach 30 dB and 32 dB.

**Time to quality** (``--time-to-quality``): ``smoe.fit``'s defaults (content
start, growth from a quarter of the pool, bounded kernel extent, convergence
stop) under ``--time-budget`` on ``--images``, and the paper's method with
``--iters`` on ``--baseline-images``, in the same run: per image the seconds
(initialization included) to reach 28, 30, 32 and 33 dB, the PSNR after 15, 30
and 60 s, the speed-up at equal PSNR, and a plot of PSNR against seconds.

    python benchmarks/kodak.py --time-to-quality --pools 10000 --time-budget 55 --iters 2500 \
        --images all --baseline-images 01 02 03 04 05 23 --out benchmarks/results/kodak_speed_pool10000

**Kernels for a target** (``--target-psnr P``): ``smoe fit --target-psnr P``
without ``-n`` (a model grown until it reaches P) on ``--images``, against the
smallest fixed count whose default fit reaches P, found by bisection.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time

from smoe.fitting import fit
from smoe.imageio import read_image
from smoe.metrics import evaluate
from smoe.spec import CLASSIC_RATES, STRATEGIES_OFF, FitSpec

from _common import RESULTS, header, kodak_images, markdown_table, timed, write_results

#: The R paper's fit as smoe ran it before the strategies (#21): random start, fixed pool, fixed steps.
PAPER = {"init": "random", **STRATEGIES_OFF, **CLASSIC_RATES}
LEVELS = (28.0, 30.0, 32.0, 33.0)
CHECKPOINTS = (15.0, 30.0, 60.0)

METHODS = {
    "R-SMoE": ("smoe", "raster"),
    "GaussianImage (raster RBF)": ("rbf", "raster"),
    "GSMoE (global)": ("smoe", "global"),
    "RBF (global)": ("rbf", "global"),
}


def seconds_to_reach(history, psnr, offset=0.0):
    """Seconds (plus ``offset``, the initialization) of the first record at ``psnr`` dB or above; None if never."""
    for rec in history:
        if rec["psnr"] >= psnr:
            return offset + rec["seconds"]
    return None


def psnr_after(history, seconds, offset=0.0):
    """Best PSNR recorded within ``seconds`` (initialization ``offset`` included): a fit that ended sooner has its
    result by then.  None before the first record."""
    return max((r["psnr"] for r in history if offset + r["seconds"] <= seconds), default=None)


def run_one(image, pool, method, iters, seed):
    mode, scope = METHODS[method]
    res = fit(image, pool, mode=mode, scope=scope, seed=seed, iters=iters, log_every=10, **PAPER)
    return res, final_row(image, res)


def final_row(image, res):
    """Kernels per tile, quality and speed figures of a finished fit ``res`` of ``image``."""
    fitted = res.fitted  # knows its mode, scope and tiles
    recon = fitted.render()
    render_s = timed(fitted.render, repeat=5 if fitted.scope == "raster" else 1)
    m = evaluate(image, recon, lpips=True)
    kpt = fitted.kernels_per_tile()
    return {
        "kernels/tile": f"{kpt:.0f}",
        "PSNR": f"{m['psnr']:.2f}",
        "SSIM": f"{m['ssim']:.4f}",
        "LPIPS": f"{m['lpips']:.4f}",
        "iters": res.iterations,
        "fit s": f"{res.fit_seconds:.0f}",
        "render ms": f"{1e3 * render_s:.1f}",
        "FPS": f"{1 / render_s:.0f}",
    }


def _fmt(value, digits):
    return "-" if value is None else f"{value:.{digits}f}"


def speed_row(name, label, image, res):
    """One image's time-to-quality figures for one method."""
    hist, offset = res.history, res.init_seconds
    row = {"image": name, "method": label, "kernels": len(res.model), **final_row(image, res),
           "total s": f"{offset + res.fit_seconds:.1f}", "stop": res.stop_reason}
    row.update({f"s to {db:.0f} dB": _fmt(seconds_to_reach(hist, db, offset), 1) for db in LEVELS})
    row.update({f"dB at {s:.0f} s": _fmt(psnr_after(hist, s, offset), 2) for s in CHECKPOINTS})
    return row


def speedup(new, old):
    """Seconds the paper's method needs for the lower of the two best PSNRs, over the default's seconds."""
    level = min(max(r["psnr"] for r in new.history), max(r["psnr"] for r in old.history))
    t_new = seconds_to_reach(new.history, level, new.init_seconds)
    t_old = seconds_to_reach(old.history, level, old.init_seconds)
    return level, t_old / t_new


def plot_curves(curves, path):
    """PSNR against seconds, one panel per image, both methods on each."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5 * len(curves), 3.8), dpi=110)
    FigureCanvasAgg(fig)
    for i, (name, runs) in enumerate(curves.items()):
        ax = fig.add_subplot(1, len(curves), i + 1)
        for label, res in runs.items():
            ax.plot([res.init_seconds + r["seconds"] for r in res.history], [r["psnr"] for r in res.history],
                    label=label)
        ax.set_xscale("log")
        ax.set_ylim(bottom=max(15.0, min(r["psnr"] for res in runs.values() for r in res.history)))
        ax.set(title=name, xlabel="seconds (2 CPU cores, initialization included)", ylabel="PSNR (dB)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path)


def time_to_quality(args):
    """The default fit against the paper's method on the same images, in one run."""
    pool = max(args.pools)
    baseline = set(p.stem for p in kodak_images(args.baseline_images)) if args.baseline_images else set()
    rows, speedups, curves = [], [], {}
    for path in kodak_images(args.images):
        image = read_image(path, mode="rgb")
        runs = {"default": fit(image, pool, seed=args.seed, time_budget=args.time_budget, log_every=10,
                               tile_size=args.tile_size)}
        if path.stem in baseline:
            runs["paper (random, fixed pool)"] = fit(image, pool, seed=args.seed, iters=args.iters, log_every=10,
                                                     **PAPER)
        for label, res in runs.items():
            rows.append(speed_row(path.stem, label, image, res))
            print(rows[-1], file=sys.stderr, flush=True)
        if len(runs) == 2:
            level, factor = speedup(*runs.values())
            speedups.append({"image": path.stem, "at dB": f"{level:.2f}", "speed-up": f"{factor:.1f}"})
        if path.stem in {f"kodim{int(n):02d}" for n in args.plot_images} and len(runs) == 2:
            curves[path.stem] = runs
    means = []
    for label in dict.fromkeys(r["method"] for r in rows):
        sub = [r for r in rows if r["method"] == label]
        means.append(_mean_row(label, "all", sub))
        on_baseline = [r for r in sub if r["image"] in baseline]
        if 0 < len(on_baseline) < len(sub):  # the default's figures on the images both methods fit
            means.append(_mean_row(label, "baseline images", on_baseline))
    if curves:
        plot_curves(curves, args.out + ".png")
    parts = [header(f"Kodak, time to quality, at most {pool} kernels", vars(args)),
             "Seconds include initialization; 'dB at N s' is the best PSNR recorded by then (a fit that stopped "
             "sooner counts with its result); '-': not reached.", "", "### Means", "", markdown_table(means), ""]
    if speedups:
        mean_factor = statistics.mean(float(r["speed-up"]) for r in speedups)
        parts += ["### Speed-up at equal PSNR", "",
                  "Seconds the paper's method needs to reach the lower of the two methods' best PSNRs, over the "
                  "default's seconds to reach it.", "", markdown_table(speedups), "",
                  f"Mean speed-up: {mean_factor:.1f}x.", ""]
    parts += ["### Per image", "", markdown_table(rows), ""]
    text = "\n".join(parts)
    print(text)
    write_results(args.out, text, rows + means + speedups)


def _mean_row(label, subset, sub):
    mean = {"image": f"mean of {len(sub)} ({subset})", "method": label}
    for key in sub[0]:
        if key in mean or key == "stop":
            continue
        values = [float(r[key]) for r in sub if r[key] != "-"]
        if not values:
            mean[key] = "-"
            continue
        # a figure some fits never reached is the mean of those that did, their count beside it
        mean[key] = f"{statistics.mean(values):.4g}" + ("" if len(values) == len(sub) else f" ({len(values)})")
    return mean


def reaches(image, n_kernels, target, args):
    """The default fit of ``n_kernels``, stopped at ``target`` dB: did it get there?"""
    res = fit(image, n_kernels, seed=args.seed, target_psnr=target, time_budget=args.target_seconds)
    return res.stop_reason == "target_psnr", res


def kernels_for_target(args):
    """``--target-psnr`` without ``-n`` (a grown model) against the smallest fixed count reaching the target.

    The fixed count is bisected on a log scale between a quarter of the grown count and the grown count
    (``--bisect-steps`` halvings), each probe a default fit stopped at the target.
    """
    target, rows = args.target_psnr, []
    for path in kodak_images(args.images):
        image = read_image(path, mode="rgb")
        spec = FitSpec(target_psnr=target, time_budget=args.target_seconds, seed=args.seed).growing(image.shape[:2])
        grown = fit(image, spec=spec)
        row = {"image": path.stem, "grown kernels": len(grown.model), "grown PSNR": f"{grown.final_psnr:.2f}",
               "grown s": f"{grown.init_seconds + grown.fit_seconds:.1f}", "grown stop": grown.stop_reason}
        if grown.stop_reason == "target_psnr":
            lo, hi = max(1, len(grown.model) // 4), len(grown.model)
            ok, _ = reaches(image, hi, target, args)
            while not ok and hi < spec.n_kernels:  # the fixed count may need more than the grown one
                lo, hi = hi, min(spec.n_kernels, 2 * hi)
                ok, _ = reaches(image, hi, target, args)
            for _ in range(args.bisect_steps if ok else 0):
                mid = round(math.sqrt(lo * hi))
                if mid in (lo, hi):
                    break
                if reaches(image, mid, target, args)[0]:
                    hi = mid
                else:
                    lo = mid
            row.update({"smallest fixed count": hi, "ratio": f"{len(grown.model) / hi:.2f}", "bracket": f"{lo}-{hi}"}
                       if ok else {"smallest fixed count": f"none up to {hi}", "ratio": "-", "bracket": "-"})
        rows.append(row)
        print(row, file=sys.stderr, flush=True)
    text = "\n".join([header(f"Kodak, --target-psnr {target:g} without -n against bisected fixed counts", vars(args)),
                      "'ratio': grown kernels over the smallest fixed count found to reach the target; the bracket "
                      "is the last interval (lower end failed, upper end reached).", "", markdown_table(rows), ""])
    print(text)
    write_results(args.out, text, rows)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", nargs="+", default=["01", "02", "03", "04", "05", "23"],
                    help="Kodak numbers, or 'all'")
    ap.add_argument("--time-to-quality", action="store_true",
                    help="the default fit against the paper's method instead of Table I")
    ap.add_argument("--time-budget", type=float, default=55.0, help="seconds of the default fit (time to quality)")
    ap.add_argument("--baseline-images", nargs="*", default=["01", "02", "03", "04", "05", "23"],
                    help="images the paper's method also fits (time to quality)")
    ap.add_argument("--plot-images", nargs="*", default=["01", "23"])
    ap.add_argument("--tile-size", type=int, default=16, help="tile side of the default fit (time to quality)")
    ap.add_argument("--target-psnr", type=float, default=None,
                    help="instead: kernels a grown fit needs for this PSNR against the smallest fixed count")
    ap.add_argument("--target-seconds", type=float, default=180.0, help="time budget of each target fit")
    ap.add_argument("--bisect-steps", type=int, default=4)
    ap.add_argument("--pools", type=int, nargs="+", default=[2000, 10000])
    ap.add_argument("--iters", type=int, default=3000)
    ap.add_argument("--methods", nargs="+", default=["R-SMoE", "GaussianImage (raster RBF)"],
                    choices=list(METHODS))
    ap.add_argument("--global-images", nargs="+", default=["23"])
    ap.add_argument("--global-iters", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(RESULTS / "kodak"))
    args = ap.parse_args(argv)
    if args.images == ["all"]:
        args.images = None
    if args.time_to_quality:
        return time_to_quality(args)
    if args.target_psnr is not None:
        return kernels_for_target(args)

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
