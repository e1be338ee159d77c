"""Saving and loading fitted video models: the model file of :mod:`smoe.modelfile` with ``dim`` 3.

A video model file is an image model file whose metadata say ``"dim": 3``:
``mu`` holds (L, 3) centres ``(x, y, t)``, ``chol`` (L, 6) precision factors
(:mod:`smoe.video.model`), and the metadata add ``frames``, ``fps``,
``tile_t`` and ``settings`` and leave out the image's scope, tile offset and
spec (see :mod:`smoe.modelfile`).  The archive, the limits and every check are
those of :mod:`smoe.modelfile`, taken with the dimension; this module only
maps a :class:`~smoe.video.fitted.FittedVideo` to metadata and back.

Examples
--------
>>> import tempfile
>>> from smoe.video.model import VideoModel
>>> model = VideoModel([[8.0, 8.0, 2.0]], [[0.5, 0.0, 0.5, 0.0, 0.0, 0.25]], [1.0], [[0.2, 0.4, 0.6]])
>>> path = tempfile.mkdtemp() + "/clip.smoe.npz"
>>> save_video_model(path, FittedVideo(model, 5, (16, 16), fps=30.0))
>>> load_video_model(path).shape
(5, 16, 16)
"""

from __future__ import annotations

import numpy as np

from ..atomic import atomic_write_bytes
from ..modelfile import ModelFileError, check_clip, check_kind, pack_model_file, read_model_arrays
from ..spec import _plain
from ..validate import one_line
from .fitted import FittedVideo

__all__ = ["save_video_model", "load_video_model", "read_video_model_file", "fitted_video_from_arrays",
           "video_model_file_bytes"]

_ARRAYS = ("mu", "chol", "pi", "experts")


def save_video_model(path, fitted: FittedVideo) -> None:
    """Write a video model file atomically.

    Parameters
    ----------
    path : str or os.PathLike
        Target file, written as given (``.smoe.npz`` is the conventional suffix).
    fitted : FittedVideo
        The kernels (saved in their own dtype, float32 or float64, from the
        CPU) with their clip size, frame rate, mode, tiles and settings.

    Raises
    ------
    ValueError
        An invalid model, a clip or kernel count above the limits, or settings
        that JSON cannot hold.

    Examples
    --------
    >>> save_video_model("out/clip.smoe.npz", fit_video(frames, 2000).fitted)  # doctest: +SKIP
    """
    atomic_write_bytes(path, video_model_file_bytes(fitted))


def video_model_file_bytes(fitted: FittedVideo) -> bytes:
    """The bytes of the model file :func:`save_video_model` writes.

    Examples
    --------
    >>> video_model_file_bytes(fitted)[:2]  # doctest: +SKIP
    b'PK'
    """
    if not isinstance(fitted, FittedVideo):
        raise ValueError(f"save_video_model takes a FittedVideo (fit_video(...).fitted), got {type(fitted).__name__}")
    check_clip(fitted.frames, *fitted.frame)
    model = fitted.model
    model.validate()
    meta = {
        "dim": 3,
        "mode": fitted.mode,
        "height": fitted.frame[0],
        "width": fitted.frame[1],
        "channels": model.channels,
        "frames": fitted.frames,
        "fps": fitted.fps,
        "tile": fitted.tile,
        "tile_t": fitted.tile_t,
        "settings": _plain("settings", dict(fitted.settings)),
    }
    return pack_model_file(model.numpy(), meta)


def load_video_model(path) -> FittedVideo:
    """Read and validate a video model file: the fitted model, ready to render.

    The file is checked as :func:`smoe.modelfile.load_model` checks an image
    model, before any array is allocated.

    Parameters
    ----------
    path : str or os.PathLike

    Returns
    -------
    FittedVideo
        Tensors on the CPU, in the dtype stored in the file.

    Raises
    ------
    ModelFileError
        Whatever :func:`smoe.modelfile.load_model` refuses, and an image model
        (which :func:`smoe.load_model` loads).  The message names the file.

    Examples
    --------
    >>> fitted = load_video_model("out/clip.smoe.npz")  # doctest: +SKIP
    >>> fitted.shape, fitted.fps  # doctest: +SKIP
    ((31, 144, 176), 25.0)
    """
    return read_video_model_file(path)[0]


def read_video_model_file(path) -> tuple[FittedVideo, dict]:
    """:func:`load_video_model`, and the file's checked metadata (see :mod:`smoe.modelfile`).

    Examples
    --------
    >>> fitted, meta = read_video_model_file("out/clip.smoe.npz")  # doctest: +SKIP
    >>> meta["dim"], meta["frames"]  # doctest: +SKIP
    (3, 31)
    """
    arrays, meta, _ = read_model_arrays(path, dim=3)
    return fitted_video_from_arrays(path, arrays, meta), meta


def fitted_video_from_arrays(path, arrays: dict[str, np.ndarray], meta: dict) -> FittedVideo:
    """The :class:`FittedVideo` of what :func:`smoe.modelfile.read_model_arrays` returned for ``path`` (loads torch).

    Lets a caller act on the metadata (say, refuse an output size) before torch
    is loaded; an image model's arrays raise :class:`ModelFileError`.

    Examples
    --------
    >>> arrays, meta, _ = read_model_arrays("out/clip.smoe.npz")  # doctest: +SKIP
    >>> fitted_video_from_arrays("out/clip.smoe.npz", arrays, meta).frames  # doctest: +SKIP
    31
    """
    check_kind(path, meta, 3)
    from .model import VideoModel  # here, not at the top: reading a file for `smoe info` must not load torch

    try:
        model = VideoModel(*(arrays[name] for name in _ARRAYS))
        return FittedVideo(model, meta["frames"], (meta["height"], meta["width"]), meta["fps"], meta["mode"],
                           meta["tile"], meta["tile_t"], meta["settings"])
    except (ValueError, TypeError) as exc:
        raise ModelFileError(f"{path}: invalid model: {one_line(exc)}") from exc
