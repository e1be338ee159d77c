"""Initializers: where the kernels start before gradient descent (AS paper, Table II).

Each initializer lives in its own module, named in :mod:`.registry` and
imported the first time it is used; :func:`initialize` runs one by that name
(:func:`smoe.fit` does), so adding an initializer never touches the fitting code.
"""

from __future__ import annotations

from .registry import available, initialize, register, require_budget, round_kernels

__all__ = ["available", "initialize", "register", "require_budget", "round_kernels"]
