"""Compare optimizer settings for rasterized SMoE fitting on a few Kodak images.

Each named variant overrides some :class:`smoe.fitting.FitSettings` fields; every
variant fits every image with the same kernel pool, initialization and
iteration budget, and the table reports PSNR at a few checkpoints.  This is
the measurement behind the shipped defaults (README, "Fitting defaults").

    python benchmarks/tune_fit.py --images 23 03 --kernels 10000 --iters 1000 --variants paper fast
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from smoe.fitting import FitSettings, fit
from smoe.imageio import read_image

from _common import RESULTS, header, kodak_images, markdown_table, write_results

PAPER = dict(lr_mu=0.01, lr_mu_final=1e-5, lr_chol=1e-3, lr_pi=1e-3, lr_experts=1e-3)
VARIANTS = {
    "paper": PAPER,
    "chol1e-2": {**PAPER, "lr_chol": 1e-2},
    "chol3e-2": {**PAPER, "lr_chol": 3e-2},
    "chol1e-2-exp3e-3": {**PAPER, "lr_chol": 1e-2, "lr_experts": 3e-3},
    "chol1e-2-exp1e-2": {**PAPER, "lr_chol": 1e-2, "lr_experts": 1e-2},
    "chol1e-2-mu3e-2": {**PAPER, "lr_chol": 1e-2, "lr_mu": 3e-2},
    "chol1e-2-mufinal1e-3": {**PAPER, "lr_chol": 1e-2, "lr_mu_final": 1e-3},
    "chol1e-1": {**PAPER, "lr_chol": 1e-1},
    "chol3e-2-exp3e-3": {**PAPER, "lr_chol": 3e-2, "lr_experts": 3e-3},
    "chol3e-2-mufinal1e-3": {**PAPER, "lr_chol": 3e-2, "lr_mu_final": 1e-3},
    "defaults": {},
}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", nargs="+", default=["23", "03"])
    ap.add_argument("--kernels", type=int, default=10000)
    ap.add_argument("--iters", type=int, default=1000)
    ap.add_argument("--init", default="random")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--out", default=str(RESULTS / "tune_fit"))
    args = ap.parse_args(argv)

    checkpoints = sorted({args.iters // 4, args.iters // 2, args.iters})
    rows = []
    for path in kodak_images(args.images):
        image = read_image(path, mode="rgb")
        for name in args.variants:
            settings = {**FitSettings().__dict__, **VARIANTS[name], "iters": args.iters, "log_every": 10}
            res = fit(image, args.kernels, init=args.init, **settings)
            by_it = {r["iteration"]: r for r in res.history}
            row = {"image": path.stem, "variant": name}
            for c in checkpoints:
                rec = by_it.get(c) or res.history[-1]
                row[f"PSNR@{c}"] = f"{rec['psnr']:.2f}"
            row["seconds"] = f"{res.fit_seconds:.0f}"
            row["ms/it"] = f"{1e3 * res.fit_seconds / res.settings['iterations']:.0f}"
            rows.append(row)
            print(row, file=sys.stderr, flush=True)
    # Mean over images per variant.
    for name in args.variants:
        sub = [r for r in rows if r["variant"] == name]
        mean = {"image": "mean", "variant": name}
        for k in sub[0]:
            if k.startswith("PSNR@"):
                mean[k] = f"{np.mean([float(r[k]) for r in sub]):.2f}"
        mean["seconds"] = f"{np.mean([float(r['seconds']) for r in sub]):.0f}"
        mean["ms/it"] = f"{np.mean([float(r['ms/it']) for r in sub]):.0f}"
        rows.append(mean)
    text = "\n".join([header("Fitting settings comparison (rasterized SMoE)", vars(args)),
                      "Variants: " + "; ".join(f"{n}={VARIANTS[n] or 'shipped defaults'}" for n in args.variants),
                      "", markdown_table(rows), ""])
    print(text)
    write_results(args.out, text, rows)


if __name__ == "__main__":
    main()
