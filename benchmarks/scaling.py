"""Scale-out: fit-batch throughput with 1 and 2 workers, and the overhead of the Dask path.

Two measurements on the Kodak images:

1. Throughput (images per minute) of a fit-batch with a small fixed budget:
   in-process (1 worker x 1 thread) and a Dask LocalCluster with 1 and 2
   workers x 1 thread.  Cluster start-up is timed separately; the batch time
   includes everything else (reading inputs, fitting, metrics, figures,
   writing the outputs), including each worker's first-call warm-up.
2. Overhead of the Dask path on one image at the default budget: the client's
   wall time for the task minus the time the unit itself took on the worker
   (scheduling, sending the input, returning the outputs), as a percentage of
   the in-process time for the same unit.  Both sides are warmed up first.

    python benchmarks/scaling.py                       # 24 images, full default budget for the overhead
    python benchmarks/scaling.py --images 4 --iters 20 --overhead-iters 100   # a quick smoke run

Writes benchmarks/results/scaling.md (and .csv).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from smoe.batch import batch_spec, fit_batch, fit_image
from smoe.executor import InProcessExecutor, make_executor
from smoe.spec import FitSpec

from _common import RESULTS, header, kodak_images, markdown_table, write_results


def load_note() -> str:
    """Other work on the machine skews parallel timings: say how busy it was."""
    try:
        one, five, _ = os.getloadavg()
    except OSError:
        return "Load average: unknown."
    return (f"Load average at the start: {one:.2f} (1 min), {five:.2f} (5 min) on {os.cpu_count()} cores; "
            "anything near or above the core count means other processes competed for the CPU.")


def throughput_row(label: str, paths: list[Path], spec: FitSpec, workers: int, backend: str) -> dict:
    """Fit every image with a fresh executor; time the start-up and the batch apart."""
    with tempfile.TemporaryDirectory(prefix="smoe-scaling-") as tmp:
        t = time.perf_counter()
        executor = make_executor(workers, backend=backend, threads_per_worker=1)
        start_s = time.perf_counter() - t
        try:
            result = fit_batch(paths, Path(tmp) / "out", options=spec, executor=executor)
        finally:
            executor.close()
    failed = result.failed
    if failed:
        raise SystemExit(f"{label}: {len(failed)} images failed, e.g. {failed[0]['error']}")
    return {"run": label, "workers x threads": f"{workers} x 1", "images": len(paths),
            "start-up s": f"{start_s:.1f}", "batch s": f"{result.seconds:.1f}",
            "images/min": f"{60 * len(paths) / result.seconds:.2f}",
            "images/min incl. start-up": f"{60 * len(paths) / (result.seconds + start_s):.2f}"}


def overhead_rows(path: Path, warm_path: Path, spec: FitSpec, repeat: int) -> list[dict]:
    """The same unit in-process and through a 1-worker LocalCluster, both warm."""
    item = {"path": str(path), "data": path.read_bytes()}
    warm = {"path": str(warm_path), "data": warm_path.read_bytes()}
    small = spec.replace(iters=2)
    rows = []
    paths = {"in-process": lambda: InProcessExecutor(threads_per_worker=1),
             "Dask LocalCluster": lambda: make_executor(1, backend="dask", threads_per_worker=1)}
    for label, start in paths.items():
        with start() as ex:
            ex.map(fit_image, [warm], spec=small)
            for _ in range(repeat):
                t = time.perf_counter()
                unit = ex.map(fit_image, [item], spec=spec)[0]
                rows.append({"path": label, "wall s": time.perf_counter() - t, "unit s": unit["seconds"],
                             "fit s": unit["report"]["fit_seconds"]})
    base = min(r["wall s"] for r in rows if r["path"] == "in-process")
    for r in rows:
        r["overhead s"] = r["wall s"] - r["unit s"]
        r["overhead % of in-process"] = 100 * r["overhead s"] / base
        # The unit itself may run slower on a worker (its environment differs): count that too.
        r["wall vs in-process %"] = 100 * (r["wall s"] - base) / base
        for key in ("wall s", "unit s", "fit s", "overhead s"):
            r[key] = f"{r[key]:.2f}"
        for key in ("overhead % of in-process", "wall vs in-process %"):
            r[key] = f"{r[key]:.2f}"
    return rows


def main(argv=None):
    defaults = FitSpec()
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=24, help="first N Kodak images for the throughput runs")
    ap.add_argument("--kernels", type=int, default=500, help="kernels per image in the throughput runs")
    ap.add_argument("--iters", type=int, default=100, help="iterations per image in the throughput runs")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="Dask worker counts to compare")
    ap.add_argument("--overhead-image", default="kodim23", help="Kodak image (768x512) for the overhead test")
    ap.add_argument("--overhead-kernels", type=int, default=2000)
    ap.add_argument("--overhead-iters", type=int, default=defaults.iters)
    ap.add_argument("--repeat", type=int, default=1, help="repeats of the overhead measurement")
    ap.add_argument("--skip-throughput", action="store_true")
    ap.add_argument("--skip-overhead", action="store_true")
    ap.add_argument("--out", default=str(RESULTS / "scaling"))
    args = ap.parse_args(argv)

    text = [header("Scale-out: fit-batch throughput and Dask overhead", vars(args)), load_note(), ""]
    csv_rows = []
    if not args.skip_throughput:
        paths = kodak_images()[: args.images]
        spec = batch_spec({"n_kernels": args.kernels, "iters": args.iters})
        rows = [throughput_row("in-process", paths, spec, 1, "inprocess")]
        print(rows[-1], file=sys.stderr, flush=True)
        for workers in args.workers:
            rows.append(throughput_row("Dask LocalCluster", paths, spec, workers, "dask"))
            print(rows[-1], file=sys.stderr, flush=True)
        one = next((r for r in rows if r["run"] != "in-process" and r["workers x threads"] == "1 x 1"), None)
        for r in rows:
            r["speed-up vs Dask 1 x 1"] = f"{float(r['images/min']) / float(one['images/min']):.2f}" if one else ""
        text += [f"### Throughput: {len(paths)} images, {args.kernels} kernels, {args.iters} iterations", "",
                 markdown_table(rows), ""]
        csv_rows += [{"section": "throughput", **r} for r in rows]
    if not args.skip_overhead:
        path = kodak_images([args.overhead_image])[0]
        warm = kodak_images()[0]
        spec = batch_spec({"n_kernels": args.overhead_kernels, "iters": args.overhead_iters})
        rows = overhead_rows(path, warm, spec, args.repeat)
        for r in rows:
            print(r, file=sys.stderr, flush=True)
        text += [f"### Dask overhead: {path.stem}, {args.overhead_kernels} kernels, {args.overhead_iters} iterations",
                 "", "overhead = client wall time - time of the unit on the worker; the percentage is of the "
                 "in-process wall time; wall vs in-process = the whole Dask path, the unit's own speed on the worker "
                 "included.", "", markdown_table(rows), ""]
        csv_rows += [{"section": "overhead", **r} for r in rows]

    out = "\n".join(text)
    print(out)
    write_results(args.out, out, csv_rows)


if __name__ == "__main__":
    main()
