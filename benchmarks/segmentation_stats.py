"""MDBSCAN segment statistics on Kodak images, next to the AS paper's Fig. 4.

The AS paper reports, for grey images of about 0.4 megapixels, a median segment
bounding box of 20–40 px for thresholds d_Th 20–50, and 1 666 segments over
four images (about 420 per image) in its Table I experiment.  This script
segments Kodak images in grey (ITU-R BT.601 luma, as Pillow's "L" mode) and in
RGB and prints a markdown table of the segment count and the median and mean
bounding-box side ``max(width, height)`` per threshold, plus the range over
thresholds of the median run time of one ``mdbscan`` call (after numba
compilation).

Usage::

    python benchmarks/segmentation_stats.py [--kodak DIR] [--images kodim01 kodim03 ...] [--all]
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import numba
import numpy as np
import scipy
from PIL import Image

from smoe.labels import segment_stats
from smoe.segment import mdbscan

THRESHOLDS = (20, 30, 40, 50)
DEFAULT_IMAGES = ("kodim01", "kodim03", "kodim05", "kodim07", "kodim15", "kodim23")
DEFAULT_KODAK = "/work/shared/data/kodak"


def load(path: Path, mode: str) -> np.ndarray:
    """Kodak PNG as float in [0, 1]: (H, W) for ``mode="grey"``, (H, W, 3) for ``"rgb"``."""
    img = Image.open(path)
    img = img.convert("L") if mode == "grey" else img.convert("RGB")
    return np.asarray(img, dtype=np.float64) / 255.0


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def timed_segment(img: np.ndarray, threshold: float, repeats: int) -> tuple[np.ndarray, float]:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        labels = mdbscan(img, threshold)
        times.append(time.perf_counter() - t0)
    return labels, float(np.median(times))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kodak", default=DEFAULT_KODAK, help="folder with kodimNN.png")
    ap.add_argument("--images", nargs="+", default=list(DEFAULT_IMAGES))
    ap.add_argument("--all", action="store_true", help="all 24 Kodak images")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per call (median reported)")
    args = ap.parse_args(argv)
    names = [f"kodim{i:02d}" for i in range(1, 25)] if args.all else args.images

    mdbscan(np.zeros((8, 8)), 40.0)  # compile (or load the numba cache) outside the timings

    print(f"numpy {np.__version__}, scipy {scipy.__version__}, numba {numba.__version__}, "
          f"Python {platform.python_version()}; {cpu_name()}, {os.cpu_count()} logical CPUs; "
          f"mdbscan defaults sigma=1, min_size=50, cleanup_size=30\n")
    head = " | ".join(f"d_Th {t}: count / median / mean side" for t in THRESHOLDS)
    print(f"| image | mode | {head} | time per call (ms) |")
    print("|---|---|" + "---|" * len(THRESHOLDS) + "---|")
    summary = {(m, t): [] for m in ("grey", "rgb") for t in THRESHOLDS}
    for mode in ("grey", "rgb"):
        for name in names:
            img = load(Path(args.kodak) / f"{name}.png", mode)
            cells, times = [], []
            for t in THRESHOLDS:
                labels, dt = timed_segment(img, t, args.repeats)
                s = segment_stats(labels)
                summary[mode, t].append((s["count"], s["median_side"], s["mean_side"]))
                cells.append(f"{s['count']} / {s['median_side']:.0f} / {s['mean_side']:.0f}")
                times.append(dt * 1e3)
            print(f"| {name} | {mode} | " + " | ".join(cells) + f" | {min(times):.0f}–{max(times):.0f} |")
    for mode in ("grey", "rgb"):
        cells = []
        for t in THRESHOLDS:
            counts, medians, means = np.array(summary[mode, t]).T
            cells.append(f"{np.mean(counts):.0f} / {np.median(medians):.0f} / {np.mean(means):.0f}")
        print(f"| **all {len(names)}** (mean count / median of medians / mean of means) | {mode} | "
              + " | ".join(cells) + " | |")
    print("\nAS paper (Fig. 4, grey Barbara/Flower/Parrot/Peppers): median side 20–40 px for d_Th 20–50; "
          "Table I: 1 666 segments over four images (≈ 420 per image).")


if __name__ == "__main__":
    main()
