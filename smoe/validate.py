"""Argument checks that more than one module needs, each rule written once.

Every check raises ``ValueError`` with a one-line message that names the
argument, the bad value and what would be accepted.
"""

from __future__ import annotations

import math
from numbers import Integral, Real


def check_choice(name: str, value, choices) -> None:
    """``value`` must be one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")


def is_whole(value) -> bool:
    """An integer that is not a bool (NumPy integers included)."""
    return isinstance(value, Integral) and not isinstance(value, bool)


def is_real(value) -> bool:
    """A real number that is not a bool (NumPy floats included)."""
    return isinstance(value, Real) and not isinstance(value, bool)


def check_kernel_count(n_kernels, pixels: int) -> int:
    """A kernel budget must be a whole number from 1 to the image's pixel count; returns it as int."""
    if not (is_whole(n_kernels) and 1 <= n_kernels <= pixels):
        raise ValueError(f"n_kernels must be a whole number between 1 and the pixel count {pixels}, "
                         f"got {n_kernels!r}")
    return int(n_kernels)


def check_finite(name: str, value, *, low: float | None = None, high: float | None = None,
                 low_open: bool = False) -> float:
    """A finite real number, optionally within ``[low, high]`` (``(low, high]`` with ``low_open``)."""
    ok = is_real(value) and math.isfinite(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value <= high
    if not ok:
        if low is None and high is None:
            want = "a finite number"
        elif high is None:
            want = f"a finite number {'>' if low_open else '>='} {low:g}"
        elif low is None:
            want = f"a finite number <= {high:g}"
        else:
            want = f"a number from {low:g} to {high:g}"
        raise ValueError(f"{name} must be {want}, got {value!r}")
    return float(value)


def check_area_power(area_power) -> None:
    """Raise ValueError unless ``area_power`` is a number in [0, 1]."""
    if not (is_real(area_power) and 0 <= area_power <= 1):
        raise ValueError(f"area_power must be a number between 0 (the same kernel count in every segment) and 1 "
                         f"(kernel counts proportional to segment area), got {area_power!r}")


def one_line(exc: BaseException) -> str:
    """An exception's message on one line (its type name if it has none), for one-line errors."""
    text = " ".join(str(exc).split())
    return text or type(exc).__name__
