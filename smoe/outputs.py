"""The files a fit leaves behind, and the quality figures they report.

``smoe fit`` and ``smoe fit-batch`` write the same set of outputs for every
image (:data:`FIT_OUTPUTS`): the model file, its reconstruction, a
``metrics.json`` with quality, kernel counts, timings and versions, the
iteration history and two figures.  :func:`write_fit_outputs` writes them,
``metrics.json`` last, so a folder holding a complete ``metrics.json`` holds
a complete fit.
"""

from __future__ import annotations

import csv
import io
import json
import math
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from . import metrics
from .imageio import atomic_write_bytes, write_image
from .model import Model
from .modelfile import save_model
from .rasterizer import kernels_per_tile, render
from .version import __version__

#: What one fit writes into its output folder.
FIT_OUTPUTS = ("model.smoe.npz", "reconstruction.png", "metrics.json", "history.csv", "convergence.png",
               "kernels.png")
#: Renders timed for ``render_ms`` in metrics.json (the median is reported).
RENDER_REPEATS = 5


def write_fit_outputs(outdir: Path, image_path: Path, image: np.ndarray, result) -> dict:
    """Render, measure and write every fit output; returns the metrics.json content."""
    model, settings = result.model, result.settings
    mode, scope = settings["mode"], settings["scope"]
    h, w = image.shape[:2]
    with torch.no_grad():
        recon = render(model, h, w, mode=mode, scope=scope).numpy()
    report = {
        "image": {"path": str(image_path.resolve()), "width": w, "height": h,
                  "channels": 1 if image.ndim == 2 else image.shape[2]},
        **metrics.evaluate(image, recon.reshape(image.shape)),
        "kernels_initial": result.init_kernels,
        "kernels_final": len(model),
        "kernels_per_tile": kernels_per_tile(model, h, w, mode=mode) if scope == "raster" else float(len(model)),
        "iterations": result.history[-1]["iteration"],
        "stop_reason": result.stop_reason,
        "init_seconds": result.init_seconds,
        "fit_seconds": result.fit_seconds,
        "render_ms": _median_render_ms(model, h, w, mode, scope),
        "versions": _versions(),
        "settings": settings,
    }
    save_model(outdir / "model.smoe.npz", model, mode=mode, scope=scope, height=h, width=w, settings=settings)
    write_image(outdir / "reconstruction.png", recon)
    atomic_write_bytes(outdir / "history.csv", _history_csv(result.history))
    from . import plots  # matplotlib loads only when figures are drawn

    plots.plot_convergence(result.history, outdir / "convergence.png", title=f"{image_path.name}: {len(model)} "
                           f"kernels, {report['psnr'] or math.inf:.2f} dB after {report['iterations']} iterations")
    plots.draw_kernels(image, model, outdir / "kernels.png")
    # Written last: a complete metrics.json marks a complete output directory.
    atomic_write_bytes(outdir / "metrics.json", (json.dumps(report, indent=2) + "\n").encode())
    return report


def _median_render_ms(model: Model, h: int, w: int, mode: str, scope: str) -> float:
    times = []
    with torch.no_grad():
        for _ in range(RENDER_REPEATS):
            start = time.perf_counter()
            render(model, h, w, mode=mode, scope=scope)
            times.append(time.perf_counter() - start)
    return 1000.0 * statistics.median(times)


def _versions() -> dict:
    import numba

    return {"smoe": __version__, "torch": torch.__version__, "numba": numba.__version__,
            "numpy": np.__version__, "python": platform.python_version()}


def _history_csv(history: list[dict]) -> bytes:
    keys = list(dict.fromkeys(k for record in history for k in record))
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=keys, lineterminator="\n")
    writer.writeheader()
    writer.writerows(history)
    return text.getvalue().encode()
