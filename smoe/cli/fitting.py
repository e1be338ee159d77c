"""``smoe fit`` and ``smoe fit-batch``: fitting one image or many."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..outputnames import FIT_OUTPUTS
from .guards import _prepare_outdir, _removed_on_failure, _sigterm_as_interrupt
from .options import (EXIT_OK, CliError, _correlation, _kernel_count, _key_value, _non_negative_float,
                      _positive_float, _positive_int, _target_psnr, _tile_size)


# ================================================================== fit
def _add_fit(p) -> None:
    p.description = ("Fit steered kernels to an image by gradient descent and write the model, its "
                     "reconstruction, quality metrics and figures to an output directory.")
    p.epilog = ("Outputs (existing files are replaced): " + ", ".join(FIT_OUTPUTS) + ". "
                "metrics.json holds PSNR/SSIM/MS-SSIM/LPIPS, kernel counts, timings, versions and "
                "the fit spec; history.csv the logged iterations. They appear together or not at all.")
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
    from ..initializers import available as available_initializers
    from ..spec import MODES, SCOPES, TARGET_CAP_DENSITY, TARGET_START_DENSITY, FitSpec

    defaults = FitSpec()
    p.add_argument("-n", "--kernels", dest="n_kernels", type=_kernel_count, default=argparse.SUPPRESS,
                   metavar="N",
                   help="number of kernels, at most the pixel count; with --target-psnr the most kernels the model "
                        "may grow to; 'auto' lets initializers that choose their own count (adaptive) do so "
                        f"(default: {defaults.n_kernels}; with --target-psnr, grown from 1 per "
                        f"{round(1 / TARGET_START_DENSITY)} pixels to at most 1 per {round(1 / TARGET_CAP_DENSITY)})")
    p.add_argument("--mode", choices=MODES, default=defaults.mode,
                   help="regression function: 'smoe' gated mixture, 'rbf' weighted sum of Gaussians "
                        "(default: %(default)s)")
    p.add_argument("--scope", choices=SCOPES, default=defaults.scope,
                   help="'raster': each tile (16x16, see --tile-size) sums only the kernels that reach it (fast); "
                        "'global': every kernel acts on every pixel (cost grows with kernels x pixels) "
                        "(default: %(default)s)")
    p.add_argument("--tile-size", type=_tile_size, default=defaults.tile_size, metavar="PX",
                   help="side of the raster tiles: 4, 8, 16, 32 or 64 pixels (default: %(default)s)")
    p.add_argument("--iters", type=_positive_int, default=defaults.iters, metavar="N",
                   help="maximum number of gradient steps (default: %(default)s)")
    p.add_argument("--target-psnr", type=_target_psnr, default=None, metavar="DB",
                   help="grow the model from a few kernels where the error is largest until the PSNR reaches DB "
                        "decibels, 10 to 60, then remove the kernels it needs least while it still meets DB "
                        "(default: no target)")
    p.add_argument("--min-gain", type=_non_negative_float, default=defaults.min_gain, metavar="DB_PER_S",
                   help="stop once the PSNR gained less than this many dB per second over the last quarter of the "
                        "fit; 0 turns the rule off (default: %(default)s)")
    p.add_argument("--grow-start", type=_non_negative_float, default=defaults.grow_start, metavar="SHARE",
                   help="start with this share of the kernels and add the rest where the error is largest; 1 or 0 "
                        "starts with all of them (default: %(default)s)")
    p.add_argument("--max-reach", type=_non_negative_float, default=defaults.max_reach, metavar="SPACINGS",
                   help="longest kernel reach (major semi-axis of the 99 %% ellipse) in kernel spacings "
                        "sqrt(pixels / kernels), which keeps tile lists short; 0 leaves kernels free "
                        "(default: %(default)s)")
    p.add_argument("--target-corr", type=_correlation, default=None, metavar="C",
                   help="stop once the residual's correlation with itself shifted by one pixel falls to C; a "
                        "little below 0 (e.g. -0.04) stops a fit to a noisy image once it starts copying the noise "
                        "(default: off)")
    p.add_argument("--time-budget", type=_positive_float, default=None, metavar="S",
                   help="stop after S seconds of fitting (default: no limit)")
    p.add_argument("--tol", type=_non_negative_float, default=None, metavar="T",
                   help="stop when the best loss improves by less than the fraction T between two log points, "
                        "e.g. 1e-4 (default: off)")
    p.add_argument("--lam", type=_non_negative_float, default=defaults.lam, metavar="L",
                   help="L1 weight on the gates; > 0 prunes useless kernels (smoe mode only; try 1e-5 to 1e-4) "
                        "(default: %(default)s)")
    p.add_argument("--init", choices=available_initializers(), default=defaults.init,
                   help="where the kernels start (default: %(default)s)")
    p.add_argument("--init-option", dest="init_options", action="append", type=_key_value, default=None,
                   metavar="KEY=VALUE", help="option for the initializer, repeatable, e.g. --init-option "
                   "threshold=50 --init-option target_psnr=32 (see the initializer's docstring)")
    p.add_argument("--seed", type=int, default=defaults.seed, help="seed of the initializer (default: %(default)s)")


def _run_fit(args) -> int:
    from ..imageio import default_image_path, read_image

    spec = _fit_spec(args)
    image_path = Path(args.image) if args.image else default_image_path()
    if args.output == "":
        raise CliError("-o '' names no output directory; give a folder, e.g. -o smoe-out/run1, or leave -o out")
    outdir = Path(args.output) if args.output else Path("smoe-out") / image_path.stem
    image = read_image(image_path)
    h, w = image.shape[:2]
    spec = _growth_for(spec, args, h, w)
    _validate_for(spec, image.shape, image_path)
    from ..atomic import write_output_folder
    from ..fitting import fit  # torch and numba load once the arguments and the image are known to be good
    from ..outputs import fit_outputs

    # The folder itself is made by the final rename, so that every output appears at once.
    with _removed_on_failure(_prepare_outdir(outdir, FIT_OUTPUTS, create=False)):
        if not args.quiet:
            colour = "RGB" if image.ndim == 3 else "grey"
            print(f"fitting {spec.n_kernels or 'auto'} kernels ({spec.mode}, {spec.scope}, init {spec.init}) to "
                  f"{image_path} ({w}x{h} {colour})")
        result = fit(image, spec=spec, quiet=args.quiet)
        files, report = fit_outputs(result.fitted, image, result.history, image_path=image_path,
                                    run=result.run_facts())
        write_output_folder(outdir, files)
    if spec.target_psnr is not None and result.stop_reason != "target_psnr":
        print(f"smoe: target {spec.target_psnr:g} dB not reached: best {report['psnr']:.2f} dB with "
              f"{report['kernels_final']} kernels (stop: {result.stop_reason}); wrote that model", file=sys.stderr)
    if not args.quiet:
        _print_fit_summary(report, outdir)
    return EXIT_OK


def _fit_spec(args):
    """The fit spec the options give, validated before any file is touched."""
    from ..spec import FitSpec

    n_kernels = getattr(args, "n_kernels", FitSpec.n_kernels)
    return FitSpec(n_kernels=n_kernels, mode=args.mode, scope=args.scope, init=args.init,
                   init_options=dict(args.init_options or ()), seed=args.seed, iters=args.iters, lam=args.lam,
                   target_psnr=args.target_psnr, target_corr=args.target_corr, time_budget=args.time_budget,
                   tol=args.tol, min_gain=args.min_gain or None, max_reach=args.max_reach or None,
                   grow_start=args.grow_start or None, tile_size=args.tile_size).validate()


def _growth_for(spec, args, height: int, width: int):
    """With --target-psnr the model grows: from a few kernels up to -n, or to a cap set by the image size."""
    if spec.target_psnr is None or spec.n_kernels is None and hasattr(args, "n_kernels"):
        return spec
    return spec.growing((height, width), getattr(args, "n_kernels", None))


def _validate_for(spec, shape, path) -> None:
    """The rules that need the image (kernels <= pixels), with its name in the message."""
    try:
        spec.validate(shape)
    except ValueError as exc:
        raise CliError(f"{path} ({shape[1]}x{shape[0]} pixels): {exc}") from exc


def _print_fit_summary(report: dict, outdir: Path) -> None:
    q = report
    psnr = "inf" if q["psnr"] is None else f"{q['psnr']:.2f}"
    ssim = "" if q["ssim"] is None else f", SSIM {q['ssim']:.4f}"
    lpips = "" if q["lpips"] is None else f", LPIPS {q['lpips']:.4f}"
    print(f"done after {q['iterations']} iterations (stop: {q['stop_reason']}), {q['fit_seconds']:.1f} s fit + "
          f"{q['init_seconds']:.2f} s init")
    print(f"  PSNR {psnr} dB{ssim}{lpips}")
    tile = q["spec"]["tile_size"]
    print(f"  kernels {q['kernels_initial']} -> {q['kernels_final']} ({q['kernels_per_tile']:.1f} per {tile}x{tile} "
          f"tile), renders in {q['render_ms']:.1f} ms")
    print(f"outputs in {outdir}/: {', '.join(FIT_OUTPUTS)}")
    print(f"next: smoe render {outdir / FIT_OUTPUTS[0]} --scale 2 -o {outdir / 'x2.png'}")


# ============================================================ fit-batch
def _add_fit_batch(p) -> None:
    from ..executor import BACKENDS

    p.description = ("Fit every image of the given files, folders and glob patterns as 'smoe fit' "
                     "would, on local workers or on an existing Dask cluster. A rerun skips each image whose "
                     "outputs are complete and whose input and settings are unchanged, so running the same "
                     "command again finishes an interrupted batch.")
    p.epilog = ("Outputs: OUTDIR/<image name>/ with " + ", ".join(FIT_OUTPUTS) + " for each image; "
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
    spec = _fit_spec(args)
    if args.scheduler is not None and args.workers is not None:
        raise CliError("--workers starts local workers and --scheduler uses a cluster's own; give only one of them")
    if args.scheduler is not None and args.backend not in ("auto", "dask"):
        raise CliError(f"--scheduler needs the dask backend; drop --backend {args.backend}")
    if args.output == "":
        raise CliError("-o '' names no output folder; give one, e.g. -o smoe-out, or leave -o out")
    from ..batch import BATCH_FILES, BatchError, fit_batch  # loads torch: after the checks of the arguments
    from ..executor import ExecutorError

    outdir = Path(args.output)
    with _removed_on_failure(_prepare_outdir(outdir, BATCH_FILES)):
        try:
            with _sigterm_as_interrupt():
                result = fit_batch(args.inputs, outdir, options=spec, workers=args.workers or "auto",
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


def _print_batch_summary(result) -> None:
    fitted, seconds = result.count("fitted"), result.seconds
    rate = f" ({60 * fitted / seconds:.1f} images/min)" if fitted and seconds > 0 else ""
    print(f"done in {seconds:.1f} s: {fitted} fitted{rate}, {result.count('skipped')} unchanged (skipped), "
          f"{len(result.failed)} failed")
    psnrs = [row["psnr"] for row in result.rows if row["psnr"] is not None]
    if psnrs:
        print(f"  mean PSNR {sum(psnrs) / len(psnrs):.2f} dB over {len(psnrs)} images")
    print(f"outputs in {result.outdir}/<image>/; summary in {result.outdir / 'summary.md'}")
