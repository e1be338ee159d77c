"""A fitted video model that knows how it is rendered: its clip size, frame rate, mode and tiles.

Output frames are sampled at clip times in frame units: frame f of the fitted
clip is the time ``f + 0.5``.  ``fps_scale = s`` renders the times
``0.5 + g / s`` from the first frame to the last, so a whole ``s`` keeps every
fitted frame and puts ``s - 1`` new ones between each pair (frame
interpolation); ``scale`` or ``size`` change the raster as in 2D.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from ..sizes import TILE, check_tile_size, output_size
from ..spec import MODES
from ..validate import check_choice, check_finite, is_whole

if TYPE_CHECKING:
    from .model import VideoModel

__all__ = ["FittedVideo", "frame_times", "TILE_T", "MAX_VIDEO_PIXELS", "check_tile_t"]

#: Frames per space-time tile by default (16 x 16 pixels x TILE_T frames; benchmarks/video.py measures others).
TILE_T = 4
#: Largest clip (pixels over all frames) smoe fits or renders: 8 GB of float32 RGB.
MAX_VIDEO_PIXELS = 640_000_000
#: Largest number of output frames a render may ask for.
MAX_FRAMES = 100_000


def check_tile_t(tile_t) -> int:
    """Frames per tile: a whole number from 1 to 64."""
    if not (is_whole(tile_t) and 1 <= tile_t <= 64):
        raise ValueError(f"frames per tile must be a whole number from 1 to 64, got {tile_t!r}")
    return int(tile_t)


def frame_times(frames: int, fps_scale: float = 1.0) -> np.ndarray:
    """(G,) clip times of the output frames of a ``frames``-frame clip rendered at ``fps_scale`` times its rate.

    Examples
    --------
    >>> frame_times(3, 2.0).tolist()
    [0.5, 1.0, 1.5, 2.0, 2.5]
    """
    s = check_finite("fps_scale", fps_scale, low=0, low_open=True)
    count = math.floor((frames - 1) * s + 1e-9) + 1
    if count > MAX_FRAMES:
        raise ValueError(f"fps_scale {fps_scale:g} gives {count} frames, more than the limit of {MAX_FRAMES}; "
                         "use a smaller factor")
    return 0.5 + np.arange(count) / s


@dataclass(frozen=True)
class FittedVideo:
    """A space-time model with the clip it was fitted on.

    Parameters
    ----------
    model : VideoModel
        Kernels in the clip's pixel and frame coordinates.
    frames : int
        Frames of the fitted clip.
    frame : (int, int)
        ``(height, width)`` of its frames.
    fps : float
        Frame rate of the fitted clip (frames per second).
    mode : {"smoe", "rbf"}
    tile, tile_t : int
        Space-time tiles of ``tile x tile`` pixels by ``tile_t`` frames.
    settings : dict
        How it was fitted (JSON-able), as the model file records it.

    Examples
    --------
    >>> import smoe.video as sv  # doctest: +SKIP
    >>> fitted = sv.fit_video(frames, 2000).fitted  # doctest: +SKIP
    >>> fitted.render(fps_scale=2, scale=2).shape  # doctest: +SKIP
    (63, 288, 352, 3)
    """

    model: "VideoModel"
    frames: int
    frame: tuple[int, int]
    fps: float = 25.0
    mode: str = "smoe"
    tile: int = TILE
    tile_t: int = TILE_T
    settings: dict = field(default_factory=dict)

    def __post_init__(self):
        check_choice("mode", self.mode, MODES)
        if not (is_whole(self.frames) and self.frames >= 1):
            raise ValueError(f"frames must be a positive whole number, got {self.frames!r}")
        if not (len(self.frame) == 2 and all(is_whole(s) and s >= 1 for s in self.frame)):
            raise ValueError(f"frame must be (height, width), two positive whole numbers, got {self.frame!r}")
        check_finite("fps", self.fps, low=0, low_open=True)
        object.__setattr__(self, "frames", int(self.frames))
        object.__setattr__(self, "frame", (int(self.frame[0]), int(self.frame[1])))
        object.__setattr__(self, "fps", float(self.fps))
        object.__setattr__(self, "tile", check_tile_size(self.tile))
        object.__setattr__(self, "tile_t", check_tile_t(self.tile_t))

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(frames, height, width)`` of the fitted clip."""
        return (self.frames, *self.frame)

    def output(self, fps_scale: float = 1.0, scale: float | None = None,
               size: tuple[int, int] | None = None) -> tuple[np.ndarray, tuple[int, int]]:
        """The times and ``(height, width)`` a render asks for, checked against the pixel limits first."""
        times = frame_times(self.frames, fps_scale)
        h, w = output_size(self.frame, scale=scale, size=size)
        if len(times) * h * w > MAX_VIDEO_PIXELS:
            raise ValueError(f"{len(times)} frames of {w}x{h} pixels exceed the limit of "
                             f"{MAX_VIDEO_PIXELS // 1_000_000} megapixels in total; use a smaller scale, "
                             f"fps scale or fewer frames")
        return times, (h, w)

    def render(self, fps_scale: float = 1.0, scale: float | None = None, size: tuple[int, int] | None = None, *,
               times=None, backend: str = "auto") -> np.ndarray:
        """Render frames: the fitted ones, ``fps_scale`` times as many, or explicit clip ``times``.

        Parameters
        ----------
        fps_scale : float
            Output frame rate over the fitted one (2 doubles it: frame interpolation).
        scale : float, optional
            Spatial factor (2 doubles width and height: super-resolution).
        size : (int, int), optional
            Output ``(height, width)`` instead of ``scale``.
        times : (G,) array, optional
            Clip times to render instead of ``fps_scale``'s (frame f is ``f + 0.5``).
        backend : {"auto", "cpu", "torch"}

        Returns
        -------
        (G, H', W', C) float array, not clipped.
        """
        import torch

        from .rasterizer import render_video

        default_times, (h, w) = self.output(fps_scale, scale, size)
        times = default_times if times is None else np.asarray(times, dtype=np.float64).reshape(-1)
        with torch.no_grad():
            out = render_video(self.model, h, w, times, extent=self.frame, mode=self.mode, tile=self.tile,
                               tile_t=self.tile_t, backend=backend)
        return out.cpu().numpy()
