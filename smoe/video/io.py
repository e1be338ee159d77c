"""Reading and writing video clips: video files through PyAV (FFmpeg), folders of frame images.

A clip lives in memory as an ``(F, H, W, C)`` float32 array in ``[0, 1]``:
``C = 3`` for colour, ``C = 1`` for grey (a folder of grey images, or a grey
video stream).  8-bit sources are divided by 255, deeper ones (10-bit video,
16-bit PNGs) keep their precision.

A video file is a stranger's file like any image, so the reader checks what
it is told before it commits memory: the frame size against
:data:`smoe.limits.MAX_IMAGE_PIXELS`, and the pixels over all requested
frames against ``max_pixels`` (from the header where it says, and again as
every frame is decoded), before the float array is allocated.  The decoder
runs with ``err_detect=explode`` so that damaged data stops the read with an
error instead of being concealed as plausible-looking frames that a fit would
then reproduce.

Frames of a folder are sorted in natural order (``frame2`` before
``frame10``) and read with :func:`smoe.imageio.read_image`.

Output is all-or-nothing: :func:`write_frames` goes through
:func:`smoe.atomic.write_output_folder`, :func:`write_video` encodes into a
temporary file beside the target and renames it.

Examples
--------
>>> import tempfile
>>> folder = Path(tempfile.mkdtemp()) / "clip"
>>> frames = np.zeros((3, 4, 6, 3), np.float32)
>>> [p.name for p in write_frames(folder, frames)]
['frame_00000.png', 'frame_00001.png', 'frame_00002.png']
>>> read_video(folder, (1, None)).frames.shape
(2, 4, 6, 3)
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from ..atomic import atomic_path, write_output_folder
from ..imageio import ImageError, encode_image, read_image
from ..limits import MAX_IMAGE_PIXELS, check_pixels, open_regular
from ..validate import check_finite, is_whole, one_line
from .fitted import MAX_VIDEO_PIXELS

__all__ = ["VideoError", "Clip", "parse_frames", "read_video", "probe_video", "write_frames", "write_video",
           "frame_names", "encode_frames", "encode_video",
           "FRAME_SUFFIXES", "VIDEO_SUFFIXES", "FOLDER_FPS", "MAX_DECODED_FRAMES"]

#: Suffixes of the frame images a folder clip is made of (case does not matter).
FRAME_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp")
#: Suffixes :func:`write_video` writes, and the FFmpeg muxer of each.
VIDEO_SUFFIXES = {".mp4": "mp4", ".mkv": "matroska"}
#: Frame rate of a folder of frames unless the caller says otherwise.
FOLDER_FPS = 25.0
#: Most frames decoded from one file, skipped ones included (11 hours at 25 fps): frames before the
#: requested range cost decoding time but no memory, so the pixel cap alone would not bound them.
MAX_DECODED_FRAMES = 1_000_000
#: Highest frame rate written or accepted as an override.
MAX_FPS = 1000.0
#: Largest relative deviation of one frame interval from the clip's typical one that still counts
#: as a constant rate (besides one tick of the time base, which rounding of timestamps costs).
VFR_TOLERANCE = 0.02
#: Constant-rate quality of the lossy preview (x264 CRF: 0 lossless, 23 default; 16 looks clean).
PREVIEW_CRF = 16

# (open, read) seconds after which FFmpeg is interrupted: a read of a local file takes
# milliseconds, so a demuxer stuck longer is looping on a hostile file.
_TIMEOUT_S = (60.0, 60.0)
# Only plain files: a name such as "concat:a|b" or a playlist inside a file must not
# reach other protocols (network, pipes, subprocesses).
_CONTAINER_OPTIONS = {"protocol_whitelist": "file"}
_DECODER_OPTIONS = {"err_detect": "explode"}
# Demuxers that open other files by name; a clip is refused rather than followed there.
_PLAYLISTS = {"hls", "concat", "dash", "ffmetadata", "webm_dash_manifest"}
_DIGITS = re.compile(r"(\d+)")
_FRAMES_TEXT = re.compile(r"\s*(\d*)\s*:\s*(\d*)\s*")


class VideoError(ValueError):
    """A clip cannot be read or written; the message (one line) says why and what to do."""


@dataclass(frozen=True, eq=False)
class Clip:
    """Frames of a clip with their rate.

    Parameters
    ----------
    frames : (F, H, W, C) float32 array in [0, 1]
        ``C = 3`` for colour, ``C = 1`` for grey.
    fps : float
        Frames per second.
    source : str
        The file or folder the frames came from.

    Examples
    --------
    >>> Clip(np.zeros((2, 4, 6, 3), np.float32), 25.0, "clip.mp4")
    Clip(2 frames of 6x4x3 at 25 fps from 'clip.mp4')
    """

    frames: np.ndarray = field(repr=False)
    fps: float
    source: str

    def __repr__(self) -> str:
        f, h, w, c = self.frames.shape
        return f"Clip({f} frames of {w}x{h}x{c} at {self.fps:g} fps from {self.source!r})"


# ================================================================ frame ranges
def parse_frames(text: str) -> tuple[int, int | None]:
    """Parse a ``--frames`` range ``A:B``: frames A to B - 1, like a Python slice.

    Parameters
    ----------
    text : str
        ``A:B``, ``A:`` (from A to the end) or ``:B`` (the first B frames), with
        whole numbers ``0 <= A < B``.

    Returns
    -------
    (start, stop) with ``stop`` None for "to the end".

    Raises
    ------
    ValueError
        Anything else, with the accepted forms in the message.

    Examples
    --------
    >>> parse_frames("10:20"), parse_frames("5:"), parse_frames(":30")
    ((10, 20), (5, None), (0, 30))
    >>> parse_frames("20:10")
    Traceback (most recent call last):
    ...
    ValueError: --frames 20:10 is empty: the start must be below the end (frames A to B-1, e.g. 20:30)
    """
    match = _FRAMES_TEXT.fullmatch(str(text))
    if match is None:
        hint = " (one frame N is N:N+1)" if str(text).strip().isdigit() else ""
        raise ValueError(f"--frames wants A:B, A: or :B with whole numbers >= 0 (e.g. 0:60), got {text!r}{hint}")
    first, last = match.groups()
    if len(first) > 12 or len(last) > 12:
        raise ValueError(f"--frames {text.strip()}: frame number too large (limit {MAX_DECODED_FRAMES})")
    start = int(first) if first else 0
    stop = int(last) if last else None
    if stop is not None and stop <= start:
        raise ValueError(f"--frames {text.strip()} is empty: the start must be below the end "
                         f"(frames A to B-1, e.g. {start}:{start + 10})")
    return start, stop


def _check_range(frames) -> tuple[int, int | None]:
    try:
        start, stop = frames
    except (TypeError, ValueError):
        raise ValueError(f"frames must be a (start, stop) pair, got {frames!r}") from None
    if not (is_whole(start) and start >= 0):
        raise ValueError(f"frame range start must be a whole number >= 0, got {start!r}")
    if stop is not None and not (is_whole(stop) and stop > start):
        raise ValueError(f"frame range stop must be None or a whole number above the start {start}, got {stop!r}")
    start, stop = int(start), None if stop is None else int(stop)
    if (stop if stop is not None else start) > MAX_DECODED_FRAMES:
        raise ValueError(f"frame range {_range_text(start, stop)} reaches beyond the limit of "
                         f"{MAX_DECODED_FRAMES} frames")
    return start, stop


def _range_text(start: int, stop: int | None) -> str:
    return f"{start}:{'' if stop is None else stop}"


# ===================================================================== reading
def read_video(path, frames=(0, None), *, fps: float | None = None, max_pixels: int = MAX_VIDEO_PIXELS) -> Clip:
    """Read frames ``start`` to ``stop - 1`` of a video file or of a folder of frame images.

    Parameters
    ----------
    path : str or os.PathLike
        A video file (mp4, mkv, avi, webm, mov: anything FFmpeg decodes) or a
        folder of images (:data:`FRAME_SUFFIXES`, natural order).
    frames : (int, int or None)
        Half-open range, as :func:`parse_frames` returns; ``(0, None)`` is all.
        A video is decoded from its start up to ``stop`` and no further.
    fps : float, optional
        Frame rate to report instead of the file's (:data:`FOLDER_FPS` for a folder).
    max_pixels : int
        Most pixels (width x height x frames) the returned clip may hold;
        checked before the array is allocated.

    Returns
    -------
    Clip
        ``frames`` is ``(F, H, W, C)`` float32 in [0, 1], F = stop - start.

    Raises
    ------
    VideoError
        Missing file, not a video (text, still image, audio only), corrupt or
        truncated stream (naming the frame), range outside the clip (naming its
        length), frames of changing size, variable frame rate, more than
        ``max_pixels`` pixels, a folder without images.
    ValueError
        Bad ``frames``, ``fps`` or ``max_pixels`` arguments.

    Examples
    --------
    >>> clip = read_video("carphone.mp4", (0, 10))  # doctest: +SKIP
    >>> clip.frames.shape, round(clip.fps, 2)  # doctest: +SKIP
    ((10, 144, 176, 3), 29.97)
    """
    start, stop = _check_range(frames)
    if fps is not None:
        fps = check_finite("fps", fps, low=0, high=MAX_FPS, low_open=True)
    if not (is_whole(max_pixels) and max_pixels > 0):
        raise ValueError(f"max_pixels must be a positive whole number, got {max_pixels!r}")
    path = Path(path)
    if path.is_dir():
        return _read_folder(path, start, stop, fps, int(max_pixels))
    return _read_file(path, start, stop, fps, int(max_pixels))


def probe_video(path) -> dict:
    """Size and rate of a clip without decoding it (at most its first frame).

    Parameters
    ----------
    path : str or os.PathLike
        A video file or a folder of frame images, as for :func:`read_video`.

    Returns
    -------
    dict
        ``frames`` (int, or None where the container does not say),
        ``height``, ``width`` (int), ``fps`` (float), ``codec`` (str, the image
        suffix for a folder) and ``duration`` (seconds, or None).

    Raises
    ------
    VideoError
        As :func:`read_video` for files that are missing or not videos.

    Examples
    --------
    >>> probe_video("carphone.mp4")  # doctest: +SKIP
    {'frames': 120, 'height': 144, 'width': 176, 'fps': 29.97002997002997, 'codec': 'h264', 'duration': 4.004}
    """
    path = Path(path)
    if path.is_dir():
        files = _frame_files(path)
        first = _read_frame_image(path, files, 0)
        return {"frames": len(files), "height": first.shape[0], "width": first.shape[1], "fps": FOLDER_FPS,
                "codec": files[0].suffix.lower().lstrip("."), "duration": len(files) / FOLDER_FPS}
    with _open_container(path) as (container, stream):
        height, width = stream.codec_context.height, stream.codec_context.width
        if not (height and width):  # some containers leave the size to the first frame
            frame = next(_decode(container, stream, path), None)
            if frame is None:
                raise VideoError(f"{path}: video stream holds no frames; check the file")
            height, width = frame.height, frame.width
        rate = _stream_rate(stream)
        duration = _stream_duration(container, stream)
        return {"frames": stream.frames or None, "height": int(height), "width": int(width),
                "fps": float(rate) if rate else FOLDER_FPS, "codec": stream.codec_context.name,
                "duration": duration}


# ------------------------------------------------------------- video files
@contextlib.contextmanager
def _open_container(path: Path):
    """The open container and its (first real) video stream, set up for careful decoding."""
    try:
        open_regular(path, "a video file").close()
    except FileNotFoundError:
        raise VideoError(f"no such file: {path}") from None
    except ValueError as exc:
        raise VideoError(f"{path}: {exc}") from None
    if os.path.getsize(path) == 0:
        raise VideoError(f"{path}: file is empty, not a video")
    try:
        # "file:" so that FFmpeg never reads a protocol prefix out of the name itself.
        container = av.open("file:" + os.fspath(path.absolute()), container_options=dict(_CONTAINER_OPTIONS),
                            timeout=_TIMEOUT_S, metadata_errors="replace")
    except av.error.ExitError:
        raise VideoError(f"{path}: opening the file took more than {_TIMEOUT_S[0]:g} s; it is not a usable video") \
            from None
    except av.FFmpegError as exc:
        raise VideoError(f"{path}: not a video file FFmpeg can read ({_reason(exc)}): unknown format or damaged "
                         f"header (an .mp4 cut short loses its index); check the file or re-encode it") from None
    try:
        yield container, _video_stream(container, path)
    finally:
        container.close()


def _video_stream(container, path: Path):
    demuxer = container.format.name
    if demuxer in _PLAYLISTS:
        raise VideoError(f"{path}: is a playlist ({demuxer}), not a video file; pass the video itself")
    if demuxer.endswith("_pipe") or demuxer.startswith("image2"):
        kind = demuxer.removesuffix("_pipe")
        raise VideoError(f"{path}: is a still image ({kind}), not a video; for a clip of frame images pass "
                         f"their folder")
    streams = [s for s in container.streams.video if not s.disposition & av.stream.Disposition.attached_pic]
    if not streams:
        found = sorted({s.type for s in container.streams}) or ["none"]
        raise VideoError(f"{path}: has no video stream (streams: {', '.join(found)}); pass a video file")
    stream = streams[0]
    if stream.codec_context is None:
        raise VideoError(f"{path}: no decoder for its video codec in this FFmpeg build; re-encode it as H.264")
    stream.thread_type = "AUTO"
    stream.codec_context.options = dict(_DECODER_OPTIONS)
    height, width = stream.codec_context.height, stream.codec_context.width
    if height and width:
        _check_frame_size(height, width, path)
    return stream


def _check_frame_size(height: int, width: int, path: Path) -> None:
    try:
        check_pixels(height, width, MAX_IMAGE_PIXELS, "video frame")
    except ValueError as exc:
        raise VideoError(f"{path}: {exc}") from None


def _decode(container, stream, path: Path):
    """The stream's frames in order; FFmpeg failures become VideoError naming the frame."""
    index = 0
    frames = container.decode(stream)
    while True:
        try:
            frame = next(frames)
        except StopIteration:
            return
        except av.error.ExitError:
            raise VideoError(f"{path}: reading frame {index} took more than {_TIMEOUT_S[1]:g} s; "
                             f"the file is damaged or hostile") from None
        except av.FFmpegError as exc:
            raise VideoError(f"{path}: corrupt video data at frame {index} ({_reason(exc)}); the file is "
                             f"damaged, re-download or re-encode it") from None
        yield frame
        index += 1


def _reason(exc: av.FFmpegError) -> str:
    return one_line(Exception(exc.strerror)) if getattr(exc, "strerror", None) else one_line(exc)


def _stream_rate(stream) -> Fraction | None:
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate:
            return Fraction(rate)
    return None


def _stream_duration(container, stream) -> float | None:
    """Seconds of the video stream; the container's only where the video is all it holds
    (its duration is that of the longest stream, often the audio)."""
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    if container.duration and len(container.streams) == 1:
        return container.duration / 1_000_000
    return None


def _announced_frames(container, stream) -> int | None:
    """Frames the container claims: exact from an index (mp4), else estimated from its duration."""
    if stream.frames:
        return int(stream.frames)
    duration, rate = _stream_duration(container, stream), _stream_rate(stream)
    if duration and rate:
        return max(1, round(duration * float(rate)))
    return None


def _read_file(path: Path, start: int, stop: int | None, fps: float | None, max_pixels: int) -> Clip:
    with _open_container(path) as (container, stream):
        announced = _announced_frames(container, stream)
        height, width = stream.codec_context.height, stream.codec_context.width
        wanted = stop if stop is not None else announced
        if announced is not None and wanted is not None:
            wanted = min(wanted, announced)
        if height and width and wanted is not None and wanted > start:
            _check_clip_pixels(wanted - start, height, width, max_pixels, path, start, stop, claimed=True)
        kept, pts, count, size, target = [], [], 0, None, None
        for frame in _decode(container, stream, path):
            if size is None:
                size = (frame.height, frame.width)
                _check_frame_size(*size, path)
                target = _target_format(frame)
            elif (frame.height, frame.width) != size:
                raise VideoError(f"{path}: frame {count} is {frame.width}x{frame.height} but frame 0 is "
                                 f"{size[1]}x{size[0]}; re-encode the clip at one size")
            pts.append(frame.pts)
            if count >= start:
                _check_clip_pixels(len(kept) + 1, *size, max_pixels, path, start, stop)
                kept.append(frame.to_ndarray(format=target, src_color_range=frame.color_range))
            count += 1
            if stop is not None and count >= stop:
                break
            if count >= MAX_DECODED_FRAMES:
                raise VideoError(f"{path}: more than {MAX_DECODED_FRAMES} frames; pick a range with --frames")
        ended = stop is None or count < stop
        if ended and stream.frames and count < stream.frames:
            raise VideoError(f"{path}: stream ends at frame {count} but the file announces {stream.frames} "
                             f"frames; the file is truncated or corrupt, re-download or re-encode it")
        irregular = _irregular_frame(pts)
        if irregular is not None:
            index, intervals = irregular
            raise VideoError(f"{path}: the clip has a variable frame rate or missing frames (frame {index} comes "
                             f"{intervals:.3g} frame intervals after frame {index - 1}); re-encode it at a constant "
                             f"rate, e.g. ffmpeg -i IN -vf fps=25 OUT.mp4")
        if ended and not stream.frames and announced is not None and count < announced - max(2, announced // 50):
            raise VideoError(f"{path}: stream ends at frame {count} but the file's duration holds about "
                             f"{announced} frames; the file is truncated or corrupt, re-download or re-encode it")
        if start >= count or (stop is not None and stop > count):
            raise VideoError(f"{path}: frames {_range_text(start, stop)} are outside the clip, which has "
                             f"{count} frames (0:{count})")
        rate = fps if fps is not None else _clip_rate(stream, pts)
        return Clip(_to_float(kept, target), rate, str(path))


def _check_clip_pixels(count: int, height: int, width: int, max_pixels: int, path: Path, start: int,
                       stop: int | None, *, claimed: bool = False) -> None:
    if count * height * width > max_pixels:
        subject = "the clip" if (start, stop) == (0, None) else f"frames {_range_text(start, stop)}"
        what = f"claims {count} frames" if claimed else f"has more than {count - 1} frames"
        raise VideoError(f"{path}: {subject} {what} of {width}x{height}, more than the limit of {max_pixels} "
                         f"pixels; pick fewer frames with --frames or scale the video down")


def _target_format(frame) -> str:
    """rgb24/gray for 8-bit video, rgb48le/gray16le where the source has more bits."""
    components = frame.format.components
    deep = max((c.bits for c in components), default=8) > 8
    name = frame.format.name
    grey = name.startswith(("gray", "ya")) or (len(components) == 1 and not name.startswith("pal"))
    if grey:
        return "gray16le" if deep else "gray"
    return "rgb48le" if deep else "rgb24"


def _to_float(kept: list, target: str) -> np.ndarray:
    """Stack decoded frames into float32, freeing each integer frame once copied (peak 1.25x, not 2x)."""
    first = kept[0]
    channels = 1 if first.ndim == 2 else first.shape[2]
    out = np.empty((len(kept), first.shape[0], first.shape[1], channels), np.float32)
    scale = np.float32(1 / 65535 if target.endswith("16le") or target.endswith("48le") else 1 / 255)
    for i in range(len(kept)):
        codes = kept[i]
        kept[i] = None
        np.multiply(codes.reshape(out.shape[1:]), scale, out=out[i])
    return out


def _irregular_frame(pts: list) -> tuple[int, float] | None:
    """(index, interval in typical intervals) of the first frame that does not follow the one before
    by the clip's typical interval; None for a constant rate.  One tick of slack: a time base of
    1 ms stores 29.97 fps as steps of 33 and 34."""
    if len(pts) < 3 or any(p is None for p in pts):
        return None  # raw streams (.h264) carry no timestamps: nothing to check
    steps = np.diff(np.asarray(pts, dtype=np.int64))
    typical = float(np.median(steps))
    if typical <= 0:
        return 1, 0.0
    bad = np.flatnonzero((steps <= 0) | (np.abs(steps - typical) > 1 + VFR_TOLERANCE * typical))
    return (int(bad[0]) + 1, float(steps[bad[0]]) / typical) if bad.size else None


def _clip_rate(stream, pts: list) -> float:
    """The stream's nominal rate, unless the frames' timestamps say otherwise."""
    rate = _stream_rate(stream)
    measured = None
    if len(pts) >= 2 and None not in (pts[0], pts[-1]) and pts[-1] > pts[0] and stream.time_base:
        measured = (len(pts) - 1) / float((pts[-1] - pts[0]) * stream.time_base)
    if rate and (measured is None or abs(float(rate) - measured) <= VFR_TOLERANCE * measured):
        return float(rate)
    return measured if measured is not None else FOLDER_FPS


# ------------------------------------------------------------------ folders
def _natural_key(path: Path):
    return [(0, int(part), "") if part.isdigit() else (1, 0, part.lower())
            for part in _DIGITS.split(path.name)], path.name


def _frame_files(folder: Path) -> list[Path]:
    try:
        entries = [p for p in folder.iterdir()
                   if p.suffix.lower() in FRAME_SUFFIXES and not p.name.startswith(".") and p.is_file()]
    except OSError as exc:
        raise VideoError(f"{folder}: cannot list the folder ({exc.strerror or exc}); check its permissions") \
            from None
    if not entries:
        raise VideoError(f"{folder}: folder holds no frame images ({', '.join(FRAME_SUFFIXES)}); put the "
                         f"frames there or pass a video file")
    return sorted(entries, key=_natural_key)


def _read_frame_image(folder: Path, files: list[Path], index: int) -> np.ndarray:
    try:
        return read_image(files[index])
    except ImageError as exc:
        raise VideoError(f"{exc} (frame {index} of {folder})") from None


def _read_folder(folder: Path, start: int, stop: int | None, fps: float | None, max_pixels: int) -> Clip:
    files = _frame_files(folder)
    total = len(files)
    if start >= total or (stop is not None and stop > total):
        raise VideoError(f"{folder}: frames {_range_text(start, stop)} are outside the clip, which has "
                         f"{total} frames (0:{total})")
    stop = total if stop is None else stop
    first = _read_frame_image(folder, files, start)
    height, width = first.shape[:2]
    _check_clip_pixels(stop - start, height, width, max_pixels, folder, start, stop, claimed=True)
    out = np.empty((stop - start, height, width, 1 if first.ndim == 2 else 3), np.float32)
    for i in range(start, stop):
        image = first if i == start else _read_frame_image(folder, files, i)
        if image.shape[:2] != (height, width):
            raise VideoError(f"{folder}: frame {i} ({files[i].name}) is {image.shape[1]}x{image.shape[0]} but "
                             f"frame {start} ({files[start].name}) is {width}x{height}; all frames need one size")
        if image.ndim == 3 and out.shape[3] == 1:
            out = np.repeat(out, 3, axis=3)  # a colour frame among grey ones: the clip is colour
        out[i - start] = image if image.ndim == 3 else image[:, :, None]  # grey broadcasts into colour
    return Clip(out, fps if fps is not None else FOLDER_FPS, str(folder))


# ===================================================================== writing
def _as_clip_array(frames, what) -> np.ndarray:
    """(F, H, W, C) view of real samples with C in {1, 3}; (F, H, W) is grey."""
    if hasattr(frames, "detach"):  # a torch tensor; avoid importing torch here
        frames = frames.detach().cpu().numpy()
    frames = np.asarray(frames)
    if frames.ndim == 3:
        frames = frames[..., None]
    if frames.ndim != 4 or frames.shape[3] not in (1, 3):
        raise VideoError(f"{what}: frames must have shape (F, H, W), (F, H, W, 1) or (F, H, W, 3), "
                         f"got {frames.shape}")
    if 0 in frames.shape:
        raise VideoError(f"{what}: cannot write an empty clip of shape {frames.shape}")
    if not np.issubdtype(frames.dtype, np.number) or np.issubdtype(frames.dtype, np.complexfloating):
        raise VideoError(f"{what}: frames must hold real numbers, got dtype {frames.dtype}")
    return frames


def write_frames(folder, frames, *, prefix: str = "frame", start: int = 0) -> list[Path]:
    """Write each frame as an 8-bit PNG ``<prefix>_00000.png``, ... into ``folder``, all or nothing.

    Parameters
    ----------
    folder : str or os.PathLike
        Output folder; its parent must exist.  A new folder appears complete
        or not at all; in an existing one each file is replaced atomically and
        other files are kept (so ``start`` can add a later part of a clip).
    frames : (F, H, W, C) or (F, H, W) array
        Samples in [0, 1] (clipped, rounded to 8 bits); C = 1 writes grey PNGs.
    prefix : str
        Letters, digits, ``_`` and ``-``.
    start : int
        Number of the first frame's file.

    Returns
    -------
    list of Path
        The files written, in frame order.

    Raises
    ------
    VideoError
        Bad shape or prefix, NaN samples, missing parent folder.

    Examples
    --------
    >>> import tempfile
    >>> out = Path(tempfile.mkdtemp()) / "frames"
    >>> [p.name for p in write_frames(out, np.zeros((2, 4, 4)), start=7)]
    ['frame_00007.png', 'frame_00008.png']
    """
    folder = Path(folder)
    names = frame_names(len(_as_clip_array(frames, folder)), prefix=prefix, start=start)  # bad arguments first
    if not folder.parent.is_dir():
        raise VideoError(f"{folder}: parent folder {folder.parent} does not exist; create it first")
    files = encode_frames(frames, prefix=prefix, start=start, what=folder)
    write_output_folder(folder, files, markers=())
    return [folder / name for name in names]


def frame_names(count: int, *, prefix: str = "frame", start: int = 0) -> list[str]:
    """The file names :func:`write_frames` gives ``count`` frames: ``<prefix>_00000.png``, ...

    Examples
    --------
    >>> frame_names(2, start=9)
    ['frame_00009.png', 'frame_00010.png']
    """
    if not (isinstance(prefix, str) and re.fullmatch(r"[A-Za-z0-9][\w\-]*", prefix)):
        raise VideoError(f"frame prefix must be letters, digits, '_' or '-' (starting with a letter or digit), "
                         f"got {prefix!r}")
    if not (is_whole(start) and start >= 0):
        raise VideoError(f"start must be a whole number >= 0, got {start!r}")
    return [f"{prefix}_{int(start) + i:05d}.png" for i in range(int(count))]


def encode_frames(frames, *, prefix: str = "frame", start: int = 0, what="frames") -> dict[str, bytes]:
    """The PNG files :func:`write_frames` writes, as bytes: file name -> content, in frame order.

    For a caller that writes them with other files in one
    :func:`smoe.atomic.write_output_folder` (the outputs of ``smoe fit-video``).

    Parameters
    ----------
    frames : (F, H, W, C) or (F, H, W) array
        Samples in [0, 1], clipped and rounded to 8 bits.
    prefix, start
        As for :func:`write_frames`.
    what : str or os.PathLike
        Named in error messages.

    Examples
    --------
    >>> list(encode_frames(np.zeros((2, 4, 4))))
    ['frame_00000.png', 'frame_00001.png']
    """
    frames = _as_clip_array(frames, what)
    files = {}
    for i, name in enumerate(frame_names(len(frames), prefix=prefix, start=start)):
        try:
            files[name] = encode_image(frames[i], name)
        except ImageError as exc:
            raise VideoError(f"{what}: frame {i}: {exc}") from None
    return files


def _have_encoder(name: str) -> bool:
    try:
        av.codec.Codec(name, "w")
    except Exception:  # UnknownCodecError, or FFmpeg built without it
        return False
    return True


def _choose_encoder(suffix: str, lossless: bool) -> tuple[str, str, dict]:
    """(codec, pixel format, options) of the best preview encoder this FFmpeg build has."""
    if lossless:
        if _have_encoder("libx264rgb"):  # H.264 on RGB itself: exact, no YUV rounding
            return "libx264rgb", "rgb24", {"crf": "0", "preset": "fast"}
        if suffix == ".mkv" and _have_encoder("ffv1"):
            return "ffv1", "bgr0", {}
        if _have_encoder("libx264"):  # 4:4:4 at CRF 0: only colour conversion rounding is lost
            return "libx264", "yuv444p", {"crf": "0", "preset": "fast"}
        raise VideoError("no lossless video encoder in this FFmpeg build (libx264rgb, ffv1, libx264); "
                         "write frames as PNG instead")
    if _have_encoder("libx264"):
        return "libx264", "yuv420p", {"crf": str(PREVIEW_CRF), "preset": "fast"}
    return "mpeg4", "yuv420p", {"qscale": "2"}


def write_video(path, frames, fps, *, lossless: bool = False) -> None:
    """Write a preview video (H.264 in .mp4 or .mkv), atomically.

    Parameters
    ----------
    path : str or os.PathLike
        ``.mp4`` or ``.mkv``; the file appears complete or not at all.
    frames : (F, H, W, C) or (F, H, W) array
        Samples in [0, 1], clipped and rounded to 8 bits; grey is written as RGB.
    fps : float
        Frame rate, above 0 and at most :data:`MAX_FPS`.
    lossless : bool
        Exact 8-bit RGB (x264 on RGB at CRF 0, which few players show; FFV1 or
        4:4:4 H.264 where missing).  Otherwise 4:2:0 H.264 at CRF
        :data:`PREVIEW_CRF`, which every player shows; an odd width or height
        then gains one repeated column or row, as 4:2:0 needs even sizes.

    Raises
    ------
    VideoError
        Unknown suffix, bad frames or rate, missing folder, encoder failure;
        no file is left behind.

    Examples
    --------
    >>> import tempfile
    >>> target = Path(tempfile.mkdtemp()) / "preview.mp4"
    >>> write_video(target, np.zeros((5, 16, 16, 3)), 25, lossless=True)
    >>> read_video(target).frames.shape
    (5, 16, 16, 3)
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in VIDEO_SUFFIXES:
        raise VideoError(f"{path}: unknown video suffix {path.suffix!r}; use {' or '.join(VIDEO_SUFFIXES)}")
    frames = _as_clip_array(frames, path)
    try:
        fps = check_finite("fps", fps, low=0, high=MAX_FPS, low_open=True)
    except ValueError as exc:
        raise VideoError(f"{path}: {exc}") from None
    if path.is_dir():
        raise VideoError(f"{path}: is a directory; name a video file")
    if not path.parent.is_dir():
        raise VideoError(f"{path}: folder {path.parent} does not exist; create it first")
    codec, pix_fmt, options = _choose_encoder(suffix, bool(lossless))
    with atomic_path(path) as tmp:
        _encode(tmp, VIDEO_SUFFIXES[suffix], frames, fps, codec, pix_fmt, options, path)


def encode_video(frames, fps, *, suffix: str = ".mp4", lossless: bool = False) -> bytes:
    """The bytes of the file :func:`write_video` writes for a name ending in ``suffix``.

    For a caller that writes the video with other files in one
    :func:`smoe.atomic.write_output_folder` (the preview of ``smoe fit-video``).
    The encoders need a seekable file (mp4's index goes to the front), so the
    video is written to a private temporary folder and read back.

    Examples
    --------
    >>> encode_video(np.zeros((3, 16, 16, 3)), 25)[4:8]
    b'ftyp'
    """
    if str(suffix).lower() not in VIDEO_SUFFIXES:
        raise VideoError(f"unknown video suffix {suffix!r}; use {' or '.join(VIDEO_SUFFIXES)}")
    with tempfile.TemporaryDirectory(prefix="smoe-video-") as folder:
        path = Path(folder) / f"preview{suffix}"
        write_video(path, frames, fps, lossless=lossless)
        return path.read_bytes()


def _encode(tmp: Path, muxer: str, frames: np.ndarray, fps: float, codec: str, pix_fmt: str, options: dict,
            path: Path) -> None:
    from av.video.reformatter import ColorRange, Colorspace

    count, height, width = frames.shape[:3]
    even = pix_fmt == "yuv420p"
    pad = (height % 2 if even else 0, width % 2 if even else 0)
    yuv = pix_fmt.startswith("yuv")
    container_options = {"movflags": "+faststart"} if muxer == "mp4" else {}
    try:
        with av.open(os.fspath(tmp), "w", format=muxer, container_options=container_options) as output:
            stream = output.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
            stream.width, stream.height = width + pad[1], height + pad[0]
            stream.pix_fmt = pix_fmt
            stream.options = dict(options)
            if yuv:  # tagged, so that players do not guess the matrix from the frame size
                stream.codec_context.colorspace = Colorspace.ITU709
                stream.codec_context.color_range = ColorRange.MPEG
            for i in range(count):
                rgb = _codes8(frames[i], path, i)
                if pad != (0, 0):
                    rgb = np.pad(rgb, ((0, pad[0]), (0, pad[1]), (0, 0)), mode="edge")
                frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
                if yuv:
                    frame = frame.reformat(format=pix_fmt, dst_colorspace=Colorspace.ITU709,
                                           dst_color_range=ColorRange.MPEG)
                elif pix_fmt != "rgb24":
                    frame = frame.reformat(format=pix_fmt)
                frame.pts = i
                output.mux(stream.encode(frame))
            output.mux(stream.encode(None))
    except av.FFmpegError as exc:
        raise VideoError(f"{path}: encoding with {codec} failed ({_reason(exc)})") from None


def _codes8(frame: np.ndarray, path: Path, index: int) -> np.ndarray:
    """(H, W, 3) uint8 codes of one (H, W, C) frame: clipped, rounded, grey repeated."""
    values = frame.astype(np.float32)
    if not np.all(np.isfinite(values)):
        raise VideoError(f"{path}: frame {index} has NaN or infinite values; refusing to write it")
    codes = np.rint(np.clip(values, 0.0, 1.0) * 255).astype(np.uint8)
    if codes.shape[2] == 1:
        codes = np.repeat(codes, 3, axis=2)
    return np.ascontiguousarray(codes)

