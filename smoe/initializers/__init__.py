"""Initializers: where the kernels start before gradient descent (AS paper, Table II).

Each initializer lives in its own module and registers itself by name in
:mod:`.registry`; :func:`initialize` runs one by that name (:func:`smoe.fit`
does), so adding an initializer never touches the fitting code.
"""

from __future__ import annotations

from . import adaptive, grid, kmeans, random, segment  # noqa: F401  (built-ins register on import)
from .registry import available, initialize, register, require_budget, round_kernels

__all__ = ["available", "initialize", "register", "require_budget", "round_kernels"]
