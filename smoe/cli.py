"""The ``smoe`` command line: fit, render, evaluate and inspect models.

``smoe fit IMAGE`` fits a model and writes it with its reconstruction, metrics
and figures; ``smoe render MODEL`` draws a saved model at any resolution;
``smoe eval REF IMAGE`` compares two images; ``smoe info MODEL`` describes a
model file.  Each subcommand is registered in :data:`COMMANDS` by a function
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
import inspect
import json
import os
import math
import re
import secrets
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .fit import FitSettings, fit
from .imageio import ImageError, default_image_path, read_image, write_image
from .initializers import available as available_initializers
from .model import Model
from .modelfile import ModelFileError, load_model
from .metrics import evaluate
from .outputs import FIT_OUTPUTS, write_fit_outputs
from .render import MODES, SCOPES, kernels_per_tile, output_size, render
from .superres import MAX_OUTPUT_PIXELS
from .version import __version__

__all__ = ["main", "COMMANDS", "MAX_OUTPUT_PIXELS", "CliError"]

#: Exit statuses.
EXIT_OK, EXIT_USAGE, EXIT_INTERRUPTED = 0, 2, 130
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what a shell reports for a tool stopped by a closed pipe

_FIT_DEFAULTS = FitSettings()
_INIT_DEFAULT = inspect.signature(fit).parameters["init"].default
_N_DEFAULT = inspect.signature(fit).parameters["n_kernels"].default


class CliError(Exception):
    """An expected failure; its message is the line shown after ``smoe: error:``."""


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
    parser = build_parser()
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
        except (CliError, ImageError, ModelFileError, ValueError, OSError, MemoryError) as exc:
            if args.debug:
                raise
            return _report(exc)


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush cannot fail again."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with one subparser per entry of :data:`COMMANDS`."""
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
    for add in COMMANDS.values():
        add(sub, common)
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


# ========================================================== argument types
def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None


def _positive_int(text: str) -> int:
    value = _int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive whole number, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


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


def _positive_float(text: str) -> float:
    value = _float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0, got {text}")
    return value


def _non_negative_float(text: str) -> float:
    value = _float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def _correlation(text: str) -> float:
    value = _float(text)
    if not -1 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be a correlation between -1 and 1, got {text}")
    return value


_SIZE = re.compile(r"\s*(\d+)\s*[xX]\s*(\d+)\s*")


def _size(text: str) -> tuple[int, int]:
    """``"WIDTHxHEIGHT"`` -> ``(height, width)``, the order :func:`smoe.render.output_size` takes."""
    match = _SIZE.fullmatch(text)
    if match is None or min(int(match[1]), int(match[2])) < 1:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT with two positive whole numbers, e.g. 1920x1080; "
                                         f"got {text!r}")
    return int(match[2]), int(match[1])


# ========================================================== output paths
def _missing_dirs(path: Path) -> list[Path]:
    """``path`` and those of its parents that do not exist yet, deepest first."""
    missing = []
    while not path.exists() and path.parent != path:
        missing.append(path)
        path = path.parent
    return missing


def _remove_empty(dirs: list[Path]) -> None:
    """Undo :func:`_prepare_outdir` after a failure: remove the directories it made, if still empty."""
    for d in dirs:
        with contextlib.suppress(OSError):
            d.rmdir()


@contextlib.contextmanager
def _removed_on_failure(created: list[Path]):
    """Run the block; if it fails in any way, remove the directories in ``created`` that are still empty."""
    try:
        yield
    except BaseException:
        _remove_empty(created)
        raise


def _check_kernel_count(n_kernels: int | None, h: int, w: int, path) -> None:
    if n_kernels is not None and n_kernels > h * w:
        raise CliError(f"-n {n_kernels} is more kernels than the {h * w} pixels of {path} ({w}x{h}); "
                       f"use -n {h * w} or fewer")


def _prepare_outdir(outdir: Path, names=()) -> list[Path]:
    """Create ``outdir`` and prove a file can be written in it, before any long computation.

    Parameters
    ----------
    outdir : Path
    names : iterable of str
        Files that will be written there; none may be an existing directory.

    Returns
    -------
    The directories this call created, deepest first (see :func:`_remove_empty`).
    """
    created = _missing_dirs(outdir)
    if outdir.exists() and not outdir.is_dir():
        raise CliError(f"output directory {outdir} exists and is a file; choose another path with -o")
    try:
        outdir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=outdir):
            pass
    except OSError as exc:
        _remove_empty(created)
        reason = "part of the path is a file, not a directory" if isinstance(exc, NotADirectoryError) \
            else (exc.strerror or str(exc))
        raise CliError(f"cannot write to output directory {outdir}: {reason}; choose another path with -o") from exc
    for name in names:
        if (outdir / name).is_dir():
            _remove_empty(created)
            raise CliError(f"{outdir / name} is a directory; remove it or choose another output directory with -o")
    return created


def _prepare_output_file(out: Path) -> list[Path]:
    """Create ``out``'s directory and check that an image with ``out``'s suffix can be written there.

    A 1 x 1 probe image is written beside ``out`` and removed again: that tests
    the suffix through :func:`write_image` itself and the directory's permissions.
    Returns the directories created, deepest first.
    """
    if out.is_dir():
        raise CliError(f"output {out} is a directory; give a file name such as {out / 'render.png'}")
    created = _prepare_outdir(out.parent)
    probe = out.with_name(f".smoe-probe-{secrets.token_hex(4)}{out.suffix}")
    try:
        write_image(probe, np.zeros((1, 1), np.float32))
    except ImageError as exc:
        _remove_empty(created)
        raise CliError(str(exc).replace(str(probe), str(out))) from exc  # name the user's file, not the probe
    except BaseException:
        _remove_empty(created)
        raise
    finally:
        with contextlib.suppress(OSError):
            probe.unlink()
    return created


# ============================================================= quality
def _quality_lines(q: dict) -> list[str]:
    def fmt(key, digits, unit=""):
        value = q[key]
        return f"{value:.{digits}f}{unit}" if value is not None else "n/a (image too small or metric disabled)"

    psnr = "inf dB (identical)" if q["psnr"] is None else fmt("psnr", 2, " dB")
    lines = [f"PSNR     {psnr}", f"SSIM     {fmt('ssim', 4)}", f"MS-SSIM  {fmt('ms_ssim', 4)}",
             f"LPIPS    {fmt('lpips', 4)}"]
    if q["crops"] is not None:
        lines.append(f"(SSIM, MS-SSIM and LPIPS: mean over {len(q['crops'])} fixed crops of "
                     f"{q['crops'][0][2]}x{q['crops'][0][3]} px; PSNR over the whole image)")
    return lines


# ================================================================== fit
def _add_fit(sub, common) -> None:
    p = sub.add_parser("fit", parents=[common], help="fit a kernel model to an image",
                       description="Fit steered kernels to an image by gradient descent and write the model, its "
                       "reconstruction, quality metrics and figures to an output directory.",
                       epilog="Outputs (existing files are replaced): " + ", ".join(FIT_OUTPUTS) + ". "
                       "metrics.json holds PSNR/SSIM/MS-SSIM/LPIPS, kernel counts, timings, versions and "
                       "settings; history.csv the logged iterations.")
    p.add_argument("image", nargs="?", metavar="IMAGE",
                   help="image file to fit (PNG, JPEG, TIFF, BMP; 8 or 16 bit, grey or RGB); "
                        "default: the bundled demo image (Kodak 23, 384x256)")
    _add_fit_options(p)
    p.add_argument("-o", "--output", metavar="OUTDIR", default=None,
                   help="output directory, created if missing (default: smoe-out/<image name>)")
    p.add_argument("--quiet", action="store_true", help="print nothing but errors (no progress bar, no summary)")
    p.set_defaults(run=_run_fit)


def _add_fit_options(p) -> None:
    """The model and optimizer options of ``fit``, shared with ``fit-batch``."""
    p.add_argument("-n", "--kernels", dest="n_kernels", type=_kernel_count, default=_N_DEFAULT, metavar="N",
                   help="initial number of kernels, at most the pixel count; 'auto' lets initializers that "
                        "choose their own count (adaptive) do so (default: %(default)s)")
    p.add_argument("--mode", choices=MODES, default="smoe",
                   help="regression function: 'smoe' gated mixture, 'rbf' weighted sum of Gaussians "
                        "(default: %(default)s)")
    p.add_argument("--scope", choices=SCOPES, default="raster",
                   help="'raster': each 16x16 tile sums only the kernels that reach it (fast); 'global': every "
                        "kernel acts on every pixel (cost grows with kernels x pixels) (default: %(default)s)")
    p.add_argument("--iters", type=_positive_int, default=_FIT_DEFAULTS.iters, metavar="N",
                   help="maximum number of gradient steps (default: %(default)s)")
    p.add_argument("--target-psnr", type=_float, default=None, metavar="DB",
                   help="stop as soon as the PSNR reaches DB decibels (default: no target)")
    p.add_argument("--target-corr", type=_correlation, default=None, metavar="C",
                   help="stop once the residual's correlation with itself shifted by one pixel falls to C; a "
                        "little below 0 (e.g. -0.04) stops a fit to a noisy image once it starts copying the noise "
                        "(default: off)")
    p.add_argument("--time-budget", type=_positive_float, default=None, metavar="S",
                   help="stop after S seconds of fitting (default: no limit)")
    p.add_argument("--tol", type=_non_negative_float, default=None, metavar="T",
                   help="stop when the best loss improves by less than the fraction T between two log points, "
                        "e.g. 1e-4 (default: off)")
    p.add_argument("--lam", type=_non_negative_float, default=_FIT_DEFAULTS.lam, metavar="L",
                   help="L1 weight on the gates; > 0 prunes useless kernels (smoe mode only; try 1e-5 to 1e-4) "
                        "(default: %(default)s)")
    p.add_argument("--init", choices=available_initializers(), default=_INIT_DEFAULT,
                   help="where the kernels start (default: %(default)s)")
    p.add_argument("--init-option", dest="init_options", action="append", type=_key_value, default=None,
                   metavar="KEY=VALUE", help="option for the initializer, repeatable, e.g. --init-option "
                   "threshold=50 --init-option target_psnr=32 (see the initializer's docstring)")
    p.add_argument("--seed", type=int, default=0, help="seed of the initializer (default: %(default)s)")


def _run_fit(args) -> int:
    settings = _fit_settings(args)
    image_path = Path(args.image) if args.image else default_image_path()
    outdir = Path(args.output) if args.output else Path("smoe-out") / image_path.stem
    image = read_image(image_path)
    h, w = image.shape[:2]
    _check_kernel_count(args.n_kernels, h, w, image_path)
    with _removed_on_failure(_prepare_outdir(outdir, FIT_OUTPUTS)):
        if not args.quiet:
            colour = "RGB" if image.ndim == 3 else "grey"
            print(f"fitting {args.n_kernels or 'auto'} kernels ({args.mode}, {args.scope}, init {args.init}) to "
                  f"{image_path} ({w}x{h} {colour})")
        result = fit(image, args.n_kernels, mode=args.mode, scope=args.scope, init=args.init, seed=args.seed,
                     init_options=dict(args.init_options or ()), quiet=args.quiet, **settings)
        report = write_fit_outputs(outdir, image_path, image, result)
    if not args.quiet:
        _print_fit_summary(report, outdir)
    return EXIT_OK


def _fit_settings(args) -> dict:
    """FitSettings fields from the options, validated before any file is touched."""
    if args.mode == "rbf" and args.lam > 0:
        raise CliError("--lam > 0 needs --mode smoe (RBF kernels have no gates to sparsify); drop --lam or use "
                       "--mode smoe")
    settings = {"iters": args.iters, "lam": args.lam, "target_psnr": args.target_psnr,
                "target_corr": args.target_corr, "time_budget": args.time_budget, "tol": args.tol}
    FitSettings(**settings).validate()
    return settings


def _print_fit_summary(report: dict, outdir: Path) -> None:
    q = report
    psnr = "inf" if q["psnr"] is None else f"{q['psnr']:.2f}"
    ssim = "" if q["ssim"] is None else f", SSIM {q['ssim']:.4f}"
    lpips = "" if q["lpips"] is None else f", LPIPS {q['lpips']:.4f}"
    print(f"done after {q['iterations']} iterations (stop: {q['stop_reason']}), {q['fit_seconds']:.1f} s fit + "
          f"{q['init_seconds']:.2f} s init")
    print(f"  PSNR {psnr} dB{ssim}{lpips}")
    print(f"  kernels {q['kernels_initial']} -> {q['kernels_final']} ({q['kernels_per_tile']:.1f} per 16x16 tile), "
          f"renders in {q['render_ms']:.1f} ms")
    print(f"outputs in {outdir}/: {', '.join(FIT_OUTPUTS)}")
    print(f"next: smoe render {outdir / FIT_OUTPUTS[0]} --scale 2 -o {outdir / 'x2.png'}")


# ============================================================ fit-batch
def _add_fit_batch(sub, common) -> None:
    from .executor import BACKENDS

    p = sub.add_parser("fit-batch", parents=[common], help="fit many images, in parallel or on a Dask cluster",
                       description="Fit every image of the given files, folders and glob patterns as 'smoe fit' "
                       "would, on local workers or on an existing Dask cluster. A rerun skips each image whose "
                       "outputs are complete and whose input and settings are unchanged, so running the same "
                       "command again finishes an interrupted batch.",
                       epilog="Outputs: OUTDIR/<image name>/ with " + ", ".join(FIT_OUTPUTS) + " for each image; "
                       "OUTDIR/summary.csv and summary.md (one row per image: status, kernels, PSNR, SSIM, MS-SSIM, "
                       "LPIPS, seconds, error) and manifest.json. A failed image is recorded and the others are "
                       "still fitted; the exit status is then 2. Running across machines: docs/distributed.md.")
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="image files, folders (their image files) or quoted glob patterns such as 'frames/*.png'")
    _add_fit_options(p)
    p.add_argument("-o", "--output", metavar="OUTDIR", default="smoe-out",
                   help="output folder, created if missing; one subfolder per image (default: %(default)s)")
    where = p.add_argument_group("where the fits run")
    where.add_argument("--workers", type=_positive_int, default=None, metavar="N",
                       help="images fitted at the same time on this machine (default: one per core, at most one "
                            "per image)")
    where.add_argument("--threads", type=_positive_int, default=1, metavar="T",
                       help="numba and torch threads per worker; keep workers x T within the cores. Results are "
                            "identical for any number of workers at the same T (default: %(default)s)")
    where.add_argument("--scheduler", metavar="ADDR", default=None,
                       help="address of a running Dask scheduler, e.g. tcp://host:8786, whose workers fit the "
                            "images (they need smoe installed; start them with --nthreads 1)")
    where.add_argument("--backend", choices=BACKENDS, default="auto",
                       help="'inprocess': one image after the other in this process; 'processes': a local process "
                            "pool; 'dask': a Dask cluster; 'auto': in-process for one worker, else Dask "
                            "(default: %(default)s)")
    p.add_argument("--quiet", action="store_true", help="print nothing but errors and warnings (no progress bar)")
    p.set_defaults(run=_run_fit_batch)


def _run_fit_batch(args) -> int:
    from .batch import BATCH_FILES, BatchError, fit_batch
    from .executor import ExecutorError

    settings = _fit_settings(args)
    if args.scheduler is not None and args.workers is not None:
        raise CliError("--workers starts local workers and --scheduler uses a cluster's own; give only one of them")
    if args.scheduler is not None and args.backend not in ("auto", "dask"):
        raise CliError(f"--scheduler needs the dask backend; drop --backend {args.backend}")
    options = {"n_kernels": args.n_kernels, "mode": args.mode, "scope": args.scope, "init": args.init,
               "seed": args.seed, "init_options": dict(args.init_options or ()), **settings}
    outdir = Path(args.output)
    with _removed_on_failure(_prepare_outdir(outdir, BATCH_FILES)):
        try:
            with _sigterm_as_interrupt():
                result = fit_batch(args.inputs, outdir, options=options, workers=args.workers or "auto",
                                   scheduler=args.scheduler, threads_per_worker=args.threads, backend=args.backend,
                                   quiet=args.quiet)
        except (BatchError, ExecutorError) as exc:
            raise CliError(str(exc)) from exc
    if not args.quiet:
        _print_batch_summary(result)
    if result.failed:
        first = result.failed[0]
        raise CliError(f"{len(result.failed)} of {len(result.rows)} images failed, the first {first['image']}: "
                       f"{first['error']}; see {outdir / 'summary.md'}, fix or remove them and rerun to finish")
    return EXIT_OK


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """Let SIGTERM stop a batch as Ctrl-C does: summary written, workers shut down."""
    import signal

    def stop(signum, frame):
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, stop)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _print_batch_summary(result) -> None:
    fitted, seconds = result.count("fitted"), result.seconds
    rate = f" ({60 * fitted / seconds:.1f} images/min)" if fitted and seconds > 0 else ""
    print(f"done in {seconds:.1f} s: {fitted} fitted{rate}, {result.count('skipped')} unchanged (skipped), "
          f"{len(result.failed)} failed")
    psnrs = [row["psnr"] for row in result.rows if row["psnr"] is not None]
    if psnrs:
        print(f"  mean PSNR {sum(psnrs) / len(psnrs):.2f} dB over {len(psnrs)} images")
    print(f"outputs in {result.outdir}/<image>/; summary in {result.outdir / 'summary.md'}")


# =============================================================== render
def _add_render(sub, common) -> None:
    p = sub.add_parser("render", parents=[common], help="render a saved model at any resolution",
                       description="Render a model file to an image. The model is continuous, so any output size "
                       "works: the raster covers the area of the image it was fitted on.",
                       epilog=f"Outputs larger than {MAX_OUTPUT_PIXELS // 1_000_000} megapixels are refused.")
    p.add_argument("model", metavar="MODEL", help="model file written by 'smoe fit' (model.smoe.npz)")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--scale", type=_positive_float, default=None, metavar="F",
                      help="output size = fitted size x F, e.g. 2 for twice the resolution (default: 1)")
    size.add_argument("--size", type=_size, default=None, metavar="WxH",
                      help="exact output size in pixels, width x height, e.g. 1920x1080 (aspect may change)")
    p.add_argument("--sharpen", type=_positive_float, default=None, metavar="F",
                   help="multiply every kernel's bandwidth by F before rendering: F < 1 (e.g. 0.7) sharpens "
                        "edges, F > 1 smooths; tiles keep the fitted kernel lists (default: off)")
    p.add_argument("--scope", choices=SCOPES, default=None,
                   help="override the scope stored in the model (default: the model's)")
    p.add_argument("-o", "--output", metavar="OUT", required=True,
                   help="image file to write; the suffix picks the format (.png, .jpg, .tif, .bmp)")
    p.set_defaults(run=_run_render)


def _run_render(args) -> int:
    model, meta = load_model(args.model)
    extent = (meta["height"], meta["width"])
    h, w = output_size(extent, scale=args.scale, size=args.size)
    if h * w > MAX_OUTPUT_PIXELS:
        raise CliError(f"output of {w}x{h} = {h * w / 1e6:.0f} megapixels exceeds the limit of "
                       f"{MAX_OUTPUT_PIXELS // 1_000_000} megapixels; use a smaller --scale or --size")
    scope = args.scope or meta["scope"]
    out = Path(args.output)
    with _removed_on_failure(_prepare_output_file(out)):
        with torch.no_grad():
            pixels = render(model, h, w, mode=meta["mode"], scope=scope, extent=extent,
                            sharpen=args.sharpen or 1.0)
        write_image(out, pixels)
    print(f"wrote {out} ({w}x{h}, {len(model)} kernels, {meta['mode']}/{scope})")
    return EXIT_OK


# ================================================================= eval
def _add_eval(sub, common) -> None:
    p = sub.add_parser("eval", parents=[common], help="compare an image with a reference",
                       description="Print PSNR (dB), SSIM, MS-SSIM and LPIPS (AlexNet) of IMAGE against REFERENCE. "
                       "Metrics need a minimum size: SSIM 11 px, LPIPS 31 px, MS-SSIM more than 160 px per side; "
                       "smaller images report n/a (null in JSON). Images above one megapixel are measured "
                       "on four fixed 512x512 crops (SSIM, MS-SSIM, LPIPS; PSNR on the whole image).")
    p.add_argument("reference", metavar="REFERENCE", help="the original image")
    p.add_argument("image", metavar="IMAGE", help="the image to judge, same size and colour type")
    p.add_argument("--no-lpips", action="store_true", help="skip LPIPS, the slowest metric")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.set_defaults(run=_run_eval)


def _run_eval(args) -> int:
    reference, image = read_image(args.reference), read_image(args.image)
    if reference.shape != image.shape:
        raise CliError(f"{args.image} is {_shape_text(image)} but {args.reference} is {_shape_text(reference)}; "
                       "compare images of the same size and colour type")
    q = evaluate(reference, image, lpips=not args.no_lpips)
    print(json.dumps(q) if args.json else "\n".join(_quality_lines(q)))
    return EXIT_OK


def _shape_text(image: np.ndarray) -> str:
    return f"{image.shape[1]}x{image.shape[0]} {'RGB' if image.ndim == 3 else 'grey'}"


# ================================================================= info
def _add_info(sub, common) -> None:
    p = sub.add_parser("info", parents=[common], help="describe a model file",
                       description="Print what a model file holds: kernel count, channels, mode, scope, the size "
                       "of the image it was fitted on, format and writer version, kernels per tile, kernel "
                       "bandwidths and the fit settings.")
    p.add_argument("model", metavar="MODEL", help="model file written by 'smoe fit' (model.smoe.npz)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.set_defaults(run=_run_info)


def _run_info(args) -> int:
    model, meta = load_model(args.model)
    facts = _model_facts(model, meta)
    if args.json:
        print(json.dumps(facts, indent=2))
        return EXIT_OK
    bw = facts["bandwidth_px"]
    rows = [
        ("file", args.model),
        ("kernels", facts["kernels"]),
        ("channels", f"{facts['channels']} ({'RGB' if facts['channels'] == 3 else 'grey'})"),
        ("mode / scope", f"{facts['mode']} / {facts['scope']}"),
        ("fitted on", f"{facts['width']}x{facts['height']} pixels"),
        ("format", f"{meta['format']} version {facts['format_version']}, {facts['dtype']}, "
                   f"written by smoe {facts['smoe_version']}"),
        ("kernels/tile", f"{facts['kernels_per_tile']:.1f} (mean over 16x16 tiles at the fitted size)"),
        ("bandwidth", "n/a (no kernels)" if bw is None else
         f"median sigma {bw['median_sigma']:.2f} px (major axis {bw['median_major']:.2f}, minor "
         f"{bw['median_minor']:.2f}; major axes {bw['min_major']:.2f} to {bw['max_major']:.2f} px)"),
    ]
    for name, value in rows:
        print(f"{name:<13} {value}")
    print("settings" + ("      (none stored)" if not facts["settings"] else ""))
    for key, value in sorted(facts["settings"].items()):
        print(f"  {key:<17} {value}")
    return EXIT_OK


def _model_facts(model: Model, meta: dict) -> dict:
    h, w = meta["height"], meta["width"]
    return {
        "kernels": len(model), "channels": model.channels, "mode": meta["mode"], "scope": meta["scope"],
        "height": h, "width": w, "format_version": meta["format_version"], "smoe_version": meta["smoe_version"],
        "dtype": str(model.dtype).replace("torch.", ""),
        "kernels_per_tile": kernels_per_tile(model, h, w, mode=meta["mode"]),
        "bandwidth_px": _bandwidth(model), "settings": meta["settings"],
    }


def _bandwidth(model: Model) -> dict | None:
    """Statistics of the kernels' standard deviations along their principal axes, in pixels."""
    if len(model) == 0:
        return None
    axes = torch.linalg.eigvalsh(model.covariance.double()).clamp(min=0).sqrt().numpy()  # ascending: minor, major
    minor, major = axes[:, 0], axes[:, 1]
    return {"median_sigma": float(np.median(np.sqrt(minor * major))), "median_major": float(np.median(major)),
            "median_minor": float(np.median(minor)), "min_major": float(major.min()),
            "max_major": float(major.max())}


# ============================================================== denoise
def _add_denoise(sub, common) -> None:
    from . import denoising as dn

    p = sub.add_parser("denoise", parents=[common], help="denoise an image with averaged shifted models (MM-RSMoE)",
                       description="Fit several rasterized models to a noisy image, each with its 16x16 tile grid "
                       "shifted by a different offset and its own random start, and write the mean of their "
                       "renders. No noise level is needed: each model stops once its residual looks like fitted white "
                       "noise, and the kernel budget follows an estimate of the noise. The colour of an RGB image "
                       "comes from a few coarser models fitted at half resolution (--chroma-models).",
                       epilog="Time grows linearly with the number of models; --workers fits models in parallel "
                       "processes and does not change the result.")
    p.add_argument("noisy", metavar="NOISY", help="noisy image file (PNG, JPEG, TIFF, BMP; grey or RGB)")
    count = p.add_mutually_exclusive_group()
    count.add_argument("--models", type=_positive_int, default=None, metavar="H",
                       help=f"number of averaged models, 1 to {dn.MAX_MODELS}, e.g. 1, 4, 8, 16 or 64; 1, 4, 16 and "
                            f"64 use every shift of step 16, 8, 4 and 2 px, other counts spread their shifts evenly "
                            f"(default: {dn.DEFAULT_MODELS})")
    count.add_argument("--shift-step", type=_positive_int, default=None, metavar="S",
                       help="shift the tile grid in steps of S px (1, 2, 4, 8 or 16) along x and y: (16/S)^2 models")
    p.add_argument("--init", choices=available_initializers(), default="segment",
                   help="where each model's kernels start; 'segment' draws them inside MDBSCAN segments of the "
                        "noisy image (default: %(default)s)")
    p.add_argument("--threshold", type=_positive_float, default=dn.DEFAULT_THRESHOLD, metavar="D",
                   help="MDBSCAN colour threshold d_Th (RGB distance, 0-255 scale) for --init segment "
                        "(default: %(default)g)")
    p.add_argument("--area-power", type=_non_negative_float, default=dn.DEFAULT_AREA_POWER, metavar="P",
                   help="for --init segment: kernels per segment in proportion to its area to the power P, from 0 "
                        "(the same count in every segment) to 1 (the same density everywhere) (default: %(default)g)")
    p.add_argument("--chroma-models", type=_non_negative_int, default=dn.DEFAULT_CHROMA_MODELS, metavar="N",
                   help="RGB images: take the colour (not the brightness) from N coarser models fitted at half "
                        "resolution, which leave less colour noise; 0 takes it from the same models, as the R "
                        "paper does (default: %(default)s)")
    p.add_argument("--mode", choices=MODES, default="smoe",
                   help="regression function: 'smoe' gated mixture, 'rbf' sum of Gaussians (default: %(default)s)")
    p.add_argument("--sigma", type=_non_negative_float, default=None, metavar="S",
                   help="noise standard deviation on the 0-1 scale if known (e.g. 0.1 for 25.5/255); it sets the "
                        "default kernel count and when the colour models stop (default: estimated from the image)")
    p.add_argument("-n", "--kernels", dest="n_kernels", type=_positive_int, default=None, metavar="N",
                   help=f"initial kernels per model (default: one per {round(1 / dn.DEFAULT_DENSITY)} pixels)")
    p.add_argument("--iters", type=_positive_int, default=dn.DEFAULT_ITERS, metavar="N",
                   help="most gradient steps per model; many more start to reproduce the noise (default: %(default)s)")
    p.add_argument("--workers", type=_positive_int, default=None, metavar="N",
                   help="models fitted at the same time, one thread each (default: one per core, at most one per "
                        "model)")
    p.add_argument("--seed", type=int, default=0, help="model k starts from seed SEED + k (default: %(default)s)")
    p.add_argument("-o", "--output", metavar="OUT", required=True,
                   help="image file to write; the suffix picks the format (.png, .jpg, .tif, .bmp)")
    p.add_argument("--quiet", action="store_true", help="print nothing but errors and warnings")
    p.set_defaults(run=_run_denoise)


def _run_denoise(args) -> int:
    from .denoising import MAX_MODELS, default_kernels, denoise, estimate_noise, shift_offsets
    from .executor import ExecutorError, available_cores
    from .initializers.segment import check_area_power

    if args.sigma is not None and args.sigma > 1:
        raise CliError(f"--sigma {args.sigma:g} looks like the 0-255 scale; give it on the 0-1 scale, e.g. "
                       f"--sigma {args.sigma / 255:.3g}")
    offsets = shift_offsets(args.models, args.shift_step)  # a bad count or step fails before any work
    try:
        check_area_power(args.area_power)
    except ValueError as exc:
        raise CliError(f"--area-power {args.area_power:g} is out of range; give a number from 0 (the same kernel "
                       "count in every segment) to 1 (the same density everywhere)") from exc
    if args.chroma_models > MAX_MODELS:
        raise CliError(f"--chroma-models {args.chroma_models} is more than the {MAX_MODELS} distinct shifts of the "
                       f"tile grid; give 0 to {MAX_MODELS}")
    workers = args.workers or min(available_cores(), len(offsets))
    noisy = read_image(args.noisy)
    h, w = noisy.shape[:2]
    try:
        sigma = estimate_noise(noisy) if args.sigma is None else args.sigma
    except ValueError as exc:
        raise CliError(f"{args.noisy} ({w}x{h} pixels) is too small to estimate its noise level; give it with "
                       "--sigma") from exc
    n_kernels = args.n_kernels or default_kernels(h, w, sigma)
    _check_kernel_count(n_kernels, h, w, args.noisy)
    out = Path(args.output)
    start = time.perf_counter()
    with _removed_on_failure(_prepare_output_file(out)):
        if not args.quiet:
            source = "estimated" if args.sigma is None else "given"
            models = f"{len(offsets)} model{'s' * (len(offsets) != 1)}"
            colour = f", colour from {args.chroma_models} half-resolution models" \
                if args.chroma_models and noisy.ndim == 3 else ""
            print(f"denoising {args.noisy} ({w}x{h}), noise sigma {sigma:.4f} ({source}): {models} of {n_kernels} "
                  f"kernels{colour}, {args.mode}, init {args.init}, at most {args.iters} iterations, "
                  f"{workers} worker(s)")
        try:
            with _sigterm_as_interrupt():
                clean = denoise(noisy, len(offsets), init=args.init, threshold=args.threshold,
                                area_power=args.area_power, chroma_models=args.chroma_models, mode=args.mode,
                                n_kernels=n_kernels, iters=args.iters, sigma=sigma, seed=args.seed,
                                workers=workers, quiet=args.quiet)
        except ExecutorError as exc:
            raise CliError(str(exc)) from exc
        write_image(out, clean)
    if not args.quiet:
        print(f"wrote {out} ({w}x{h}) after {time.perf_counter() - start:.1f} s")
    return EXIT_OK


# ============================================================== upscale
def _add_upscale(sub, common) -> None:
    from . import superres as sr

    p = sub.add_parser("upscale", parents=[common], help="fit an image and render it larger (super-resolution)",
                       description="Fit a model to an image and render it on a finer pixel raster covering the same "
                       "area; --sharpen below 1 narrows every kernel for crisper edges.",
                       epilog=f"Outputs larger than {MAX_OUTPUT_PIXELS // 1_000_000} megapixels are refused. To keep "
                       "the model, use 'smoe fit' and then 'smoe render' instead.")
    p.add_argument("image", metavar="IMAGE", help="image file to enlarge (PNG, JPEG, TIFF, BMP; grey or RGB)")
    size = p.add_mutually_exclusive_group(required=True)
    size.add_argument("--scale", type=_positive_float, default=None, metavar="F",
                      help="output size = input size x F, any factor > 0, e.g. 4 or 2.5")
    size.add_argument("--size", type=_size, default=None, metavar="WxH",
                      help="exact output size in pixels, width x height, e.g. 1920x1080 (aspect may change)")
    p.add_argument("--sharpen", type=_positive_float, default=1.0, metavar="F",
                   help="multiply every kernel's bandwidth by F before rendering: F < 1 (e.g. 0.9) sharpens, "
                        "F > 1 smooths (default: %(default)g, off)")
    p.add_argument("-n", "--kernels", dest="n_kernels", type=_positive_int, default=None, metavar="N",
                   help=f"initial kernels, at most the pixel count (default: {sr.DEFAULT_DENSITY:g} per input "
                        "pixel)")
    p.add_argument("--iters", type=_positive_int, default=sr.DEFAULT_ITERS, metavar="N",
                   help="gradient steps of the fit (default: %(default)s)")
    p.add_argument("--mode", choices=MODES, default="smoe",
                   help="regression function: 'smoe' gated mixture, 'rbf' sum of Gaussians (default: %(default)s)")
    p.add_argument("--init", choices=available_initializers(), default=sr.DEFAULT_INIT,
                   help="where the kernels start (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the initializer (default: %(default)s)")
    p.add_argument("-o", "--output", metavar="OUT", required=True,
                   help="image file to write; the suffix picks the format (.png, .jpg, .tif, .bmp)")
    p.add_argument("--quiet", action="store_true", help="print nothing but errors (no progress bar)")
    p.set_defaults(run=_run_upscale)


def _run_upscale(args) -> int:
    from .superres import default_kernels, target_size, upscale

    image = read_image(args.image)
    h, w = image.shape[:2]
    out_h, out_w = target_size((h, w), scale=args.scale, size=args.size)
    n_kernels = args.n_kernels or default_kernels(h, w)
    _check_kernel_count(n_kernels, h, w, args.image)
    out = Path(args.output)
    with _removed_on_failure(_prepare_output_file(out)):
        big = upscale(image, size=(out_h, out_w), sharpen=args.sharpen, n_kernels=n_kernels, mode=args.mode,
                      iters=args.iters, init=args.init, seed=args.seed, quiet=args.quiet)
        write_image(out, big)
    if not args.quiet:
        print(f"wrote {out} ({out_w}x{out_h} from {w}x{h}, {n_kernels} kernels, {args.mode})")
    return EXIT_OK


# ============================================================== segment
def _add_segment(sub, common) -> None:
    p = sub.add_parser("segment", parents=[common], help="MDBSCAN segmentation of an image, as a picture",
                       description="Segment an image with MDBSCAN (the segmentation behind the 'segment' and "
                       "'adaptive' initializers) and draw the segment boundaries over it.")
    p.add_argument("image", metavar="IMAGE", help="image file (PNG, JPEG, TIFF, BMP; grey or RGB)")
    p.add_argument("--threshold", type=_positive_float, default=40.0, metavar="D",
                   help="colour distance on the 0-255 scale below which neighbouring pixels join a segment; "
                        "larger gives fewer, bigger segments (default: %(default)g)")
    p.add_argument("--labels", metavar="FILE", default=None,
                   help="also write the label map as a 16-bit PNG or TIFF whose pixel values are the labels 1..N")
    p.add_argument("-o", "--output", metavar="OUT", required=True,
                   help="picture to write: boundaries over the image; the suffix picks the format")
    p.add_argument("--quiet", action="store_true", help="print nothing but errors")
    p.set_defaults(run=_run_segment)


def _run_segment(args) -> int:
    from .segment import draw_segmentation, mdbscan, segment_stats

    image = read_image(args.image)
    labels = mdbscan(image, args.threshold)
    n = int(labels.max())
    if args.labels is not None and n > 65535:
        raise CliError(f"{n} segments do not fit a 16-bit label image; raise --threshold")
    outs = [Path(args.output)] + ([Path(args.labels)] if args.labels else [])
    with _removed_on_failure([d for out in outs for d in _prepare_output_file(out)]):
        write_image(outs[0], draw_segmentation(image, labels))
        if args.labels:
            write_image(outs[1], labels / 65535.0, bits=16)
    if not args.quiet:
        stats = segment_stats(labels)
        print(f"{n} segments (threshold {args.threshold:g}), median bounding box side "
              f"{stats['median_side']:.0f} px; wrote {', '.join(map(str, outs))}")
    return EXIT_OK


#: Subcommand name -> function adding its parser to the subparsers (with the shared options parent).
COMMANDS: dict[str, Callable] = {"fit": _add_fit, "fit-batch": _add_fit_batch, "render": _add_render,
                                 "eval": _add_eval, "info": _add_info, "denoise": _add_denoise,
                                 "upscale": _add_upscale, "segment": _add_segment}


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
