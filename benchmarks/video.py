"""Space-time SMoE on real clips: 3D kernels against per-frame 2D fits, SMoE against RBF, frame interpolation.

Clips from ``../shared/data/video/`` (carphone 176x144, Big Buck Bunny 1280x720).
Each experiment runs in a child process of its own, so its memory peak
(``ru_maxrss``: the clip, the model, the fit and the final render) is its alone:

* ``carphone-2d``: frames 0-31, one 2D R-SMoE fit per frame with the shipped
  defaults (``smoe.fit(frame, 500)``: convergence stop), 32 x 500 = 16 000 kernels;
* ``carphone-3d`` / ``carphone-rbf``: the same frames, one space-time model of
  16 000 kernels (SMoE, RBF), ``time_budget`` = the 2D fits' total seconds
  measured in the same run (``--budget`` fixes it instead);
* ``interp``: frames 0-32; the 3D model is fitted on the 17 even frames
  (8 500 kernels, the same density) and rendered at the odd frames' times
  (halfway between two fitted frames); the baseline blends the two even
  neighbours linearly, and ``flow`` (with scikit-image) warps both halfway
  along their TV-L1 optical flow, a reference for how much of the motion
  between frames is linear;
* ``interp-bbb``: the same on Big Buck Bunny frames 0-32 reduced 4 times
  (320x180, smooth animated motion), 19 000 kernels, 90 s;
* ``bbb-3d`` / ``bbb-rbf`` (and ``bbb-2d`` with ``--bbb-2d``): all 132 frames at
  1280x720, ``--bbb-kernels`` kernels, ``--bbb-budget`` seconds;
* ``raster``: one forward+backward of the carphone 3D model over its 32 frames,
  fused numba kernel against the PyTorch reference on the CPU, and the fused
  kernel for block depths ``tile_t`` in 1, 2, 4, 8.

Quality is measured on the float reconstructions clipped to [0, 1], per frame,
with :mod:`smoe.metrics` (PSNR over all channels, SSIM, LPIPS on every frame
for carphone and on every fourth for Big Buck Bunny).

    python benchmarks/video.py                         # everything (about 45 min)
    python benchmarks/video.py --only carphone-2d carphone-3d raster
    python benchmarks/video.py --quick --out benchmarks/results/video_smoke   # a minute, to try the script

Writes OUT.md, OUT.csv, OUT_psnr.png (PSNR per frame), OUT_interp.png
(an interpolated frame beside the blend), OUT_xt.png (kernels in an x-t
slice) and OUT_bbb.png (a Big Buck Bunny frame).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from _common import RESULTS, ROOT, header, markdown_table, timed, write_results

VIDEO = ROOT.parent / "shared" / "data" / "video"
EXPERIMENTS = ("carphone-2d", "carphone-3d", "carphone-rbf", "interp", "interp-bbb", "bbb-3d", "bbb-rbf", "bbb-2d",
               "raster")


# ================================================================ children
def _read(name: str, frames: tuple[int, int], reduce: int = 1):
    """The clip, its frames reduced ``reduce`` times in each direction by block means."""
    from smoe.video import read_video

    clip = read_video(VIDEO / name, frames)
    if reduce > 1:
        F, H, W, C = clip.frames.shape
        blocks = clip.frames[:, : H // reduce * reduce, : W // reduce * reduce]
        frames = blocks.reshape(F, H // reduce, reduce, W // reduce, reduce, C).mean(axis=(2, 4), dtype=np.float32)
        clip = replace(clip, frames=frames)
    return clip


def _quality(clip: np.ndarray, recon: np.ndarray, lpips_every: int) -> dict:
    from smoe.metrics import lpips, psnr, ssim

    recon = np.clip(recon, 0, 1)
    p = [psnr(c, r) for c, r in zip(clip, recon)]
    s = [ssim(c, r) for c, r in zip(clip, recon)]
    lp = [lpips(clip[f], recon[f]) for f in range(0, len(clip), lpips_every)]
    return {"psnr": float(np.mean(p)), "ssim": float(np.mean(s)), "lpips": float(np.mean(lp)),
            "frame_psnr": [float(v) for v in p]}


def _peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def child_2d(cfg: dict) -> dict:
    import smoe

    clip = _read(cfg["clip"], tuple(cfg["frames"])).frames
    recon = np.empty_like(clip)
    t0 = time.perf_counter()
    kernels = 0
    for f, frame in enumerate(clip):
        if "seconds" in cfg:
            result = smoe.fit(frame, cfg["n"], time_budget=cfg["seconds"] / len(clip))
        else:
            result = smoe.fit(frame, cfg["n"])
        kernels += len(result.model)
        recon[f] = result.fitted.render().reshape(frame.shape)
    seconds = time.perf_counter() - t0
    out = {"seconds": seconds, "kernels": kernels, "frames": len(clip)}
    out.update(_quality(clip, recon, cfg["lpips_every"]))
    if cfg.get("save"):
        np.save(cfg["save"], recon[cfg.get("show", 0)])
    return out


def child_3d(cfg: dict) -> dict:
    import smoe
    from smoe.video import save_video_model

    clip = _read(cfg["clip"], tuple(cfg["frames"]), cfg.get("reduce", 1))
    frames = clip.frames[:: cfg.get("step", 1)]
    t0 = time.perf_counter()
    result = smoe.fit_video(frames, cfg["n"], fps=clip.fps, mode=cfg["mode"], time_budget=cfg["seconds"],
                            **cfg.get("fields", {}))
    seconds = time.perf_counter() - t0
    last = [h for h in result.history if h["window"] == len(result.windows) - 1][-1]
    out = {"seconds": seconds, "fit_seconds": result.seconds, "kernels": len(result.fitted.model),
           "frames": len(frames), "windows": len(result.windows),
           "iterations": sum(1 + max(h["iteration"] for h in result.history if h["window"] == w)
                             for w in range(len(result.windows))),
           "kernels_per_block": round(last["kernels_per_block"], 1)}
    if cfg.get("interp"):
        out.update(_interpolation(clip.frames, result.fitted, cfg))
    else:
        out.update(_quality(frames, result.reconstruction, cfg["lpips_every"]))
        if cfg.get("save"):
            np.save(cfg["save"], result.reconstruction[cfg.get("show", 0)])
    if cfg.get("model"):
        save_video_model(cfg["model"], result.fitted)
    return out


def _interpolation(full: np.ndarray, fitted, cfg: dict) -> dict:
    """Render the odd frames of ``full`` from a model of its even ones; blend the even neighbours for comparison."""
    odd = np.arange(1, len(full) - 1, 2)
    times = (odd + 1) / 2  # frame 2k+1 lies halfway between even-clip frames k and k+1 (centres k+0.5, k+1.5)
    rendered = np.clip(fitted.render(times=times), 0, 1)
    blend = 0.5 * (full[odd - 1] + full[odd + 1])
    out = {**_quality(full[odd], rendered, cfg["lpips_every"]), "odd_frames": len(odd)}
    for name, frames in (("blend", blend), ("flow", _flow_interpolation(full, odd))):
        if frames is not None:
            q = _quality(full[odd], frames, cfg["lpips_every"])
            out.update({f"{name}_{k}": q[k] for k in ("psnr", "ssim", "lpips", "frame_psnr")})
    if cfg.get("save"):
        show = len(odd) // 2
        np.save(cfg["save"], np.stack([full[odd[show]], blend[show], rendered[show]]))
    return out


def _flow_interpolation(full: np.ndarray, odd: np.ndarray) -> np.ndarray | None:
    """Motion-compensated midpoints: TV-L1 optical flow (scikit-image) between the even neighbours, both warped halfway.

    A reference for what linear motion can explain on the clip; None without scikit-image.
    """
    try:
        from skimage.registration import optical_flow_tvl1
        from skimage.transform import warp
    except ImportError:
        return None
    grey = full.mean(axis=-1)
    rows, cols = np.meshgrid(*(np.arange(n, dtype=np.float64) for n in full.shape[1:3]), indexing="ij")
    mids = []
    for o in odd:
        # A point at (r, c) of frame o-1 lies at (r + dr, c + dc) of frame o+1, and halfway between at o.
        dr, dc = optical_flow_tvl1(grey[o - 1], grey[o + 1])
        halves = [np.stack([warp(full[o + s][..., k], np.array([rows + s * dr / 2, cols + s * dc / 2]), mode="edge")
                            for k in range(full.shape[-1])], -1) for s in (-1, 1)]
        mids.append(np.clip(0.5 * (halves[0] + halves[1]), 0, 1))
    return np.stack(mids).astype(full.dtype)


def child_raster(cfg: dict) -> dict:
    import torch

    from smoe.parameters import KernelLeaves
    from smoe.video import load_video_model, rasterize_video

    fitted = load_video_model(cfg["model"])
    F, (H, W) = fitted.frames, fitted.frame
    times = np.arange(F) + 0.5
    target = torch.from_numpy(np.ascontiguousarray(_read(cfg["clip"], tuple(cfg["frames"])).frames))

    def step(backend, tile_t):
        leaves = KernelLeaves(fitted.model)
        out = rasterize_video(leaves.mu, leaves.cholesky(), leaves.pi, leaves.experts, H, W, times,
                              mode=fitted.mode, tile_t=tile_t, backend=backend)
        ((out - target) ** 2).mean().backward()

    out = {"kernels": len(fitted.model), "frames": F,
           "fused": timed(lambda: step("cpu", fitted.tile_t), cfg["repeat"]),
           "reference": timed(lambda: step("torch", fitted.tile_t), 1)}
    for tile_t in (1, 2, 4, 8):
        out[f"fused_t{tile_t}"] = timed(lambda: step("cpu", tile_t), cfg["repeat"])
    return out


CHILDREN = {"2d": child_2d, "3d": child_3d, "raster": child_raster}


def run_child(kind: str, cfg: dict) -> dict:
    """Run one experiment in a fresh interpreter; its JSON result with the child's memory peak."""
    proc = subprocess.run([sys.executable, __file__, "--child", kind, json.dumps(cfg)], stdout=subprocess.PIPE,
                          text=True, cwd=Path(__file__).parent)
    if proc.returncode != 0:
        raise SystemExit(f"experiment {kind} {cfg} failed (exit {proc.returncode})")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ================================================================ the run
def plan(args, tmp: Path) -> dict[str, tuple[str, dict]]:
    q = args.quick
    car = (0, 8 if q else 32)
    n2d = 60 if q else 500
    bbb = (0, 4 if q else 132)
    bbb_n = 2000 if q else args.bbb_kernels
    lp = {"lpips_every": 1}
    return {
        "carphone-2d": ("2d", {"clip": "carphone.mp4", "frames": car, "n": n2d, "save": str(tmp / "c2d.npy"), **lp}),
        "carphone-3d": ("3d", {"clip": "carphone.mp4", "frames": car, "n": n2d * (car[1] - car[0]), "mode": "smoe",
                               "model": str(tmp / "carphone.smoe.npz"), "save": str(tmp / "c3d.npy"), **lp}),
        "carphone-rbf": ("3d", {"clip": "carphone.mp4", "frames": car, "n": n2d * (car[1] - car[0]), "mode": "rbf",
                                **lp}),
        "interp": ("3d", {"clip": "carphone.mp4", "frames": (0, car[1] + 1), "step": 2,
                          "n": n2d * (car[1] // 2 + 1), "mode": "smoe", "interp": True,
                          "fields": {"min_sigma_t": 0.5},
                          "save": str(tmp / "interp.npy"), **lp}),
        "interp-bbb": ("3d", {"clip": "bigbuckbunny.mp4", "frames": (0, car[1] + 1), "step": 2, "reduce": 4,
                              "n": 2000 if q else 19000, "mode": "smoe", "interp": True, "seconds": 10 if q else 90,
                              "fields": {"min_sigma_t": 0.5}, **lp}),
        "bbb-3d": ("3d", {"clip": "bigbuckbunny.mp4", "frames": bbb, "n": bbb_n, "mode": "smoe",
                          "seconds": 20 if q else args.bbb_budget, "lpips_every": 4,
                          "save": str(tmp / "b3d.npy"), "show": bbb[1] // 2}),
        "bbb-rbf": ("3d", {"clip": "bigbuckbunny.mp4", "frames": bbb, "n": bbb_n, "mode": "rbf",
                           "seconds": 20 if q else args.bbb_budget, "lpips_every": 4}),
        "bbb-2d": ("2d", {"clip": "bigbuckbunny.mp4", "frames": bbb, "n": bbb_n // (bbb[1] - bbb[0]),
                          "seconds": 20 if q else args.bbb_budget, "lpips_every": 4}),
        "raster": ("raster", {"clip": "carphone.mp4", "frames": car, "model": str(tmp / "carphone.smoe.npz"),
                              "repeat": 3}),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--only", nargs="+", choices=EXPERIMENTS, default=None)
    p.add_argument("--budget", type=float, default=None,
                   help="seconds for each carphone 3D fit (default: the 2D fits' total, measured first)")
    p.add_argument("--bbb-kernels", type=int, default=60000)
    p.add_argument("--bbb-budget", type=float, default=600.0, help="seconds for each Big Buck Bunny fit")
    p.add_argument("--bbb-2d", action="store_true", help="also fit Big Buck Bunny frame by frame in 2D")
    p.add_argument("--quick", action="store_true", help="tiny sizes, to try the script")
    p.add_argument("--out", default=str(RESULTS / "video"))
    p.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        result = CHILDREN[args.child[0]](json.loads(args.child[1]))
        print(json.dumps({**result, "peak_gb": _peak_gb()}))
        return
    if not VIDEO.is_dir():
        raise SystemExit(f"video clips not found at {VIDEO}")
    wanted = args.only or [e for e in EXPERIMENTS if e != "bbb-2d" or args.bbb_2d]
    if "raster" in wanted and "carphone-3d" not in wanted:
        raise SystemExit("'raster' times the carphone 3D model: run it with 'carphone-3d'")
    with tempfile.TemporaryDirectory() as tmp:
        results = run_all(wanted, plan(args, Path(tmp)), args)
        report(results, args, Path(tmp))


def run_all(wanted: list[str], experiments: dict, args) -> dict[str, dict]:
    results: dict[str, dict] = {}
    budget = args.budget
    for name in EXPERIMENTS:
        if name not in wanted:
            continue
        kind, cfg = experiments[name]
        if name in ("carphone-3d", "carphone-rbf", "interp"):
            if budget is None:
                budget = results["carphone-2d"]["seconds"] if "carphone-2d" in results else 120.0
            cfg["seconds"] = budget * (cfg["n"] / experiments["carphone-3d"][1]["n"])
        print(f"[{time.strftime('%H:%M:%S')}] {name} ...", file=sys.stderr, flush=True)
        results[name] = {**run_child(kind, cfg), "config": cfg}
        r = results[name]
        print(f"    {r.get('psnr', float('nan')):.2f} dB, {r.get('seconds', 0):.1f} s, "
              f"peak {r['peak_gb']:.2f} GB" if "psnr" in r else f"    {r}", file=sys.stderr, flush=True)
    return results


def _row(name: str, r: dict) -> dict:
    return {"experiment": name, "kernels": r["kernels"], "frames": r["frames"], "psnr": round(r["psnr"], 2),
            "ssim": round(r["ssim"], 4), "lpips": round(r["lpips"], 4), "seconds": round(r["seconds"], 1),
            "s_per_frame": round(r["seconds"] / r["frames"], 2), "peak_gb": round(r["peak_gb"], 2),
            "kernels_per_block": r.get("kernels_per_block", ""), "windows": r.get("windows", "")}


def report(results: dict[str, dict], args, tmp: Path) -> None:
    settings = {"budget": args.budget, "bbb_kernels": args.bbb_kernels, "bbb_budget": args.bbb_budget,
                "quick": args.quick}
    text = [header("Space-time SMoE on video", settings)]
    rows = [_row(n, results[n]) for n in ("carphone-2d", "carphone-3d", "carphone-rbf", "bbb-2d", "bbb-3d",
                                          "bbb-rbf") if n in results]
    if rows:
        text += ["### Fits", "", markdown_table(rows), ""]
    text += _gains(results)
    irows = [_interp_row(n, results[n]) for n in ("interp", "interp-bbb") if n in results]
    if irows:
        rows += irows
        text += ["### Frame interpolation (fit the even frames, render the odd ones; interp-bbb: Big Buck Bunny "
                 "frames 0-32 reduced to 320x180)", "", markdown_table(irows), ""]
    if "raster" in results:
        r = results["raster"]
        rrow = {"experiment": "raster", "kernels": r["kernels"], "frames": r["frames"],
                "reference_s": round(r["reference"], 3), "fused_s": round(r["fused"], 3),
                "speedup": round(r["reference"] / r["fused"], 1),
                **{f"fused_tile_t{t}_s": round(r[f"fused_t{t}"], 3) for t in (1, 2, 4, 8)}}
        rows.append(rrow)
        text += ["### Forward + backward, carphone 3D model over its frames (CPU)", "", markdown_table([rrow]), ""]
    write_results(args.out, "\n".join(text), rows)
    figures(results, Path(args.out), tmp)
    print("\n".join(text))


def _interp_row(name: str, r: dict) -> dict:
    row = {"experiment": name, "kernels": r["kernels"], "odd_frames": r["odd_frames"]}
    for metric, digits in (("psnr", 2), ("ssim", 4), ("lpips", 4)):
        row[f"smoe_{metric}"] = round(r[metric], digits)
        row.update({f"{ref}_{metric}": round(r.get(f"{ref}_{metric}", np.nan), digits) for ref in ("blend", "flow")})
        if metric == "psnr":
            row["gain_db"] = round(r["psnr"] - r["blend_psnr"], 2)
    row["seconds"] = round(r["seconds"], 1)
    return row


def _gains(results: dict) -> list[str]:
    lines = []
    pairs = (("carphone-3d", "carphone-2d", "3D SMoE over per-frame 2D, carphone"),
             ("carphone-3d", "carphone-rbf", "3D SMoE over 3D RBF, carphone"),
             ("bbb-3d", "bbb-rbf", "3D SMoE over 3D RBF, Big Buck Bunny"),
             ("bbb-3d", "bbb-2d", "3D SMoE over per-frame 2D, Big Buck Bunny"))
    for a, b, what in pairs:
        if a in results and b in results:
            lines.append(f"- {what}: {results[a]['psnr'] - results[b]['psnr']:+.2f} dB "
                         f"({results[a]['seconds']:.0f} s against {results[b]['seconds']:.0f} s)")
    return lines + [""] if lines else []


def figures(results: dict, out: Path, tmp: Path) -> None:
    from smoe.plots import _png
    from smoe.video import load_video_model
    from smoe.video.plots import draw_xt_slice, plot_frame_psnr

    curves = {label: results[n]["frame_psnr"] for n, label in
              (("carphone-2d", "2D R-SMoE per frame"), ("carphone-3d", "3D SMoE"), ("carphone-rbf", "3D RBF"))
              if n in results}
    if curves:
        plot_frame_psnr(curves, f"{out}_psnr.png", title="carphone, 16 000 kernels in total")
    if (tmp / "carphone.smoe.npz").exists():
        clip = _read("carphone.mp4", tuple(results["carphone-3d"]["config"]["frames"])).frames
        draw_xt_slice(clip, load_video_model(tmp / "carphone.smoe.npz").model, f"{out}_xt.png")
    if (tmp / "interp.npy").exists():
        _strip(np.load(tmp / "interp.npy"), ["original (odd frame)", "linear blend", "3D SMoE at t + 1/2"],
               f"{out}_interp.png", _png)
    if (tmp / "b3d.npy").exists():
        cfg = results["bbb-3d"]["config"]
        original = _read("bigbuckbunny.mp4", (cfg["show"], cfg["show"] + 1)).frames[0]
        _strip(np.stack([original, np.load(tmp / "b3d.npy")]), ["original", "3D SMoE"], f"{out}_bbb.png", _png)


def _strip(images: np.ndarray, titles: list[str], path: str, png) -> None:
    from matplotlib.figure import Figure

    h, w = images.shape[1:3]
    fig = Figure(figsize=(min(16, 4 * len(images)), min(16, 4 * len(images)) * h / w / len(images) + 0.5))
    for ax, image, title in zip(fig.subplots(1, len(images)), images, titles):
        ax.imshow(np.clip(image, 0, 1), interpolation="nearest")
        ax.set_title(title)
        ax.axis("off")
    png(fig, path)


if __name__ == "__main__":
    main()
