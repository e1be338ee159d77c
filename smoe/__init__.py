"""smoe: Steered Mixture-of-Experts image regression.

An image becomes a sparse set of steered Gaussian kernels whose soft gates
model edges explicitly; the model renders at any resolution.
"""

from . import initializers, metrics
from .fit import FitResult, fit
from .imageio import read_image, write_image
from .model import Model
from .modelfile import load_model, save_model
from .render import kernels_per_tile, output_size, rasterize, render

__version__ = "0.1.0"

__all__ = [
    "Model", "render", "rasterize", "output_size", "kernels_per_tile", "fit", "FitResult",
    "read_image", "write_image", "save_model", "load_model", "initializers", "metrics", "__version__",
]
