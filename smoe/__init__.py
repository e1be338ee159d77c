"""smoe: Steered Mixture-of-Experts image regression.

An image becomes a sparse set of steered Gaussian kernels whose soft gates
model edges explicitly; the model renders at any resolution.

Public names load on first use (PEP 562), so ``import smoe`` and the command
line's ``--help`` do not pay for torch and numba.
"""

import importlib
import os

# PyTorch and numba each run an OpenMP thread pool.  Busy-waiting pools starve
# each other and every other process on the same cores: one fit iteration took
# 544 ms instead of 68 ms on 2 cores beside another smoe process.  Passive
# waiting costs nothing measurable for our millisecond-scale parallel regions.
# It only takes effect if set before torch and numba start their pools.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from .version import __version__  # noqa: E402

# public name -> submodule that defines it (None: the name is the submodule itself)
_EXPORTS = {
    "Model": "model",
    "render": "fitted", "FittedModel": "fitted", "rasterize": "rasterizer", "kernels_per_tile": "rasterizer",
    "output_size": "sizes", "FitSpec": "spec",
    "fit": "fitting", "FitResult": "fitting",
    "read_image": "imageio", "write_image": "imageio",
    "save_model": "modelfile", "load_model": "modelfile", "read_model_file": "modelfile",
    "denoise": "denoising",
    "upscale": "superres",
    "mdbscan": "segment",
    "encode": "codec", "decode": "codec", "codec": None,
    "fit_video": "video", "video": None,
    "initializers": None,
    "metrics": None,
    "rasterizer": None,
}

__all__ = [
    "Model", "FittedModel", "FitSpec", "render", "rasterize", "output_size", "kernels_per_tile", "fit", "FitResult",
    "read_image", "write_image", "save_model", "load_model", "read_model_file", "denoise", "upscale", "mdbscan",
    "encode", "decode", "codec", "fit_video", "video", "initializers", "metrics", "rasterizer", "__version__",
]


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'smoe' has no attribute {name!r}")
    source = _EXPORTS[name]
    if source is None:
        value = importlib.import_module(f".{name}", __name__)
    else:
        value = getattr(importlib.import_module(f".{source}", __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
