"""Space-time SMoE for video: 3D kernels over (x, y, t), fitted on the CPU, rendered at any frame rate and size.

* :mod:`~smoe.video.model`: the kernels (:class:`VideoModel`), centres in pixels and frames,
  6-number precision Cholesky factors;
* :mod:`~smoe.video.tiles`, :mod:`~smoe.video.rasterizer`: blocks of 16 x 16 pixels x 4
  frames, the fused numba kernel (:mod:`~smoe.video.fused_cpu`) and its PyTorch reference
  (:mod:`~smoe.video.reference`);
* :mod:`~smoe.video.init`, :mod:`~smoe.video.fitting`: content-driven start and the windowed fit;
* :mod:`~smoe.video.fitted`: a fitted model with its clip size and rate, rendered at any times;
* :mod:`~smoe.video.io`: clips in and frames and previews out, through PyAV;
* :mod:`~smoe.video.outputs`: the files ``smoe fit-video`` writes, built in memory.

Names load on first use, as in :mod:`smoe`.
"""

import importlib

_EXPORTS = {
    "VideoModel": "model",
    "FittedVideo": "fitted", "frame_times": "fitted",
    "rasterize_video": "rasterizer", "render_video": "rasterizer",
    "fit_video": "fitting", "VideoFitSpec": "fitting", "VideoFitResult": "fitting",
    "read_video": "io", "write_video": "io", "write_frames": "io", "VideoError": "io", "Clip": "io",
    "save_video_model": "modelfile", "load_video_model": "modelfile",
    "video_fit_outputs": "outputs",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'smoe.video' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
