"""The files a video fit leaves behind, and the quality figures they report, built in memory.

``smoe fit-video`` writes, as ``smoe fit`` does for an image
(:mod:`smoe.outputs`), one folder whose files appear together or not at
all (:func:`smoe.atomic.write_output_folder`, ``metrics.json`` last):

* ``model.smoe.npz``: the space-time model (:mod:`smoe.video.modelfile`);
* ``frame_00000.png``, ...: the reconstructed frames, 8-bit PNG;
* ``reconstruction.mp4``: the same frames as an H.264 preview at the clip's rate;
* ``metrics.json``: PSNR and SSIM of every frame and their means
  (:func:`smoe.metrics.evaluate`, the quality function of all of smoe),
  kernels, timings, windows, the resolved fit spec, versions and the machine;
* ``history.csv``: the logged steps of every window;
* ``psnr_per_frame.png`` and ``kernels_xt.png``: the figures of
  :mod:`smoe.video.plots`.

The frames lie flat beside the other files because an output folder holds
files, not subfolders; :func:`smoe.video.io.frame_names` gives their names.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .. import metrics
from ..outputnames import VIDEO_FIT_OUTPUTS
from ..outputs import history_csv, machine, versions
from .fitting import VideoFitResult
from .io import Clip, encode_frames, encode_video
from .modelfile import video_model_file_bytes

__all__ = ["video_fit_outputs", "VIDEO_FIT_OUTPUTS"]

_LABELS = {"smoe": "3D SMoE", "rbf": "3D RBF"}


def video_fit_outputs(result: VideoFitResult, clip, *, clip_path, first_frame: int = 0,
                      ) -> tuple[dict[str, bytes], dict]:
    """Every output of a video fit as bytes, and the metrics.json content.

    Parameters
    ----------
    result : VideoFitResult
        What :func:`smoe.video.fit_video` returned for ``clip``.
    clip : Clip or (F, H, W, C) array
        The frames it was fitted on, floats in [0, 1].
    clip_path : str or os.PathLike
        Where the clip came from, recorded in metrics.json.
    first_frame : int
        Number, in the source, of the clip's first frame (the start of ``--frames``).

    Returns
    -------
    files : dict of str to bytes
        :data:`~smoe.outputnames.VIDEO_FIT_OUTPUTS` and one PNG per frame
        (:func:`smoe.video.io.frame_names`); ``metrics.json`` last.
    report : dict
        The content of ``metrics.json``.  ``psnr`` and ``ssim`` are the means
        of ``psnr_per_frame`` and ``ssim_per_frame``; ``psnr_clip`` is the
        PSNR of the mean squared error over all frames.  As in
        :func:`smoe.metrics.evaluate`, a PSNR is None where a frame is
        reproduced exactly (infinite) and an SSIM where a frame is smaller
        than its window (11 pixels a side).

    Examples
    --------
    >>> from smoe.video import fit_video
    >>> clip = np.random.default_rng(0).random((4, 16, 16, 3)).astype(np.float32)
    >>> result = fit_video(clip, 60, iters=5)
    >>> files, report = video_fit_outputs(result, clip, clip_path="clip.mp4")
    >>> len(files), len(report["psnr_per_frame"]), report["kernels_final"] == len(result.fitted.model)
    (10, 4, True)
    """
    frames = clip.frames if isinstance(clip, Clip) else np.asarray(clip)
    if frames.ndim == 3:
        frames = frames[..., None]
    recon = result.reconstruction
    if frames.shape != recon.shape:
        raise ValueError(f"the clip has shape {frames.shape} but the fit reconstructed {recon.shape}; "
                         "pass the clip the result was fitted on")
    report = _report(result, frames, recon, clip_path, first_frame)
    files = {
        "model.smoe.npz": video_model_file_bytes(result.fitted),
        **encode_frames(recon, what="reconstruction"),
        "reconstruction.mp4": encode_video(recon, result.fitted.fps),
        "history.csv": history_csv(result.history),
        **_figures(result, frames, report, clip_path),
        "metrics.json": (json.dumps(report, indent=2) + "\n").encode(),
    }
    return files, report


def _report(result: VideoFitResult, frames: np.ndarray, recon: np.ndarray, clip_path, first_frame: int) -> dict:
    count, height, width, channels = frames.shape
    fitted = result.fitted
    quality = [metrics.evaluate(frames[f], recon[f], lpips=False) for f in range(count)]
    psnrs = [q["psnr"] for q in quality]
    ssims = [q["ssim"] for q in quality]
    # PSNR over the whole clip at once: the frames stacked into one tall image.
    whole = metrics.psnr(frames.reshape(count * height, width, channels), recon.reshape(count * height, width, channels))
    return {
        "clip": {"path": str(Path(clip_path).resolve()), "frames": [int(first_frame), int(first_frame) + count],
                 "count": count, "width": width, "height": height, "channels": channels, "fps": fitted.fps},
        "psnr": _mean(psnrs),
        "ssim": _mean(ssims),
        "psnr_clip": whole if np.isfinite(whole) else None,
        "psnr_per_frame": psnrs,
        "ssim_per_frame": ssims,
        # frames above a megapixel measure SSIM on fixed crops, as images do (smoe.metrics.crop_boxes)
        "ssim_crops": quality[0]["crops"],
        "kernels_initial": result.spec.n_kernels,
        "kernels_final": len(fitted.model),
        "seconds": result.seconds,
        "seconds_per_frame": result.seconds / count,
        "windows": [[int(a), int(b)] for a, b in result.windows],
        "mode": fitted.mode,
        "tile": [fitted.tile, fitted.tile, fitted.tile_t],
        "versions": versions(),
        "machine": machine(),
        "spec": result.spec.to_dict(),
    }


def _mean(values: list) -> float | None:
    """Mean of per-frame figures; None if any is None (a PSNR of an exact frame is infinite, so is the mean)."""
    return None if not values or any(v is None for v in values) else float(np.mean(values))


def _figures(result: VideoFitResult, frames: np.ndarray, report: dict, clip_path) -> dict[str, bytes]:
    from .plots import draw_xt_slice, plot_frame_psnr  # matplotlib loads only when figures are drawn

    label = _LABELS.get(result.fitted.mode, result.fitted.mode)
    # An exact frame has an infinite PSNR, which no axis holds: it is left out of the curve.
    curve = np.array([np.nan if p is None else p for p in report["psnr_per_frame"]], dtype=float)
    title = f"{Path(clip_path).name}: {report['kernels_final']} kernels over {len(frames)} frames"
    return {
        "psnr_per_frame.png": plot_frame_psnr({label: curve}, title=title),
        "kernels_xt.png": draw_xt_slice(frames, result.fitted.model),
    }
