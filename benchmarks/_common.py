"""What every benchmark records next to its numbers: machine, versions, settings."""

from __future__ import annotations

import csv
import datetime
import os
import pathlib
import platform
import statistics
import time

import numba
import numpy as np
import torch

import smoe

ROOT = pathlib.Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
KODAK = ROOT.parent / "shared" / "data" / "kodak"


def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def cpu_mhz() -> float | None:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("cpu MHz"):
                return float(line.split(":", 1)[1])
    except (OSError, ValueError):
        pass
    return None


def machine_info() -> dict:
    return {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "cpu_mhz": cpu_mhz(),
        "python": platform.python_version(),
        "smoe": smoe.__version__,
        "torch": torch.__version__,
        "numba": numba.__version__,
        "numpy": np.__version__,
        "torch_threads": torch.get_num_threads(),
        "numba_threads": numba.get_num_threads(),
    }


def header(title: str, settings: dict) -> str:
    info = machine_info()
    lines = [f"## {title}", "", "Machine: " + ", ".join(f"{k}={v}" for k, v in info.items()), "",
             "Settings: " + ", ".join(f"{k}={v}" for k, v in settings.items()), ""]
    return "\n".join(lines)


def markdown_table(rows: list[dict]) -> str:
    cols = list(rows[0])
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    out += ["| " + " | ".join(str(r[c]) for c in cols) + " |" for r in rows]
    return "\n".join(out)


def write_results(out: str, text: str, rows: list[dict]) -> None:
    """Write a benchmark's markdown report to ``out.md`` and its rows to ``out.csv``."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    with open(out + ".md", "w") as f:
        f.write(text)
    with open(out + ".csv", "w", newline="") as f:
        # Sections of one report may have different columns: take them all.
        wr = csv.DictWriter(f, fieldnames=list(dict.fromkeys(k for r in rows for k in r)))
        wr.writeheader()
        wr.writerows(rows)


def timed(fn, repeat: int, warmup: int = 1) -> float:
    """Median wall time of ``fn()`` in seconds after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def kodak_images(names: list[str] | None = None) -> list[pathlib.Path]:
    if not KODAK.is_dir():
        raise SystemExit(f"Kodak images not found at {KODAK}")
    paths = sorted(KODAK.glob("kodim*.png"))
    if names:
        wanted = {n if n.startswith("kodim") else f"kodim{int(n):02d}" for n in names}
        paths = [p for p in paths if p.stem in wanted]
    return paths
