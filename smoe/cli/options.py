"""Argument types of the command line, the error a user can cause, and exit statuses.

Each type turns one command-line word into a value or raises
``argparse.ArgumentTypeError`` with a message saying what was expected.
"""

from __future__ import annotations

import argparse
import math
import re
from typing import Callable

from ..sizes import TILE_SIZES

#: Exit statuses.
EXIT_OK, EXIT_USAGE, EXIT_INTERRUPTED = 0, 2, 130
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what a shell reports for a tool stopped by a closed pipe


class CliError(Exception):
    """An expected failure; its message is the line shown after ``smoe: error:``."""


def _checked(parse: Callable, ok: Callable, problem: str) -> Callable:
    """An argument type: ``parse`` the text, then refuse a value failing ``ok`` with
    ``problem``, formatted with the parsed ``value`` and the raw ``text``."""
    def convert(text: str):
        value = parse(text)
        if not ok(value):
            raise argparse.ArgumentTypeError(problem.format(value=value, text=text))
        return value
    return convert


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None


_positive_int = _checked(_int, lambda v: v > 0, "must be a positive whole number, got {value}")
_non_negative_int = _checked(_int, lambda v: v >= 0, "must be 0 or more, got {value}")


def _kernel_count(text: str) -> int | None:
    return None if text == "auto" else _positive_int(text)


def _key_value(text: str) -> tuple[str, object]:
    key, sep, raw = text.partition("=")
    if not sep or not key.isidentifier():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE with a Python-style name, got {text!r}")
    for convert in (int, float):
        try:
            return key, convert(raw)
        except ValueError:
            pass
    return key, {"true": True, "false": False, "none": None}.get(raw.lower(), raw)


def _float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


_positive_float = _checked(_float, lambda v: v > 0, "must be greater than 0, got {text}")
_non_negative_float = _checked(_float, lambda v: v >= 0, "must be 0 or more, got {text}")
_tile_size = _checked(_int, lambda v: v in TILE_SIZES, "must be a power of two from 4 to 64, got {text}")
#: A PSNR target a user may ask for: below 10 dB is no picture, above 60 dB more than 8-bit images hold.
_target_psnr = _checked(_float, lambda v: 10 <= v <= 60, "must be a PSNR from 10 to 60 dB, got {text}")
_correlation = _checked(_float, lambda v: -1 <= v <= 1, "must be a correlation between -1 and 1, got {text}")

_SIZE = re.compile(r"\s*(\d+)\s*[xX]\s*(\d+)\s*")


def _size(text: str) -> tuple[int, int]:
    """``"WIDTHxHEIGHT"`` -> ``(height, width)``, the order :func:`smoe.rasterizer.output_size` takes."""
    match = _SIZE.fullmatch(text)
    if match is None or min(int(match[1]), int(match[2])) < 1:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT with two positive whole numbers, e.g. 1920x1080; "
                                         f"got {text!r}")
    return int(match[2]), int(match[1])
