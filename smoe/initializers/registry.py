"""The initializer registry, and helpers the built-in initializers share.

An initializer is a function ``init(image, n_kernels, *, rng, **options) -> Model``
taking a float image of shape (H, W, C) in [0, 1], a kernel budget and a
``numpy.random.Generator``.  The built-in ones are listed in :data:`BUILTINS`
and imported on first use, so importing this module imports none of them and
they never import each other through it; others join with :func:`register`.
:func:`initialize` looks an initializer up by name and checks what every
initializer shares (its options, the kernel budget), so adding an initializer
never touches the fitting code.  Importing this module does not import torch,
so the command line lists the initializers in ``smoe fit --help`` quickly.
"""

from __future__ import annotations

import importlib
import inspect
from typing import TYPE_CHECKING, Callable

import numpy as np

from ..validate import check_kernel_count

if TYPE_CHECKING:
    from ..model import Model

#: Built-in initializer name -> ``"module:function"``, imported on first use.
BUILTINS = {
    "adaptive": "smoe.initializers.adaptive:adaptive_init",
    "content": "smoe.initializers.content:content_init",
    "grid": "smoe.initializers.grid:grid_init",
    "kmeans": "smoe.initializers.kmeans:kmeans_init",
    "random": "smoe.initializers.random:random_init",
    "segment": "smoe.initializers.segment:segment_init",
}

# name -> function, for names passed to register() and built-ins already imported
_REGISTRY: dict[str, Callable[..., Model]] = {}


def register(name: str):
    """Decorator that makes an initializer available to :func:`initialize` under ``name``."""
    def wrap(fn):
        _REGISTRY[name] = fn
        return fn
    return wrap


def available() -> list[str]:
    """Names of the registered initializers."""
    return sorted(set(BUILTINS) | set(_REGISTRY))


def _lookup(name: str) -> Callable[..., Model]:
    if name not in _REGISTRY:
        if name not in BUILTINS:
            raise ValueError(f"unknown initializer {name!r}; choose one of {', '.join(available())}")
        module, function = BUILTINS[name].split(":")
        _REGISTRY[name] = getattr(importlib.import_module(module), function)
    return _REGISTRY[name]


def initialize(name: str, image: np.ndarray, n_kernels: int | None, *, seed: int = 0, **options) -> Model:
    """Run the initializer ``name`` on a (H, W, C) image with a budget of ``n_kernels``.

    A budget must be a whole number from 1 to the pixel count H W.
    ``n_kernels=None`` is for initializers that choose their own count; the
    others raise ValueError.
    """
    fn = _lookup(name)
    params = inspect.signature(fn).parameters.values()
    accepted = [p.name for p in params if p.kind == p.KEYWORD_ONLY and p.name != "rng"]
    open_ended = any(p.kind == p.VAR_KEYWORD for p in params)  # such initializers check their own options
    unknown = sorted(set(options) - set(accepted))
    if unknown and not open_ended:
        raise ValueError(f"initializer {name!r} has no option {', '.join(unknown)}; "
                         f"it takes {', '.join(accepted) or 'no options'}")
    if n_kernels is not None:
        n_kernels = check_kernel_count(n_kernels, int(np.prod(np.shape(image)[:2])))
    return fn(image, n_kernels, rng=np.random.default_rng(seed), **options)


def require_budget(name: str, n_kernels: int | None) -> int:
    """The kernel budget, or a clear error for initializers that cannot choose one."""
    if n_kernels is None:
        raise ValueError(f"initializer {name!r} needs a kernel count (n_kernels / -n)")
    return n_kernels


def round_kernels(centres: np.ndarray, sigma, image: np.ndarray) -> Model:
    """Round kernels of standard deviation ``sigma`` px at ``centres`` (n, 2), pi = 1,
    experts sampled from the image at the pixel under each centre."""
    from ..model import Model  # not at the top: listing initializers must not load torch

    h, w, _ = image.shape
    n = centres.shape[0]
    inv = 1.0 / np.broadcast_to(np.asarray(sigma, np.float32), (n,))
    chol = np.stack([inv, np.zeros(n, np.float32), inv], 1)
    cols = np.clip(centres[:, 0].astype(int), 0, w - 1)
    rows = np.clip(centres[:, 1].astype(int), 0, h - 1)
    return Model(centres.astype(np.float32), chol, np.ones(n, np.float32), image[rows, cols].astype(np.float32))
