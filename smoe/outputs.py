"""The files a fit leaves behind, and the quality figures they report, built in memory.

``smoe fit`` and ``smoe fit-batch`` produce the same set of outputs for
every image (:data:`FIT_OUTPUTS`): the model file, its reconstruction, a
``metrics.json`` with quality, kernel counts, timings, versions and the
resolved fit spec, the iteration history and two figures.
:func:`fit_outputs` builds them all as bytes, rendering the reconstruction
once for the metrics and the pictures; both commands write them with
:func:`smoe.atomic.write_output_folder`, so they appear together or not at
all, ``metrics.json`` last.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import platform
import time
from pathlib import Path

import numpy as np

from . import metrics
from .fitted import FittedModel
from .imageio import encode_image
from .modelfile import model_file_bytes
from .outputnames import FIT_OUTPUTS
from .version import __version__

__all__ = ["FIT_OUTPUTS", "fit_outputs", "versions", "machine", "history_csv"]

def fit_outputs(fitted: FittedModel, image: np.ndarray, history: list[dict], *, image_path, run: dict,
                ) -> tuple[dict[str, bytes], dict]:
    """Every fit output as bytes, and the metrics.json content.

    Parameters
    ----------
    fitted : FittedModel
        The fitted model (``FitResult.fitted``).
    image : (H, W) or (H, W, C) array
        The image it was fitted on, floats in [0, 1].
    history : list of dict
        ``FitResult.history``.
    image_path : str or os.PathLike
        Where the image came from, recorded in metrics.json.
    run : dict
        ``FitResult.run_facts()``: initial kernels, iterations, stop reason, timings.

    Returns
    -------
    files : dict of str to bytes
        One entry per name of :data:`FIT_OUTPUTS`.
    report : dict
        The content of ``metrics.json``: quality (``metrics.evaluate``), kernel
        counts, ``render_ms`` (the time of the one render), versions and the
        resolved ``spec``.

    Examples
    --------
    >>> import smoe
    >>> image = np.random.default_rng(0).random((32, 48, 3)).astype(np.float32)
    >>> result = smoe.fit(image, 50, iters=5)
    >>> files, report = fit_outputs(result.fitted, image, result.history, image_path="x.png",
    ...                             run=result.run_facts())
    >>> sorted(files) == sorted(FIT_OUTPUTS), report["kernels_final"] == len(result.model)
    (True, True)
    """
    start = time.perf_counter()
    recon = fitted.render()
    render_ms = 1000.0 * (time.perf_counter() - start)
    h, w = fitted.frame
    report = {
        "image": {"path": str(Path(image_path).resolve()), "width": w, "height": h,
                  "channels": 1 if np.ndim(image) == 2 else np.shape(image)[2]},
        **metrics.evaluate(image, recon.reshape(np.shape(image))),
        "kernels_initial": run["kernels_initial"],
        "kernels_final": len(fitted.model),
        "kernels_per_tile": fitted.kernels_per_tile(),
        "iterations": run["iterations"],
        "stop_reason": run["stop_reason"],
        "init_seconds": run["init_seconds"],
        "fit_seconds": run["fit_seconds"],
        "render_ms": render_ms,
        "versions": versions(),
        "spec": None if fitted.spec is None else fitted.spec.to_dict(),
    }
    from . import plots  # matplotlib loads only when figures are drawn

    psnr = report["psnr"]
    title = (f"{Path(image_path).name}: {len(fitted.model)} kernels, "
             f"{math.inf if psnr is None else psnr:.2f} dB after {report['iterations']} iterations")
    files = {
        "model.smoe.npz": model_file_bytes(fitted),
        "reconstruction.png": encode_image(recon, ".png"),
        "history.csv": history_csv(history),
        "convergence.png": plots.plot_convergence(history, title=title),
        "kernels.png": plots.draw_kernels(image, fitted.model),
        "metrics.json": (json.dumps(report, indent=2) + "\n").encode(),
    }
    return files, report


def versions() -> dict:
    """Versions of smoe and of the libraries its results depend on, as metrics.json records them.

    Examples
    --------
    >>> sorted(versions())
    ['numba', 'numpy', 'python', 'smoe', 'torch']
    """
    import numba
    import torch

    return {"smoe": __version__, "torch": torch.__version__, "numba": numba.__version__,
            "numpy": np.__version__, "python": platform.python_version()}


def machine() -> dict:
    """The computer a fit ran on, so that its timings can be compared: CPU model, cores and threads.

    Examples
    --------
    >>> sorted(machine())
    ['arch', 'cores', 'cpu', 'numba_threads', 'os', 'torch_threads']
    """
    import numba
    import torch

    return {"cpu": _cpu_model(), "arch": platform.machine(), "cores": os.cpu_count(), "os": platform.system(),
            "torch_threads": torch.get_num_threads(), "numba_threads": numba.get_num_threads()}


def _cpu_model() -> str:
    # platform.processor() is empty or just "x86_64" on Linux; /proc/cpuinfo names the model.
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def history_csv(history: list[dict]) -> bytes:
    """The history records as CSV bytes: one column per key any record has, in first-seen order.

    Examples
    --------
    >>> history_csv([{"iteration": 1, "psnr": 20.5}, {"iteration": 2, "psnr": 21.0}])
    b'iteration,psnr\\n1,20.5\\n2,21.0\\n'
    """
    keys = list(dict.fromkeys(k for record in history for k in record))
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=keys, lineterminator="\n")
    writer.writeheader()
    writer.writerows(history)
    return text.getvalue().encode()
