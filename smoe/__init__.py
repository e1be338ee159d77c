"""smoe: Steered Mixture-of-Experts image regression.

An image becomes a sparse set of steered Gaussian kernels whose soft gates
model edges explicitly; the model renders at any resolution.
"""

import os

# PyTorch and numba each run an OpenMP thread pool.  Busy-waiting pools starve
# each other and every other process on the same cores: one fit iteration took
# 544 ms instead of 68 ms on 2 cores beside another smoe process.  Passive
# waiting costs nothing measurable for our millisecond-scale parallel regions.
# It only takes effect if set before torch and numba start their pools.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from . import initializers, metrics  # noqa: E402
from .denoising import denoise  # noqa: E402
from .fitting import FitResult, fit  # noqa: E402
from .imageio import read_image, write_image  # noqa: E402
from .model import Model  # noqa: E402
from .modelfile import load_model, save_model  # noqa: E402
from .rasterizer import kernels_per_tile, output_size, rasterize, render  # noqa: E402
from .segment import mdbscan  # noqa: E402
from .superres import upscale  # noqa: E402
from .version import __version__  # noqa: E402

__all__ = [
    "Model", "render", "rasterize", "output_size", "kernels_per_tile", "fit", "FitResult",
    "read_image", "write_image", "save_model", "load_model", "denoise", "upscale", "mdbscan", "initializers",
    "metrics", "__version__",
]
