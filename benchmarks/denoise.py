"""R paper Tables III-IV analogue: MM-RSMoE denoising against BM3D on Kodak.

Noise: white Gaussian noise of variance sigma^2 on the [0, 1] scale
(sigma^2 = 0.0037, 0.005, 0.01, 0.05, i.e. sigma = 15.5, 18.0, 25.5, 57.0 on
0-255), drawn with ``numpy.random.default_rng(seed + 100 * image number +
variance index)`` and clipped to [0, 1] (``smoe.noise.add_noise``), so
every method sees the same noisy image and reruns see the same noise.
Clipping makes the noise slightly non-Gaussian near black and white; BM3D is
still told the nominal sigma.

Methods (``--methods``; the default is the quick set that compares the paper's
headline rows, ``--methods all`` runs the whole table):

* ``noisy``: the noisy input.
* ``bm3d``: ``bm3d.bm3d_rgb(noisy, sigma_psd=sigma)`` (CBM3D) for RGB,
  ``bm3d.bm3d`` for grey (PyPI package ``bm3d``, single CPU thread).
* ``bm3d-grey``: grey ``bm3d.bm3d`` run on each RGB channel on its own, the
  weaker baseline a per-channel protocol gives (CBM3D groups blocks by
  brightness and filters in an opponent colour space).  Not in ``all``: it
  is there to place the R paper's BM3D figures, which sit far below CBM3D's.
* ``seg10-H`` / ``seg20-H``: MM-RSMoE with H models, segmentation-based
  initialization with MDBSCAN d_Th 10 / 20 and ``--area-power`` (default
  ``smoe.denoising.DEFAULT_AREA_POWER``; 1 spreads the kernels evenly over the
  segments), ``smoe.denoising`` defaults otherwise; H in 1, 8, 16, 64.
  The colour of every SMoE and RBF row comes from ``--chroma-models``
  half-resolution models (default ``smoe.denoising.DEFAULT_CHROMA_MODELS``;
  0 gives the paper's joint RGB fit).
* ``random-8``: MM-RSMoE, 8 models, random initialization (the paper's plain
  MM-RSMoE).
* ``rbf-8``, ``rbf-seg20-8``: the multi-model GaussianImage comparison
  (rasterized RBF), random / segmentation initialization.

Outputs are clipped to [0, 1] before they are measured, as a saved image
would be.  PSNR on [0, 1] over all channels, SSIM, LPIPS (AlexNet); seconds
are wall time of the whole method (MDBSCAN, all fits and renders, with
``--workers`` processes for the SMoE rows; BM3D runs in this process).  The
last table gives, per image, the ratio of the MM-RSMoE-seg-20 (8 models) time
to the BM3D time.

    python benchmarks/denoise.py                                   # 6 images, sigma^2 = 0.01, quick set
    python benchmarks/denoise.py --methods all --images 23 --variances 0.0037 0.005 0.01 0.05
    python benchmarks/denoise.py --images 23 --crop 256 --iters 100   # a smoke run

Writes benchmarks/results/denoise.md, denoise.csv and denoise_crops.png.
"""

from __future__ import annotations

import argparse
import math
import re
import statistics
import sys
import time

import numpy as np

from smoe import denoising as dn
from smoe.executor import available_cores, make_executor
from smoe.imageio import read_image
from smoe.metrics import evaluate
from smoe.noise import add_noise

from _common import RESULTS, header, kodak_images, markdown_table, write_results
from scaling import load_note

VARIANCES = (0.0037, 0.005, 0.01, 0.05)
QUICK = ("noisy", "bm3d", "seg20-8")
ALL = ("noisy", "bm3d", "seg20-1", "seg20-8", "seg20-16", "seg10-8", "random-8", "rbf-8", "rbf-seg20-8")
HEADLINE = "seg20-8"
BASELINES = {"noisy": "Noisy", "bm3d": "BM3D", "bm3d-grey": "BM3D (grey, per channel)"}  # name: row label
# seg<D>-<H>, random-<H>, rbf-<H> (random init), rbf-seg<D>-<H>
_SMOE = re.compile(r"(?:(?P<rbf>rbf-)|(?=seg|random))(?:seg(?P<threshold>\d+)-|random-)?(?P<models>\d+)")


def method_label(name: str) -> str:
    """Row label in the paper's naming."""
    m = _SMOE.fullmatch(name)
    if m is None:
        return BASELINES[name]
    base = "MM-RBF (GaussianImage)" if m["rbf"] else "MM-RSMoE"
    init = f"-seg-{m['threshold']}" if m["threshold"] else " (random init)"
    return f"{base}{init}, {m['models']} model{'s' if m['models'] != '1' else ''}"


def check_methods(names: list[str]) -> list[str]:
    if names == ["all"]:
        return list(ALL)
    for name in names:
        if name not in BASELINES and _SMOE.fullmatch(name) is None:
            raise SystemExit(f"unknown method {name!r}; use noisy, bm3d, bm3d-grey, seg<D>-<H>, random-<H>, "
                             f"rbf-<H>, rbf-seg<D>-<H> or all")
    return names


def run_bm3d(noisy: np.ndarray, sigma: float, *, per_channel: bool = False) -> np.ndarray:
    import bm3d

    if noisy.ndim == 3 and per_channel:
        return np.stack([bm3d.bm3d(noisy[..., k], sigma_psd=sigma) for k in range(noisy.shape[2])], axis=-1)
    if noisy.ndim == 3:
        return bm3d.bm3d_rgb(noisy, sigma_psd=sigma)
    return bm3d.bm3d(noisy, sigma_psd=sigma)


def run_method(name: str, noisy: np.ndarray, sigma: float, args, executor) -> np.ndarray:
    if name == "noisy":
        return noisy
    if name.startswith("bm3d"):
        return run_bm3d(noisy, sigma, per_channel=name == "bm3d-grey")
    m = _SMOE.fullmatch(name)
    init = "segment" if m["threshold"] else "random"
    return dn.denoise(noisy, int(m["models"]), init=init, threshold=float(m["threshold"] or dn.DEFAULT_THRESHOLD),
                      area_power=args.area_power, chroma_models=args.chroma_models,
                      mode="rbf" if m["rbf"] else "smoe", iters=args.iters,
                      n_kernels=args.kernels, sigma=sigma if args.tell_sigma else None, seed=args.seed,
                      executor=executor,
                      **({} if m["rbf"] else pruning(args)))


def pruning(args) -> dict:
    """Fit settings for L1 gate pruning, when asked for (``--lam``); the defaults prune nothing."""
    return {} if args.lam == 0 else {"lam": args.lam, "lr_pi": args.lr_pi, "prune_every": 50}


def centre_crop(image: np.ndarray, side: int | None) -> np.ndarray:
    if not side:
        return image
    h, w = image.shape[:2]
    top, left = max(0, (h - side) // 2), max(0, (w - side) // 2)
    return image[top:top + side, left:left + side]


def image_number(stem: str) -> int:
    return int(stem.replace("kodim", ""))


def summarise(rows: list[dict], methods: list[str], variances) -> list[dict]:
    means = []
    for var in variances:
        for name in methods:
            sub = [r for r in rows if r["variance"] == var and r["key"] == name]
            if not sub:
                continue
            mean = {"variance": var, "method": method_label(name), "images": len(sub)}
            for col in ("PSNR", "SSIM", "LPIPS", "seconds"):
                mean[col] = f"{statistics.mean(r[col] for r in sub):.4f}" if col != "seconds" else \
                    f"{statistics.mean(r[col] for r in sub):.1f}"
            means.append(mean)
    return means


def time_ratios(rows: list[dict], variances) -> list[dict]:
    out = []
    for var in variances:
        for r in rows:
            if r["variance"] == var and r["key"] == HEADLINE:
                ref = next((b for b in rows if b["variance"] == var and b["key"] == "bm3d"
                            and b["image"] == r["image"]), None)
                if ref is not None:
                    out.append({"variance": var, "image": r["image"], f"{method_label(HEADLINE)} s":
                                f"{r['seconds']:.1f}", "BM3D s": f"{ref['seconds']:.1f}",
                                "ratio": f"{r['seconds'] / ref['seconds']:.2f}"})
    return out


def crop_figure(path, panels: list[tuple[str, np.ndarray]], box: tuple[int, int, int]) -> None:
    """One row of zoomed crops, each titled with its label."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from smoe.imageio import atomic_write_bytes

    top, left, side = box
    fig = Figure(figsize=(3 * len(panels), 3.4))
    FigureCanvasAgg(fig)
    for i, (title, image) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        crop = np.clip(image[top:top + side, left:left + side], 0, 1)
        ax.imshow(crop, cmap="gray" if crop.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(title, fontsize=9)
        ax.set_axis_off()
    fig.tight_layout()
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    atomic_write_bytes(path, buf.getvalue())


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", nargs="+", default=["01", "03", "05", "13", "19", "23"],
                    help="Kodak image numbers")
    ap.add_argument("--variances", type=float, nargs="+", default=[0.01], help=f"noise variances, e.g. {VARIANCES}")
    ap.add_argument("--methods", nargs="+", default=list(QUICK), help=f"rows; 'all' = {' '.join(ALL)}")
    ap.add_argument("--with-64", action="store_true", help="add the 64-model MM-RSMoE-seg-20 row (slow)")
    ap.add_argument("--iters", type=int, default=dn.DEFAULT_ITERS, help="gradient steps per model")
    ap.add_argument("--kernels", type=int, default=None, help="initial kernels per model (default: smoe's)")
    ap.add_argument("--area-power", type=float, default=dn.DEFAULT_AREA_POWER,
                    help="segment init: kernels per segment grow like area ** P (1: even density)")
    ap.add_argument("--chroma-models", type=int, default=dn.DEFAULT_CHROMA_MODELS,
                    help="RGB: half-resolution models that give the colour; 0 = the paper's joint fit")
    ap.add_argument("--lam", type=float, default=0.0,
                    help="L1 gate weight of the SMoE (not RBF) fits; > 0 prunes kernels every 50 steps (default: off)")
    ap.add_argument("--lr-pi", type=float, default=0.01, help="gate step when --lam > 0")
    ap.add_argument("--tell-sigma", action="store_true",
                    help="pass the true sigma to smoe (else it is estimated; it sets the kernel count and the colour "
                         "models' stop)")
    ap.add_argument("--workers", type=int, default=available_cores(), help="parallel fits (default: all cores)")
    ap.add_argument("--crop", type=int, default=None, help="use a centred SIDE x SIDE crop of every image")
    ap.add_argument("--no-lpips", action="store_true", help="skip LPIPS")
    ap.add_argument("--seed", type=int, default=0, help="noise and initialization seed")
    ap.add_argument("--figure-image", default=None, help="image for the crop figure (default: the first)")
    ap.add_argument("--out", default=str(RESULTS / "denoise"))
    args = ap.parse_args(argv)
    methods = check_methods(args.methods) + (["seg20-64"] if args.with_64 else [])
    paths = kodak_images(args.images)
    if not paths:
        raise SystemExit(f"no Kodak images match {args.images}")
    figure_stem = f"kodim{int(args.figure_image):02d}" if args.figure_image else paths[0].stem
    note = load_note()
    start = time.perf_counter()
    executor = make_executor(args.workers)
    warm_up(executor)
    note += (f" SMoE fits ran on {executor.describe()}, started and warmed up once in "
             f"{time.perf_counter() - start:.1f} s (not counted in the rows).")
    try:
        rows, panels = measure(args, methods, paths, figure_stem, executor)
    finally:
        executor.close()
    report(args, methods, rows, panels, note)


def warm_up(executor) -> None:
    """Start every worker and load the compiled kernels there, so the first image is not slower."""
    tiny = add_noise(np.full((32, 32, 3), 0.5, np.float32), 0.01)
    dn.denoise(tiny, 2 * executor.workers, n_kernels=8, iters=2, executor=executor)


def measure(args, methods, paths, figure_stem, executor):
    """Rows of metrics and the crop-figure panels."""
    rows, panels = [], None
    for var_index, var in enumerate(args.variances):
        sigma = math.sqrt(var)
        for path in paths:
            clean = centre_crop(read_image(path, mode="rgb"), args.crop)
            noisy = add_noise(clean, var, seed=args.seed + 100 * image_number(path.stem) + var_index)
            outputs = {}
            for name in methods:
                start = time.perf_counter()
                out = np.clip(run_method(name, noisy, sigma, args, executor), 0.0, 1.0)
                seconds = time.perf_counter() - start
                q = evaluate(clean, out, lpips=not args.no_lpips)
                rows.append({"variance": var, "image": path.stem, "key": name, "method": method_label(name),
                             "PSNR": q["psnr"], "SSIM": q["ssim"], "LPIPS": q["lpips"] if q["lpips"] is not None
                             else float("nan"), "seconds": seconds})
                outputs[name] = out
                print(f"sigma^2={var} {path.stem} {method_label(name)}: {q['psnr']:.2f} dB, {seconds:.1f} s",
                      file=sys.stderr, flush=True)
            if path.stem == figure_stem and panels is None and "bm3d" in outputs:
                smoe_key = next((k for k in methods if k.startswith("seg")), None)
                panels = [("original", clean), (f"noisy ({var})", noisy), ("BM3D", outputs["bm3d"])]
                if smoe_key:
                    panels.append((method_label(smoe_key), outputs[smoe_key]))
    return rows, panels


def report(args, methods, rows, panels, note) -> None:
    """Print the tables and write the markdown, CSV and crop figure."""
    means = summarise(rows, methods, args.variances)
    ratios = time_ratios(rows, args.variances)
    settings = {**vars(args), "methods": methods, "smoe_density": dn.DEFAULT_DENSITY,
                "smoe_settings": dn.DEFAULT_SETTINGS, "threshold_default": dn.DEFAULT_THRESHOLD,
                "stop_corr": dn.STOP_CORR, "stop_factor": dn.STOP_FACTOR, "chroma_density": dn.CHROMA_DENSITY,
                "chroma_iters": dn.CHROMA_ITERS}
    per_image = [{k: (f"{v:.4f}" if isinstance(v, float) and k != "variance" else v) for k, v in r.items()
                  if k != "key"} for r in rows]
    text = "\n".join([
        header("Denoising, R paper Tables III-IV analogue (Kodak)", settings), note, "",
        "Noise: Gaussian, variance on [0, 1], fixed seeds, clipped to [0, 1]; outputs clipped before measuring.",
        "", "### Means", "", markdown_table(means), "",
        f"### Time of {method_label(HEADLINE)} relative to BM3D", "",
        markdown_table(ratios) if ratios else f"(needs the bm3d and {HEADLINE} rows)", "",
        "### Per image", "", markdown_table(per_image), ""])
    print(text)
    write_results(args.out, text, per_image)
    if panels is not None:
        crop_figure(args.out + "_crops.png", panels, _figure_box(panels[0][1]))


def _figure_box(image: np.ndarray) -> tuple[int, int, int]:
    """A centred square of at most 128 px: small enough that the noise is visible."""
    h, w = image.shape[:2]
    side = min(128, h, w)
    return (h - side) // 2, (w - side) // 2, side


if __name__ == "__main__":
    main()
