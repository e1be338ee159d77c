"""The ``smoe`` command line: fit, render, evaluate and inspect models.

``smoe fit IMAGE`` fits a model and writes it with its reconstruction, metrics
and figures; ``smoe render MODEL`` draws a saved model at any resolution;
``smoe fit-video CLIP`` fits space-time kernels to a video clip;
``smoe eval REF IMAGE`` compares two images; ``smoe info MODEL`` describes a
model file; ``smoe encode`` and ``smoe decode`` compress an image into a
bitstream and back.  Each subcommand is registered in :data:`COMMANDS` by a function
that adds its parser, so new ones (segment, denoise, upscale, ...) plug in
without touching the others.

Errors a user can cause (a missing or broken file, a bad option value, an
unwritable output path) end the program with exit status 2 and one line on
stderr, ``smoe: error: <what is wrong and what to do>``; ``--debug`` raises
them with their traceback instead.  Any other exception is a bug in smoe and
keeps its traceback.  Ctrl-C exits with status 130.  Every file
is written atomically, and outputs are checked to be writable before any long
computation starts.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import warnings
from typing import Callable

from ..memory import is_out_of_memory
from ..version import __version__
from . import codec, fitting, models, tasks, video
from .options import EXIT_BROKEN_PIPE, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, CliError

__all__ = ["main", "COMMANDS", "CliError"]


class _Parser(argparse.ArgumentParser):
    """ArgumentParser whose usage errors become :class:`CliError`, so they print as one line."""

    def error(self, message):
        raise CliError(f"{message}; see '{self.prog} --help'")


# ======================================================================= main
def main(argv: list[str] | None = None) -> int:
    """Run the ``smoe`` command line.

    Parameters
    ----------
    argv : list of str, optional
        Arguments without the program name; default ``sys.argv[1:]``.

    Returns
    -------
    int
        Exit status: 0 success, 2 usage or input error, 130 interrupted, 141 output pipe closed.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(_command_named(argv) or "")
    try:
        args = parser.parse_args(argv)
    except CliError as exc:
        return _report(exc)
    except SystemExit as exc:  # --help and --version end here
        return exc.code if isinstance(exc.code, int) else EXIT_OK
    if args.command is None:
        return _report(CliError(f"no command given; choose one of {', '.join(COMMANDS)} (see 'smoe --help')"))
    with _warnings_as_lines():
        try:
            return args.run(args)
        except KeyboardInterrupt:
            if args.debug:
                raise
            print("smoe: interrupted", file=sys.stderr)
            return EXIT_INTERRUPTED
        except BrokenPipeError:
            # The reader went away (e.g. `smoe info M | head -1`): stop quietly, as Unix tools do.
            _silence_stdout()
            return EXIT_BROKEN_PIPE
        # ImageError and ModelFileError are ValueErrors: naming them would load their modules
        except (CliError, ValueError, OSError, MemoryError) as exc:
            if args.debug:
                raise
            return _report(exc)
        except RuntimeError as exc:  # torch reports exhausted memory as a RuntimeError; anything else is a bug
            if args.debug or not is_out_of_memory(exc):
                raise
            return _report(MemoryError())


def _command_named(argv: list[str]) -> str | None:
    """The subcommand ``argv`` names: its first word that is not an option (no top-level option takes a value)."""
    words = [a for a in argv if not a.startswith("-")]
    return words[0] if words and words[0] in COMMANDS else None


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush cannot fail again."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The top-level parser with one subparser per entry of :data:`COMMANDS`.

    Only ``command``'s subparser gets its options (every one does if
    ``command`` is None, none if it names no command): adding them loads the
    modules holding their defaults, which ``smoe --help`` and the other
    commands do not need.
    """
    common = argparse.ArgumentParser(add_help=False)
    # SUPPRESS keeps a subcommand's default from overwriting "smoe --debug fit".
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="on error, raise with the full Python traceback instead of a one-line message")
    parser = _Parser(prog="smoe", description="Steered Mixture-of-Experts image regression: fit an image with "
                     "steered Gaussian kernels, then render, evaluate or inspect the model.",
                     epilog="Run 'smoe COMMAND --help' for the options of a command.")
    parser.add_argument("--version", action="version", version=f"smoe {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help="on error, raise with the full Python traceback instead of a one-line message")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser, title="commands",
                                help="what to do; each command has its own --help")
    for name, (summary, add) in COMMANDS.items():
        p = sub.add_parser(name, parents=[common], help=summary)
        if command in (None, name):
            add(p)
    return parser


def _report(exc: BaseException) -> int:
    print(f"smoe: error: {_describe(exc)}", file=sys.stderr)
    return EXIT_USAGE


def _describe(exc: BaseException) -> str:
    """One line saying what went wrong (and, where the message lacks it, what to do)."""
    if isinstance(exc, MemoryError):
        return "out of memory; use a smaller image, fewer kernels (-n) or a smaller output size"
    if isinstance(exc, OSError) and not isinstance(exc, CliError) and exc.strerror:
        where = f"{exc.filename}: " if exc.filename else ""
        return f"{where}{exc.strerror}; check the path and its permissions"
    return " ".join(str(exc).split()) or type(exc).__name__


@contextlib.contextmanager
def _warnings_as_lines():
    """Show Python warnings as ``smoe: warning: ...`` lines instead of source locations."""
    def show(message, category, filename, lineno, file=None, line=None):
        print(f"smoe: warning: {' '.join(str(message).split())}", file=sys.stderr)

    with warnings.catch_warnings():
        warnings.showwarning = show
        yield


#: Subcommand name -> (one-line summary for ``smoe --help``, function adding its options to its parser).
COMMANDS: dict[str, tuple[str, Callable]] = {
    "fit": ("fit a kernel model to an image", fitting._add_fit),
    "fit-batch": ("fit many images, in parallel or on a Dask cluster", fitting._add_fit_batch),
    "fit-video": ("fit space-time kernels to a video clip", video._add_fit_video),
    "render": ("render a saved model at any resolution, a video model at any frame rate", models._add_render),
    "eval": ("compare an image with a reference", models._add_eval),
    "info": ("describe a model file or bitstream", models._add_info),
    "encode": ("compress an image into an SMoE bitstream", codec._add_encode),
    "decode": ("decode an SMoE bitstream to an image", codec._add_decode),
    "denoise": ("denoise an image with averaged shifted models (MM-RSMoE)", tasks._add_denoise),
    "upscale": ("fit an image and render it larger (super-resolution)", tasks._add_upscale),
    "segment": ("MDBSCAN segmentation of an image, as a picture", tasks._add_segment),
}

