"""Rasterizer speed: fused CPU kernel vs the PyTorch reference (issue: foundation).

On a Kodak image (768x512 RGB) with L random round kernels of 5 px scale
(experts = image value at the centre), time one forward and one forward+backward
pass of rasterized SMoE for both implementations in the same run, and print a
markdown table.  Binning is included in every timing (it runs every iteration
of a fit).

    python benchmarks/rasterizer.py [--kernels 2000 10000 50000] [--mode smoe] [--out FILE]

FLOP accounting (per kernel-pixel evaluation, counted by hand from the fused
loops, fused multiply-add = 2): forward 31 + 2C, backward 51 + 4C, with C the
number of channels (the backward pass recomputes the kernel); the exponential
counts as 20 (range reduction + degree-6 polynomial + scaling).  Peak = cores x MHz x 64 FLOP/cycle (two 512-bit FMA units); the
CPU may run above its nominal MHz, so the share is an estimate.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

import smoe
from smoe.imageio import read_image
from smoe.rasterizer import MODES
from smoe.tiles import TileGrid, bin_kernels

from _common import RESULTS, header, kodak_images, machine_info, markdown_table, timed


def random_model(image: np.ndarray, n: int, seed: int = 0) -> smoe.Model:
    h, w, c = image.shape
    g = np.random.default_rng(seed)
    mu = g.uniform([0, 0], [w, h], size=(n, 2)).astype(np.float32)
    chol = np.tile(np.float32([0.2, 0.0, 0.2]), (n, 1))  # sigma = 5 px
    experts = image[mu[:, 1].astype(int), mu[:, 0].astype(int)]
    return smoe.Model(mu, chol, np.ones(n, np.float32), experts)


def step(model, h, w, backend, mode, backward):
    params = [t.detach().requires_grad_(backward) for t in (model.mu, model.chol, model.pi, model.experts)]
    out = smoe.rasterize(*params, h, w, mode=mode, backend=backend)
    if backward:
        out.sum().backward()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--image", default="kodim23")
    ap.add_argument("--kernels", type=int, nargs="+", default=[2000, 10000, 50000])
    ap.add_argument("--mode", default="smoe", choices=MODES)
    ap.add_argument("--repeat", type=int, default=10, help="timed repetitions of the fused path")
    ap.add_argument("--ref-repeat", type=int, default=2, help="timed repetitions of the reference path")
    ap.add_argument("--out", default=str(RESULTS / "rasterizer.md"))
    args = ap.parse_args(argv)

    image = read_image(kodak_images([args.image])[0], mode="rgb")
    h, w, c = image.shape
    info = machine_info()
    peak = (info["cores"] or 1) * (info["cpu_mhz"] or 0) * 1e6 * 64
    rows = []
    for n in args.kernels:
        model = random_model(image, n)
        kpt = bin_kernels(model.mu, model.chol, model.pi, TileGrid(h, w)).mean_kernels_per_tile()
        evals = kpt * TileGrid(h, w).num_tiles * 256  # pixels of partial tiles count as evaluated
        t = {}
        for backend, rep in (("cpu", args.repeat), ("torch", args.ref_repeat)):
            for bw in (False, True):
                t[backend, bw] = timed(lambda: step(model, h, w, backend, args.mode, bw), rep)
        flops = evals * ((31 + 2 * c) + (51 + 4 * c))
        rows.append({
            "kernels": n,
            "kernels/tile": f"{kpt:.1f}",
            "fused fwd ms": f"{1e3 * t['cpu', False]:.1f}",
            "fused fwd+bwd ms": f"{1e3 * t['cpu', True]:.1f}",
            "torch fwd ms": f"{1e3 * t['torch', False]:.0f}",
            "torch fwd+bwd ms": f"{1e3 * t['torch', True]:.0f}",
            "speed-up fwd+bwd": f"{t['torch', True] / t['cpu', True]:.0f}x",
            "evals/s (fwd+bwd)": f"{2 * evals / t['cpu', True]:.2e}",
            "share of peak": f"{flops / t['cpu', True] / peak:.1%}" if peak else "n/a",
        })
        print(f"done {n} kernels", file=sys.stderr)
    text = "\n".join([
        header(f"Rasterizer, {args.mode}, raster scope, {args.image} {w}x{h} RGB", vars(args)),
        markdown_table(rows), ""])
    print(text)
    if args.out:
        RESULTS.mkdir(parents=True, exist_ok=True)
        with open(args.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
