"""smoe: Steered Mixture-of-Experts image regression.

An image becomes a sparse set of steered Gaussian kernels whose soft gates
model edges explicitly; the model renders at any resolution.
"""

from .model import Model
from .render import kernels_per_tile, output_size, rasterize, render

__version__ = "0.1.0"

__all__ = ["Model", "render", "rasterize", "output_size", "kernels_per_tile", "__version__"]
