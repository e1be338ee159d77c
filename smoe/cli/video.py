"""``smoe fit-video``, and ``smoe render`` of a video model: space-time kernels over a clip.

Parsing the options loads neither torch nor numba: the defaults shown in the
help are those of :class:`smoe.video.VideoFitSpec` (a test keeps them equal),
and options left out are left to it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from ..outputnames import VIDEO_FIT_OUTPUTS
from .guards import _prepare_outdir, _removed_on_failure
from .options import (EXIT_OK, CliError, _checked, _float, _int, _non_negative_float, _non_negative_int,
                      _positive_float, _positive_int)

#: The reconstructed frames fit-video writes, and the files a rerun with fewer frames must remove.
_FRAME_FILE = re.compile(r"frame_\d{5,}\.png")

#: Highest --fps, that of :data:`smoe.video.io.MAX_FPS` (kept equal by a test; io loads PyAV).
_MAX_FPS = 1000.0
_fps = _checked(_float, lambda v: 0 < v <= _MAX_FPS, "must be a frame rate above 0 and at most 1000, got {text}")
_tile_t = _checked(_int, lambda v: 1 <= v <= 64, "must be a whole number of frames from 1 to 64, got {text}")


# ============================================================ fit-video
def _add_fit_video(p) -> None:
    from ..spec import MODES

    p.description = ("Fit space-time steered kernels (3D, over x, y and t) to a video clip, window by window, and "
                     "write the model, the reconstructed frames, a preview video, quality metrics and figures to "
                     "an output directory.")
    p.epilog = ("Outputs (existing files are replaced): " + ", ".join(VIDEO_FIT_OUTPUTS) + " and the reconstructed "
                "frames frame_00000.png, ... metrics.json holds PSNR and SSIM per frame and their means, kernel "
                "counts, seconds per frame, the windows, versions, the machine and the fit settings. They appear "
                "together or not at all. Render the model at another frame rate or size with 'smoe render'.")
    p.add_argument("clip", metavar="CLIP",
                   help="video file (mp4, mkv, avi, webm, mov: anything FFmpeg decodes) or folder of frame images "
                        "(PNG, JPEG, TIFF, ...; natural order)")
    p.add_argument("-n", "--kernels", dest="n_kernels", type=_positive_int, required=True, metavar="N",
                   help="kernels over the whole clip, shared by its windows in proportion to their frames; at most "
                        "the clip's voxels (frames x pixels)")
    p.add_argument("--frames", metavar="A:B", default=None,
                   help="fit frames A to B-1 only, as a Python slice: 0:32, 10: (to the end) or :60 "
                        "(default: every frame)")
    p.add_argument("--fps", type=_fps, default=None, metavar="F",
                   help="frame rate to record with the model (default: the file's; 25 for a folder of frames)")
    p.add_argument("--mode", choices=MODES, default=None,
                   help="regression function: 'smoe' gated mixture, 'rbf' weighted sum of Gaussians "
                        "(default: smoe)")
    p.add_argument("--iters", type=_positive_int, default=None, metavar="N",
                   help="most gradient steps per window (default: 2000)")
    p.add_argument("--time-budget", type=_positive_float, default=None, metavar="S",
                   help="seconds of fitting for the whole clip, initialization included; each window ends by "
                        "its share of frames, and time one leaves over goes to the next (default: no limit)")
    p.add_argument("--min-gain", type=_non_negative_float, default=None, metavar="DB_PER_S",
                   help="stop a window once its PSNR gains less than this many dB per second; 0 turns the rule off "
                        "(default: 0.01)")
    p.add_argument("--window", type=_positive_int, default=None, metavar="F",
                   help="frames per window, best a multiple of --tile-t (default: as many as 16 M voxels hold, "
                        "spread evenly)")
    p.add_argument("--tile-t", type=_tile_t, default=None, metavar="T",
                   help="frames per space-time tile of 16x16 pixels, 1 to 64 (default: 4)")
    p.add_argument("--min-sigma-t", type=_positive_float, default=None, metavar="FRAMES",
                   help="floor on every kernel's standard deviation along t at a fixed pixel, in frames; 0.5 "
                        "renders better between frames, for --fps-scale (default: no floor)")
    p.add_argument("--lam", type=_non_negative_float, default=None, metavar="L",
                   help="L1 weight on the gates; > 0 prunes useless kernels (smoe mode only) (default: 0)")
    p.add_argument("--seed", type=_non_negative_int, default=None, metavar="S",
                   help="seed of the initialization of every window (default: 0)")
    p.add_argument("-o", "--output", metavar="OUTDIR", default=None,
                   help="output directory, created if missing (default: smoe-out/<clip name>)")
    p.add_argument("--quiet", action="store_true", help="print nothing but errors (no progress bar, no summary)")
    p.set_defaults(run=_run_fit_video)


def _run_fit_video(args) -> int:
    from ..video.io import MAX_FPS, frame_names, read_video

    frames = _frame_range(args.frames)
    if args.output == "":
        raise CliError("-o '' names no output directory; give a folder, e.g. -o smoe-out/clip, or leave -o out")
    if args.mode == "rbf" and args.lam:
        raise CliError("--lam prunes SMoE gates, which rbf mode has not; use --mode smoe or drop --lam")
    clip_path = Path(args.clip)
    outdir = Path(args.output) if args.output else Path("smoe-out") / (clip_path.stem or "clip")
    clip = read_video(clip_path, frames, fps=args.fps)
    count, height, width, channels = clip.frames.shape
    if clip.fps > MAX_FPS:
        raise CliError(f"{clip_path}: frame rate {clip.fps:g} fps is above {MAX_FPS:g}, which no preview holds; "
                       "give the real rate with --fps")
    from ..atomic import write_output_folder  # torch and numba load once the clip is known to be good
    from ..video.fitting import fit_video
    from ..video.outputs import video_fit_outputs

    spec = _video_spec(args, clip)
    # The folder itself is made by the final rename, so that every output appears at once.
    with _removed_on_failure(_prepare_outdir(outdir, (*VIDEO_FIT_OUTPUTS, *frame_names(count)), create=False)):
        if not args.quiet:
            colour = "RGB" if channels == 3 else "grey"
            print(f"fitting {spec.n_kernels} kernels ({spec.mode}, windows of {spec.window} frames) to "
                  f"{clip_path}: {count} frames of {width}x{height} {colour} at {clip.fps:g} fps")
        result = fit_video(clip.frames, fps=clip.fps, spec=spec, quiet=args.quiet)
        files, report = video_fit_outputs(result, clip, clip_path=clip_path, first_frame=frames[0])
        write_output_folder(outdir, files)
    _remove_stale_frames(outdir, files)
    if not args.quiet:
        _print_video_summary(report, outdir)
    return EXIT_OK


def _frame_range(text: str | None) -> tuple[int, int | None]:
    from ..video.io import parse_frames

    if text is None:
        return 0, None
    try:
        return parse_frames(text)
    except ValueError as exc:
        raise CliError(str(exc)) from None


def _video_spec(args, clip):
    """The fit settings the options give, checked against the clip (kernels at most its voxels)."""
    from ..video.fitting import VideoFitSpec

    given = {"n_kernels": args.n_kernels, "mode": args.mode, "iters": args.iters, "time_budget": args.time_budget,
             "window": args.window, "tile_t": args.tile_t, "lam": args.lam, "seed": args.seed,
             "min_sigma_t": args.min_sigma_t}
    fields = {name: value for name, value in given.items() if value is not None}
    if args.min_gain is not None:
        fields["min_gain"] = args.min_gain or None  # 0 turns the rule off, as for smoe fit
    count, height, width = clip.frames.shape[:3]
    try:
        return VideoFitSpec(**fields).validate((count, height, width))
    except ValueError as exc:
        raise CliError(f"{clip.source} ({count} frames of {width}x{height}): {exc}") from exc


def _remove_stale_frames(outdir: Path, files: dict[str, bytes]) -> None:
    """Remove the frames an earlier, longer fit left in ``outdir``, so that its frames are this fit's only.

    After the new set is complete: a kill in between leaves extra frames, never missing ones.
    """
    for path in outdir.iterdir():
        if _FRAME_FILE.fullmatch(path.name) and path.name not in files and path.is_file():
            path.unlink()


def _print_video_summary(report: dict, outdir: Path) -> None:
    q = report
    psnr = "inf" if q["psnr"] is None else f"{q['psnr']:.2f}"
    ssim = "" if q["ssim"] is None else f", SSIM {q['ssim']:.4f}"
    count = q["clip"]["count"]
    windows = len(q["windows"])
    print(f"done in {q['seconds']:.1f} s ({q['seconds_per_frame']:.2f} s per frame, {windows} "
          f"window{'s' if windows != 1 else ''})")
    print(f"  mean PSNR {psnr} dB{ssim} over {count} frames")
    print(f"  kernels {q['kernels_initial']} -> {q['kernels_final']}")
    print(f"outputs in {outdir}/: {', '.join(VIDEO_FIT_OUTPUTS)}, frame_00000.png ...")
    print(f"next: smoe render {outdir / VIDEO_FIT_OUTPUTS[0]} --fps-scale 2 -o {outdir / 'x2fps.mp4'}")


# ====================================================== render (video)
def _run_render_video(args, arrays: dict, meta: dict) -> int:
    """``smoe render`` of a video model file: a preview video or a folder of PNG frames."""
    for option, value in (("--sharpen", args.sharpen), ("--scope", args.scope)):
        if value is not None:
            raise CliError(f"{option} applies to image models only; {args.model} is a video model (3D kernels "
                           f"over x, y, t); drop {option}")
    from ..video.io import MAX_FPS, VIDEO_SUFFIXES, frame_names, write_frames, write_video

    out, folder = _video_target(args.output, VIDEO_SUFFIXES)
    fps_scale = 1.0 if args.fps_scale is None else args.fps_scale
    from ..video.modelfile import fitted_video_from_arrays  # loads torch

    fitted = fitted_video_from_arrays(args.model, arrays, meta)
    times, (h, w) = fitted.output(fps_scale, scale=args.scale, size=args.size)  # the limits, before any output
    fps = fitted.fps * fps_scale
    if not folder and fps > MAX_FPS:
        raise CliError(f"{fitted.fps:g} fps x {fps_scale:g} is {fps:g} fps, above the {MAX_FPS:g} a video holds; "
                       "use a smaller --fps-scale or write PNG frames to a folder")
    created = _prepare_outdir(out, frame_names(len(times)), create=False) if folder else _prepare_outdir(out.parent)
    with _removed_on_failure(created):
        frames = fitted.render(fps_scale, size=(h, w))
        if folder:
            write_frames(out, frames)
        else:
            write_video(out, frames, fps)
    what = f"{len(times)} PNG frames" if folder else f"{len(times)} frames at {fps:g} fps"
    print(f"wrote {out} ({what} of {w}x{h}, {len(fitted.model)} kernels, {fitted.mode})")
    return EXIT_OK


def _video_target(text: str, suffixes) -> tuple[Path, bool]:
    """``-o`` of a video render: (path, True for a folder of frames), or a CliError for anything else."""
    if not text:
        raise CliError("-o '' names no output; give a video file (e.g. -o clip.mp4) or a folder (e.g. -o frames/)")
    path = Path(text)
    if text.endswith(("/", os.sep)) or path.is_dir() or not path.suffix:
        return path, True
    if path.suffix.lower() in suffixes:
        return path, False
    raise CliError(f"{path}: a video model renders to a video ({' or '.join(suffixes)}) or to a folder of PNG "
                   f"frames (a path without suffix, or ending in /), not to {path.suffix!r}")
