"""AS paper Tables III, IV and V and Fig. 9c/10 analogues on Kodak: Grid, K-Means, S-SMoE and AS-SMoE starts.

For every selected image, in grey and/or RGB:

1. **Initial quality (Table V).**  AS-SMoE (``adaptive``) runs first and chooses
   its own kernel count L_AS from its target PSNR.  Grid, K-Means and S-SMoE
   (``segment``) are then given that same budget.  Each initial model is
   rendered as it is, with no global fitting, and scored (PSNR, SSIM) next to
   its kernel count and initialization wall time.
2. **Kernels for equal quality (Table IV).**  The AS-SMoE start is fitted for
   ``--iters`` iterations; Grid starts of L_AS times each ``--grid-factors``
   kernels are fitted for the same iterations with the same optimizer
   (rasterized SMoE, :func:`smoe.fitting.fit` defaults).  The Grid kernel count
   that would reach AS-SMoE's final PSNR is interpolated linearly in
   (log kernel count, PSNR) between the two Grid fits that bracket it
   (extrapolated from the nearest two when none do; the table says so), and
   the saving is ``1 - L_AS / L_Grid``.
3. **Time to 95 % (Fig. 9c).**  Best PSNR = the highest PSNR seen by the
   AS-SMoE fit or the Grid fit at the same kernel count (factor 1); target =
   0.95 x best (in dB, as the paper).  The time to reach it counts the
   initialization: the curve starts at (init seconds, initial PSNR), then
   each logged iteration adds its fitting seconds; crossings are interpolated
   linearly between logged points.  Ratio = AS / Grid.
4. **AS-SMoE initialization time** with ``--workers`` (default 1: in this
   process, the batched local fits spread over every core by numba's
   threads), split into segmentation, batched local fits and export; on every
   image the initialization is repeated with each of ``--sweep-workers``
   worker processes (Fig. 10).  The runs in steps 1-3 use ``--workers``: a
   single image's local fits take about a second in-process, less than
   starting worker processes costs.
5. **Quality after sparsified fitting (Table III).**  For each of
   ``--table3-thresholds`` (d_Th; none to skip), AS-SMoE and S-SMoE segment
   at that threshold; every method starts from AS-SMoE's kernel count there
   and is fitted for ``--iters`` iterations with the L1 gate penalty
   ``--table3-lam`` and gate step ``--table3-lr-pi``, pruning kernels whose
   gate reaches zero.  Reported: the surviving kernels L_opt, PSNR, SSIM and
   LPIPS.  The gate step is ten times the fitting default because with the
   default the penalty barely prunes within 300 iterations.

K-Means is fitted too (same kernel count) on the figure image, or on all
images with ``--kmeans-fit all``, for the convergence plot.

    python benchmarks/initialization.py --images 01 02 03 04 05 23 --color grey rgb --iters 300

Writes benchmarks/results/initialization.md and .csv (one row per image and
colour, then the means per colour) and, for the figure image (``--plot-image``,
kodim23), per colour: ``segmentation_<colour>.png`` (MDBSCAN boundaries),
``initial_<colour>.png`` (every initialization rendered before fitting, side by
side) and ``convergence_<colour>.png`` (PSNR against seconds, initialization
included, and against iterations, for Grid, K-Means and AS-SMoE) in
benchmarks/results/initialization/ (the ``--out`` path without suffix).
"""

from __future__ import annotations

import argparse
import io
import math
import pathlib
import shlex
import statistics
import sys
import time

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from smoe.fitting import as_image, fit
from smoe.atomic import atomic_write_bytes
from smoe.imageio import read_image, write_image
from smoe.initializers import initialize
from smoe.initializers.adaptive import adaptive_init_with_report
from smoe.metrics import evaluate
from smoe.rasterizer import render
from smoe.labels import draw_segmentation
from smoe.segment import mdbscan
from smoe.spec import CLASSIC_RATES, STRATEGIES_OFF

from _common import RESULTS, header, kodak_images, markdown_table, write_results

INITS = ("grid", "kmeans", "segment", "adaptive")
LABELS = {"grid": "Grid", "kmeans": "K-Means", "segment": "S-SMoE", "adaptive": "AS-SMoE"}
COLOURS = {"grid": "tab:olive", "kmeans": "tab:green", "segment": "tab:blue", "adaptive": "tab:red"}
#: The paper's Fig. 9 target: this fraction of the best PSNR (in dB).
REACH_FRACTION = 0.95


# ----------------------------------------------------------------------------- measuring


def load(path: pathlib.Path, colour: str, crop: tuple[int, int] | None) -> np.ndarray:
    """Kodak image as float32 (H, W, C), C = 1 (grey, BT.601 luma) or 3; optionally centre-cropped."""
    img = as_image(read_image(path, mode=colour))
    if crop is not None:
        h, w = img.shape[:2]
        ch, cw = min(crop[0], h), min(crop[1], w)
        top, left = (h - ch) // 2, (w - cw) // 2
        img = np.ascontiguousarray(img[top:top + ch, left:left + cw])
    return img


def score(image: np.ndarray, model) -> tuple[float, float, np.ndarray]:
    """PSNR and SSIM of a model rendered on the image's raster, and the render."""
    h, w, _ = image.shape
    out = render(model, h, w).detach().numpy()
    q = evaluate(image, out, lpips=False)
    return q["psnr"], q["ssim"], out


def curve(res, init_seconds: float, init_psnr: float) -> list[tuple[int, float, float]]:
    """(iteration, seconds since the initialization started, PSNR) of a fit, starting at the initial model."""
    pts = [(0, init_seconds, init_psnr)]
    pts += [(rec["iteration"], init_seconds + rec["seconds"], rec["psnr"]) for rec in res.history]
    return pts


def seconds_to_reach(points, target: float) -> float | None:
    """First time a curve of (iteration, seconds, PSNR) reaches ``target``, linear between logged points."""
    prev = None
    for _, s, p in points:
        if p >= target:
            if prev is None or prev[1] >= target:
                return s
            s0, p0 = prev
            return s0 + (s - s0) * (target - p0) / (p - p0)
        prev = (s, p)
    return None


def equal_psnr_kernels(counts, psnrs, target: float) -> tuple[float | None, str]:
    """Kernel count at which PSNR, piecewise linear in log(count), reaches ``target``.

    Returns (count, how) with how "interpolated" or "extrapolated" (from the two
    nearest points when no pair brackets the target), or (None, reason).
    """
    pts = sorted(zip(counts, psnrs))
    if len(pts) < 2:
        return None, "needs two grid factors"
    x = [math.log(c) for c, _ in pts]
    y = [p for _, p in pts]
    for i in range(len(pts) - 1):
        if min(y[i], y[i + 1]) <= target <= max(y[i], y[i + 1]) and y[i] != y[i + 1]:
            return math.exp(x[i] + (x[i + 1] - x[i]) * (target - y[i]) / (y[i + 1] - y[i])), "interpolated"
    i = len(pts) - 2 if target > max(y) else 0
    slope = (y[i + 1] - y[i]) / (x[i + 1] - x[i])
    if slope <= 0:
        return None, "grid PSNR does not grow with kernels"
    return math.exp(x[i] + (target - y[i]) / slope), "extrapolated"


def timed_init(name: str, image: np.ndarray, n: int, seed: int, **options):
    t = time.perf_counter()
    model = initialize(name, image, n, seed=seed, **options)
    return model, time.perf_counter() - t


def run_fit(image, model, args, **overrides):
    """Fit ``model`` with the benchmark's settings; ``overrides`` replace any of them.

    The fit is the one the AS paper's tables were measured with: fixed pool, fixed steps, the rates of then.
    """
    settings = {"iters": args.iters, "log_every": args.log_every, "lam": args.lam, "seed": args.seed,
                **STRATEGIES_OFF, **CLASSIC_RATES} | overrides
    return fit(image, len(model), init=model, **settings)


def as_options(args) -> dict:
    opts = {"threshold": args.threshold, "seed": args.seed}
    if args.target_psnr is not None:
        opts["target_psnr"] = args.target_psnr
    if args.max_kernels is not None:
        opts["max_kernels"] = args.max_kernels
    return opts


def measure(path, colour, args, plot: bool) -> tuple[dict, dict]:
    """All measurements for one image and colour; returns the CSV row and what the figures need."""
    image = load(path, colour, args.crop)
    h, w, c = image.shape
    t = time.perf_counter()
    model_as, rep = adaptive_init_with_report(image, None, workers=args.workers, **as_options(args))
    t_as = time.perf_counter() - t
    L = len(model_as)
    log(f"{path.stem} {colour}: AS-SMoE init {L} kernels from {rep.segments} segments / {rep.blocks} blocks "
        f"in {t_as:.1f} s")

    inits = {"adaptive": (model_as, t_as)}
    inits["grid"] = timed_init("grid", image, L, args.seed)
    inits["kmeans"] = timed_init("kmeans", image, L, args.seed)
    if not args.no_segment:
        inits["segment"] = timed_init("segment", image, L, args.seed, threshold=args.threshold)
    init_scores = {name: score(image, m) for name, (m, _) in inits.items()}

    row = {"image": path.stem, "colour": colour, "size": f"{w}x{h}", "L_AS": L,
           "AS segments": rep.segments, "AS blocks": rep.blocks,
           "AS init s": round(t_as, 2), "AS segmentation s": round(rep.seconds_segmentation, 2),
           "AS local fit s": round(rep.seconds_local_fit, 2), "AS export s": round(rep.seconds_export, 2)}
    for name in INITS:
        if name in inits:
            model, secs = inits[name]
            p, s, _ = init_scores[name]
            row |= {f"{name} L_init": len(model), f"{name} init PSNR": round(p, 2), f"{name} init SSIM": round(s, 4),
                    f"{name} init s": round(secs, 2)}
        else:
            row |= {f"{name} L_init": None, f"{name} init PSNR": None, f"{name} init SSIM": None,
                    f"{name} init s": None}

    # Global fits: AS-SMoE, Grid at every factor, K-Means where asked.
    fits = {}
    t = time.perf_counter()
    fits["adaptive"] = run_fit(image, model_as, args)
    curves = {"adaptive": curve(fits["adaptive"], t_as, init_scores["adaptive"][0])}
    grid_points = []
    for f in args.grid_factors:
        if f == 1:
            g, g_s = inits["grid"]
            g_psnr = init_scores["grid"][0]
        else:
            g, g_s = timed_init("grid", image, max(1, round(f * L)), args.seed)
            g_psnr = score(image, g)[0]
        res = run_fit(image, g, args)
        grid_points.append((f, len(g), len(res.model), res.final_psnr, res.fit_seconds))
        if f == 1:
            fits["grid"], curves["grid"] = res, curve(res, g_s, g_psnr)
    if "grid" not in fits:  # the factors left out 1: fit the Table V grid start for the time comparison
        g, g_s = inits["grid"]
        fits["grid"] = run_fit(image, g, args)
        curves["grid"] = curve(fits["grid"], g_s, init_scores["grid"][0])
    if args.kmeans_fit == "all" or plot:
        km, km_s = inits["kmeans"]
        fits["kmeans"] = run_fit(image, km, args)
        curves["kmeans"] = curve(fits["kmeans"], km_s, init_scores["kmeans"][0])
    log(f"{path.stem} {colour}: fits done in {time.perf_counter() - t:.0f} s")

    # Table IV: grid kernels at AS-SMoE's final PSNR.
    L_as_final, as_final = len(fits["adaptive"].model), fits["adaptive"].final_psnr
    L_eq, how = equal_psnr_kernels([p[2] for p in grid_points], [p[3] for p in grid_points], as_final)
    row |= {"AS L_final": L_as_final, "AS final PSNR": round(as_final, 2),
            "AS fit s": round(fits["adaptive"].fit_seconds, 1)}
    row["grid fits (factor: L_final / PSNR / fit s)"] = "; ".join(
        f"{f:g}: {lf} / {p:.2f} / {s:.1f}" for f, _, lf, p, s in grid_points)
    row |= {"grid L at AS PSNR": None if L_eq is None else round(L_eq), "grid L how": how,
            "kernel saving vs grid": None if L_eq is None else round(1.0 - L_as_final / L_eq, 3)}

    # Fig. 9c: time to 95 % of the best PSNR of the two runs at L_AS kernels, initialization included.
    best = max(p for name in ("adaptive", "grid") for _, _, p in curves[name])
    target = REACH_FRACTION * best
    reach = {name: seconds_to_reach(pts, target) for name, pts in curves.items()}
    total = {name: pts[-1][1] for name, pts in curves.items()}
    row |= {"best PSNR": round(best, 2), "target PSNR": round(target, 2),
            "AS s to target": _round(reach["adaptive"], 2), "grid s to target": _round(reach["grid"], 2),
            "kmeans s to target": _round(reach.get("kmeans"), 2),
            "AS total s": round(total["adaptive"], 1), "grid total s": round(total["grid"], 1)}
    row["time ratio AS/grid"], row["time ratio note"] = _ratio(reach["adaptive"], reach["grid"], total)
    figure = {"image": image, "inits": inits, "scores": init_scores, "curves": curves, "target": target,
              "reach": reach}
    return row, figure


def sparsified_fits(image, stem, colour, args, known_as) -> list[dict]:
    """Table III analogue: every method from AS-SMoE's kernel count, fitted with L1 sparsification, per d_Th.

    ``known_as`` is the AS-SMoE start already made at ``args.threshold``, reused there.
    """
    h, w, _ = image.shape
    rows = []
    for thr in args.table3_thresholds:
        model_as = known_as if thr == args.threshold else adaptive_init_with_report(
            image, None, workers=args.workers, **(as_options(args) | {"threshold": thr}))[0]
        L = len(model_as)
        starts = {"grid": initialize("grid", image, L, seed=args.seed),
                  "kmeans": initialize("kmeans", image, L, seed=args.seed),
                  "segment": initialize("segment", image, L, seed=args.seed, threshold=thr),
                  "adaptive": model_as}
        row = {"section": "Table III", "image": stem, "colour": colour, "d_Th": thr}
        for name, start in starts.items():
            res = run_fit(image, start, args, log_every=args.iters, lam=args.table3_lam, lr_pi=args.table3_lr_pi)
            q = evaluate(image, render(res.model, h, w).detach().numpy())
            row |= {f"{name} L_init": len(start), f"{name} L_opt": len(res.model),
                    f"{name} PSNR": round(q["psnr"], 2), f"{name} SSIM": round(q["ssim"], 4),
                    f"{name} LPIPS": round(q["lpips"], 4), f"{name} fit s": round(res.fit_seconds, 1)}
        rows.append(row)
        log(f"{stem} {colour}: Table III at d_Th {thr:g} done (L_init {L})")
    return rows


def _round(v, digits):
    return None if v is None else round(v, digits)


def _ratio(t_as, t_grid, total) -> tuple[float | None, str]:
    """AS / Grid time to the target; a bound when a run never reached it."""
    if t_as is not None and t_grid is not None:
        return round(t_as / t_grid, 3), ""
    if t_as is not None:
        return round(t_as / total["grid"], 3), "upper bound: grid never reached the target"
    if t_grid is not None:
        return round(total["adaptive"] / t_grid, 3), "lower bound: AS never reached the target"
    return None, "neither reached the target"


def worker_sweep(path, colour, args, counts) -> list[dict]:
    """AS-SMoE initialization wall time per worker count (Fig. 10 analogue)."""
    image = load(path, colour, args.crop)
    rows = []
    for n in counts:
        t = time.perf_counter()
        model, rep = adaptive_init_with_report(image, None, workers=n, **as_options(args))
        secs = time.perf_counter() - t
        rows.append({"image": path.stem, "colour": colour, "workers": n, "kernels": len(model),
                     "init s": f"{secs:.1f}", "segmentation s": f"{rep.seconds_segmentation:.1f}",
                     "local fit s": f"{rep.seconds_local_fit:.1f}", "export s": f"{rep.seconds_export:.1f}"})
        log(f"{path.stem} {colour}: AS-SMoE init with {n} worker(s) {secs:.1f} s")
    return rows


def warm_up(args) -> None:
    """Compile (or load from numba's cache) every kernel in this process, outside the timings."""
    rng = np.random.default_rng(0)
    for c in (1, 3):
        img = rng.random((48, 48, c)).astype(np.float32)
        for name in ("grid", "kmeans", "segment"):
            fit(img, 16, init=name, iters=2, log_every=1)
        adaptive_init_with_report(img, None, workers=1, threshold=args.threshold)
        mdbscan(img, args.threshold)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- figures


def save_figure(fig: Figure, path: pathlib.Path, dpi: int = 100) -> None:
    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    atomic_write_bytes(path, buffer.getvalue())


def _show(ax, img: np.ndarray, title: str) -> None:
    img = np.clip(img, 0.0, 1.0)
    if img.ndim == 3 and img.shape[2] == 1:
        ax.imshow(img[:, :, 0], cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    else:
        ax.imshow(img, interpolation="nearest")
    ax.set_title(title, fontsize=10)
    ax.set_axis_off()


def draw_figures(stem: str, colour: str, fig_data: dict, args, folder: pathlib.Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    image = fig_data["image"]
    labels = mdbscan(image, args.threshold)
    seg = draw_segmentation(image, labels)
    write_image(folder / f"segmentation_{colour}.png", seg)

    # Every initialization, rendered before any fitting, beside the image and its segmentation.
    h, w, _ = image.shape
    panels = [(image, f"{stem} ({colour})"), (seg, f"MDBSCAN, d_Th {args.threshold:g}: {labels.max()} segments")]
    for name in INITS:
        if name in fig_data["inits"]:
            model, secs = fig_data["inits"][name]
            p, s, out = fig_data["scores"][name]
            panels.append((out, f"{LABELS[name]}: {len(model)} kernels, {p:.2f} dB, SSIM {s:.3f}, {secs:.1f} s"))
    cols = 3
    rows = math.ceil(len(panels) / cols)
    side = 5.0
    fig = Figure(figsize=(cols * side, rows * side * h / w + 0.4 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.ravel():
        ax.set_axis_off()
    for ax, (img, title) in zip(axes.ravel(), panels):
        _show(ax, img, title)
    fig.suptitle("Initial models, no global fitting (Grid, K-Means, S-SMoE given AS-SMoE's kernel count)")
    save_figure(fig, folder / f"initial_{colour}.png")

    # Convergence: PSNR against wall time (initialization included) and against iterations.
    fig = Figure(figsize=(12, 4.8), layout="constrained")
    ax_t, ax_i = fig.subplots(1, 2)
    for name in ("grid", "kmeans", "adaptive"):
        pts = fig_data["curves"].get(name)
        if pts is None:
            continue
        it, secs, ps = (np.array(v) for v in zip(*pts))
        n_kernels = len(fig_data["inits"][name][0])
        label = f"{LABELS[name]} ({n_kernels} kernels)"
        ax_t.plot(secs, ps, color=COLOURS[name], lw=1.5, label=label)
        ax_t.plot([0, secs[0]], [ps[0], ps[0]], color=COLOURS[name], lw=3, alpha=0.4, solid_capstyle="butt")
        ax_t.plot(secs[:1], ps[:1], "o", color=COLOURS[name], ms=5)
        ax_i.plot(it, ps, color=COLOURS[name], lw=1.5, label=label)
        t_reach = fig_data["reach"].get(name)
        if t_reach is not None:
            ax_t.plot([t_reach], [fig_data["target"]], "v", color=COLOURS[name], ms=9, mec="black")
    for ax in (ax_t, ax_i):
        ax.axhline(fig_data["target"], color="grey", ls="--", lw=1)
        ax.set_ylabel("PSNR (dB)")
        ax.grid(True, alpha=0.3)
        ax.legend(loc="lower right", fontsize=9)
    ax_t.set_xlabel("seconds (initialization, thick segment up to the dot, then fitting)")
    ax_i.set_xlabel("fitting iteration (0 = initial model)")
    fig.suptitle(f"{stem} ({colour}): convergence; dashed line and triangles: {REACH_FRACTION:.0%} of the best PSNR")
    save_figure(fig, folder / f"convergence_{colour}.png")


# ----------------------------------------------------------------------------- report


def fmt(v, digits=2) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def table_v(rows) -> list[dict]:
    out = []
    for r in rows:
        d = {"image": r["image"], "colour": r["colour"]}
        for name in INITS:
            if r[f"{name} L_init"] is None:
                continue
            d[f"{LABELS[name]} L"] = r[f"{name} L_init"]
            d[f"{LABELS[name]} dB"] = fmt(r[f"{name} init PSNR"])
            d[f"{LABELS[name]} SSIM"] = fmt(r[f"{name} init SSIM"], 3)
            d[f"{LABELS[name]} s"] = fmt(r[f"{name} init s"], 1)
        out.append(d)
    return out


def table_iv(rows) -> list[dict]:
    return [{"image": r["image"], "colour": r["colour"], "AS L_final": r["AS L_final"],
             "AS PSNR": fmt(r["AS final PSNR"]),
             "Grid fits (factor: L / PSNR / fit s)": r["grid fits (factor: L_final / PSNR / fit s)"],
             "Grid L at AS PSNR": fmt(r["grid L at AS PSNR"]), "how": r["grid L how"],
             "saving vs Grid": _percent(r["kernel saving vs grid"])}
            for r in rows]


def _percent(v) -> str:
    return "n/a" if v is None else f"{100 * v:.0f} %"


def table_9c(rows) -> list[dict]:
    out = []
    for r in rows:
        ratio = fmt(r["time ratio AS/grid"], 2)
        if r["time ratio note"].startswith("upper"):
            ratio = "< " + ratio
        elif r["time ratio note"].startswith("lower"):
            ratio = "> " + ratio
        out.append({"image": r["image"], "colour": r["colour"], "best dB": fmt(r["best PSNR"]),
                    "target dB": fmt(r["target PSNR"]), "AS init s": fmt(r["AS init s"], 1),
                    "AS s to target": fmt(r["AS s to target"], 1), "Grid s to target": fmt(r["grid s to target"], 1),
                    "K-Means s to target": fmt(r["kmeans s to target"], 1), "AS / Grid": ratio})
    return out


def table_as_time(rows) -> list[dict]:
    return [{"image": r["image"], "colour": r["colour"], "size": r["size"], "segments": r["AS segments"],
             "blocks": r["AS blocks"], "kernels": r["L_AS"], "segmentation s": fmt(r["AS segmentation s"], 1),
             "local fits s": fmt(r["AS local fit s"], 1), "export s": fmt(r["AS export s"], 1),
             "total s": fmt(r["AS init s"], 1)} for r in rows]


#: Table III cells per method: (CSV key suffix, column suffix, digits).
_TABLE_III_CELLS = (("L_opt", "L_opt", 0), ("PSNR", "dB", 2), ("SSIM", "SSIM", 3), ("LPIPS", "LPIPS", 3))


def _table_iii_cells(value) -> dict:
    """Every method's Table III columns; ``value(name, key)`` gives one number."""
    return {f"{LABELS[name]} {col}": fmt(value(name, key), digits)
            for name in INITS for key, col, digits in _TABLE_III_CELLS}


def table_iii(rows) -> list[dict]:
    return [{"image": r["image"], "colour": r["colour"], "d_Th": fmt(r["d_Th"], 0), "L_init": r["adaptive L_init"]}
            | _table_iii_cells(lambda name, key, r=r: r[f"{name} {key}"]) for r in rows]


def table_iii_means(rows) -> list[dict]:
    """Per colour and d_Th: the mean of every method's L_opt, PSNR, SSIM and LPIPS, and AS-SMoE's wins."""
    out = []
    for key in dict.fromkeys((r["colour"], r["d_Th"]) for r in rows):
        sub = [r for r in rows if (r["colour"], r["d_Th"]) == key]
        d = {"colour": key[0], "d_Th": fmt(key[1], 0), "images": len(sub)}
        d |= _table_iii_cells(lambda name, k: _mean([r[f"{name} {k}"] for r in sub]))
        wins = sum(1 for r in sub if r["adaptive PSNR"] > max(r[f"{n} PSNR"] for n in INITS if n != "adaptive"))
        d["AS-SMoE best dB"] = f"{wins} of {len(sub)}"
        out.append(d)
    return out


def _mean(values):
    vals = [v for v in values if v is not None]
    return statistics.mean(vals) if vals else None


def _ratio_mean(sub) -> tuple[float | None, str]:
    """Mean AS / Grid time ratio; an upper bound (Grid never reached the target) counts at its value,
    which overstates AS's time, and a lower bound is left out."""
    counted = [r["time ratio AS/grid"] for r in sub if not r["time ratio note"].startswith(("lower", "neither"))]
    bounds = sum(1 for r in sub if r["time ratio note"].startswith("upper"))
    left = len(sub) - len(counted)
    notes = ([f"{bounds} upper bound(s) at their value"] if bounds else []) + ([f"{left} left out"] if left else [])
    return _mean(counted), "; ".join(notes)


def means(rows, colours, sweep) -> tuple[list[dict], list[dict]]:
    """Per colour: a markdown summary row and a CSV row (the CSV row has the per-image columns)."""
    md, csv_rows = [], []
    for colour in colours:
        sub = [r for r in rows if r["colour"] == colour]
        if not sub:
            continue
        wins = sum(1 for r in sub if r["adaptive init PSNR"] > max(r["grid init PSNR"], r["kmeans init PSNR"]))
        d = {"colour": colour, "images": len(sub), "mean L_AS": fmt(_mean([r["L_AS"] for r in sub]), 0)}
        for name in INITS:
            d[f"{LABELS[name]} init dB"] = fmt(_mean([r[f"{name} init PSNR"] for r in sub]))
        d["AS > Grid and K-Means at start"] = f"{wins} of {len(sub)}"
        d["kernel saving vs Grid"] = _percent(_mean([r["kernel saving vs grid"] for r in sub]))
        ratio, note = _ratio_mean(sub)
        d["time ratio AS / Grid"] = fmt(ratio) + (f" ({note})" if note else "")
        d["AS init s (max)"] = fmt(max(r["AS init s"] for r in sub), 1)
        for n in sorted({w["workers"] for w in sweep}):
            times = [float(w["init s"]) for w in sweep if w["colour"] == colour and w["workers"] == n]
            d[f"AS init s, {n} worker{'s' if n > 1 else ''} (max)"] = fmt(max(times), 1)
        md.append(d)
        c = {k: None for k in sub[0]}
        c |= {"image": f"mean of {len(sub)}", "colour": colour}
        for k, v in sub[0].items():
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in ("image", "colour"):
                m = ratio if k == "time ratio AS/grid" else _mean([r[k] for r in sub])
                c[k] = None if m is None else round(m, 3)
        csv_rows.append(c)
    return md, csv_rows


def parse_crop(text: str) -> tuple[int, int]:
    parts = text.lower().split("x")
    try:
        h, w = (int(parts[0]), int(parts[0])) if len(parts) == 1 else (int(parts[0]), int(parts[1]))
    except ValueError:
        raise argparse.ArgumentTypeError(f"crop must be N or HxW pixels, got {text!r}") from None
    if h < 32 or w < 32:
        raise argparse.ArgumentTypeError(f"crop must be at least 32x32 pixels, got {text!r}")
    return h, w


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", nargs="+", default=["01", "02", "03", "04", "05", "23"])
    ap.add_argument("--color", "--colour", dest="color", nargs="+", default=["grey", "rgb"], choices=["grey", "rgb"])
    ap.add_argument("--iters", type=int, default=300, help="global fitting iterations of every run")
    ap.add_argument("--grid-factors", type=float, nargs="+", default=[1.0, 1.5, 2.0, 3.0],
                    help="Grid kernel counts for Table IV, as multiples of AS-SMoE's count")
    ap.add_argument("--threshold", type=float, default=40.0, help="MDBSCAN d_Th for AS-SMoE and S-SMoE")
    ap.add_argument("--target-psnr", type=float, default=None,
                    help="AS-SMoE local target PSNR (default: the initializer's)")
    ap.add_argument("--max-kernels", type=int, default=None,
                    help="AS-SMoE local kernel cap per block (default: the initializer's)")
    ap.add_argument("--workers", type=int, default=1,
                    help="AS-SMoE local fits: 1 = in this process, multi-threaded; N > 1 = N worker processes")
    ap.add_argument("--sweep-workers", type=int, nargs="*", default=[1, 2],
                    help="worker counts the AS-SMoE initialization is timed with on every image (Fig. 10); none "
                         "to skip")
    ap.add_argument("--lam", type=float, default=0.0, help="L1 weight on the gates during global fitting")
    ap.add_argument("--table3-thresholds", type=float, nargs="*", default=[40.0, 50.0],
                    help="d_Th values of the sparsified fits (Table III); none to skip")
    ap.add_argument("--table3-lam", type=float, default=1e-5, help="L1 gate weight of the Table III fits")
    ap.add_argument("--table3-lr-pi", type=float, default=0.01, help="gate step of the Table III fits")
    ap.add_argument("--log-every", type=int, default=5, help="iterations between logged PSNR points")
    ap.add_argument("--kmeans-fit", choices=["plot", "all"], default="plot",
                    help="fit K-Means starts on the figure image only, or on every image")
    ap.add_argument("--no-segment", action="store_true", help="leave out S-SMoE")
    ap.add_argument("--plot-image", default="23",
                    help="image for the figures and the K-Means fit (one of --images)")
    ap.add_argument("--no-plots", action="store_true")
    ap.add_argument("--crop", type=parse_crop, default=None, help="centre crop N or HxW (quick checks only)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(RESULTS / "initialization"),
                    help="writes OUT.md, OUT.csv and the figures in the folder OUT/")
    args = ap.parse_args(argv)
    if args.iters < 1 or args.log_every < 1 or args.workers < 1:
        ap.error("--iters, --log-every and --workers must be at least 1")
    if any(f <= 0 for f in args.grid_factors):
        ap.error("--grid-factors must be positive")
    if not (args.table3_lam >= 0 and args.table3_lr_pi > 0):
        ap.error("--table3-lam must be >= 0 and --table3-lr-pi > 0")
    args.grid_factors = sorted(set(args.grid_factors))
    paths = kodak_images(args.images)
    if not paths:
        ap.error(f"no Kodak image matches {args.images}")
    plot_stem = f"kodim{int(args.plot_image):02d}" if args.plot_image.isdigit() else args.plot_image
    if plot_stem not in {p.stem for p in paths}:
        log(f"--plot-image {args.plot_image} is not among --images: no figures or K-Means fit")
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    command = shlex.join(["python", *sys.argv]) if argv is None else shlex.join(["main", *argv])

    t_start = time.perf_counter()
    warm_up(args)
    rows, sweep, sparse = [], [], []
    for colour in args.color:
        for path in paths:
            plot = path.stem == plot_stem
            row, fig_data = measure(path, colour, args, plot)
            rows.append(row)
            if plot and not args.no_plots:
                draw_figures(path.stem, colour, fig_data, args, out)
            if args.sweep_workers:
                sweep += worker_sweep(path, colour, args, args.sweep_workers)
            sparse += sparsified_fits(fig_data["image"], path.stem, colour, args, fig_data["inits"]["adaptive"][0])
            log(f"{path.stem} {colour}: done, {time.perf_counter() - t_start:.0f} s so far")

    mean_md, mean_csv = means(rows, args.color, sweep)
    lines = [
        header("Initialization comparison, AS paper Tables III, IV and V and Fig. 9c/10 analogues", vars(args)),
        f"Command: `{command}`", "",
        f"Total wall time {time.perf_counter() - t_start:.0f} s.", "",
        "### Means", "", markdown_table(mean_md), "",
        "### Initial models before any fitting (Table V analogue)", "",
        "Grid, K-Means and S-SMoE get AS-SMoE's kernel count (Grid rounds to a whole lattice).", "",
        markdown_table(table_v(rows)), "",
        f"### Kernels for AS-SMoE's PSNR after {args.iters} iterations (Table IV analogue)", "",
        "Grid kernel count at AS-SMoE's final PSNR, linear in (log kernels, PSNR) between Grid fits.", "",
        markdown_table(table_iv(rows)), "",
        f"### Time to {REACH_FRACTION:.0%} of the best PSNR, initialization included (Fig. 9c analogue)", "",
        "Best = highest PSNR of the AS-SMoE and Grid runs at AS-SMoE's kernel count.", "",
        markdown_table(table_9c(rows)), "",
        f"### AS-SMoE initialization time, {args.workers} worker(s)", "",
        markdown_table(table_as_time(rows)), ""]
    if sweep:
        lines += ["### AS-SMoE initialization time against worker processes (Fig. 10 analogue)", "",
                  markdown_table(sweep), ""]
    if sparse:
        lines += ["### Quality after fitting with sparsification (Table III analogue)", "",
                  f"Every method starts from AS-SMoE's kernel count L_init at that d_Th and is fitted for "
                  f"{args.iters} iterations with lam = {args.table3_lam:g} and gate step {args.table3_lr_pi:g}; "
                  "L_opt = kernels left after pruning (Grid starts from a whole lattice, so its L_init may "
                  "differ).", "",
                  markdown_table(table_iii_means(sparse)), "", markdown_table(table_iii(sparse)), ""]
    text = "\n".join(lines)
    print(text)
    write_results(str(out), text, rows + mean_csv + sparse)


if __name__ == "__main__":
    main()
