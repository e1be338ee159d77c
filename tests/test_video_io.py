"""Video input/output: round trips, frame ranges and every refusal of smoe.video.io."""

import os
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from smoe.imageio import write_image
from smoe.video import io as vio
from smoe.video.io import VideoError, parse_frames, probe_video, read_video, write_frames, write_video

VIDEO = Path(__file__).resolve().parents[2] / "shared" / "data" / "video"


@pytest.fixture
def carphone():
    path = VIDEO / "carphone.mp4"
    if not path.is_file():
        pytest.skip(f"test videos not found at {VIDEO}")
    return path


@pytest.fixture
def bigbuckbunny():
    path = VIDEO / "bigbuckbunny.mp4"
    if not path.is_file():
        pytest.skip(f"test videos not found at {VIDEO}")
    return path


def ramp(count=6, height=20, width=30, channels=3, seed=0):
    """(F, H, W, C) float32 frames holding exact 8-bit codes."""
    codes = np.random.default_rng(seed).integers(0, 256, (count, height, width, channels))
    return (codes / 255).astype(np.float32)


def encode(path, count, *, size=(32, 32), pts=None, fmt=None, time_base=None):
    """A small H.264 clip written with PyAV; ``pts`` gives each frame's timestamp."""
    width, height = size
    with av.open(os.fspath(path), "w", format=fmt) as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        if time_base is not None:
            stream.time_base = time_base
        for i in range(count):
            frame = av.VideoFrame.from_ndarray(np.full((height, width, 3), i * 10 % 256, np.uint8), format="rgb24")
            frame.pts = i if pts is None else pts[i]
            if time_base is not None:
                frame.time_base = time_base
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


def remux(source, target, **options):
    with av.open(os.fspath(source)) as src, av.open(os.fspath(target), "w", container_options=options) as dst:
        stream = dst.add_stream_from_template(src.streams.video[0])
        for packet in src.demux(src.streams.video[0]):
            if packet.dts is not None:
                packet.stream = stream
                dst.mux(packet)
    return target


# ================================================================ parse_frames
@pytest.mark.parametrize("text, expected", [("0:10", (0, 10)), ("5:", (5, None)), (":7", (0, 7)), (":", (0, None)),
                                            (" 3 : 4 ", (3, 4))])
def test_parse_frames(text, expected):
    assert parse_frames(text) == expected


@pytest.mark.parametrize("text, message", [("10:5", "is empty"), ("4:4", "is empty"), ("-1:5", "whole numbers"),
                                           ("a:b", "whole numbers"), ("1.5:3", "whole numbers"), ("7", r"N:N\+1"),
                                           ("1:2:3", "whole numbers"), ("", "whole numbers"),
                                           ("1" * 20 + ":", "too large")])
def test_parse_frames_refuses(text, message):
    with pytest.raises(ValueError, match=message):
        parse_frames(text)


@pytest.mark.parametrize("frames", [(2, 2), (-1, None), (1.5, 3), "0:3", (0, vio.MAX_DECODED_FRAMES + 1)])
def test_read_video_checks_range_argument(tmp_path, frames):
    with pytest.raises(ValueError):
        read_video(tmp_path, frames)


# ================================================================ round trips
@pytest.mark.parametrize("suffix", [".mp4", ".mkv"])
@pytest.mark.parametrize("size", [(20, 30), (21, 33)])
def test_lossless_round_trip(tmp_path, suffix, size):
    frames = ramp(5, *size)
    path = tmp_path / f"clip{suffix}"
    write_video(path, frames, 24, lossless=True)
    clip = read_video(path)
    assert clip.frames.shape == frames.shape and clip.frames.dtype == np.float32
    assert np.abs(clip.frames - frames).max() <= 1 / 255 + 1e-6
    assert clip.fps == pytest.approx(24)
    assert clip.source == str(path)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_lossless_fallbacks_without_x264rgb(tmp_path, monkeypatch):
    have = vio._have_encoder
    monkeypatch.setattr(vio, "_have_encoder", lambda name: name != "libx264rgb" and have(name))
    frames = ramp(3, 16, 18)
    write_video(tmp_path / "a.mkv", frames, 25, lossless=True)  # FFV1: exact
    assert np.abs(read_video(tmp_path / "a.mkv").frames - frames).max() <= 1 / 255 + 1e-6
    smooth = np.repeat(np.linspace(0, 1, 18, dtype=np.float32)[None, None, :, None], 16, 1).repeat(3, 3)
    write_video(tmp_path / "a.mp4", np.repeat(smooth, 3, 0), 25, lossless=True)  # 4:4:4 H.264: near
    assert np.abs(read_video(tmp_path / "a.mp4").frames - smooth).max() <= 3 / 255


def test_lossy_preview_pads_odd_sizes(tmp_path):
    yy, xx = np.mgrid[0:21, 0:33]
    frame = np.stack([xx / 32, yy / 20, (xx + yy) / 52], -1).astype(np.float32)
    frames = np.stack([frame] * 4)
    write_video(tmp_path / "p.mp4", frames, 30)
    clip = read_video(tmp_path / "p.mp4")
    assert clip.frames.shape == (4, 22, 34, 3)
    assert np.abs(clip.frames[:, :21, :33] - frames).mean() < 0.02
    assert np.abs(clip.frames[:, 21, :33] - frames[:, 20]).mean() < 0.03  # the repeated row


def test_lossy_fallback_without_x264(tmp_path, monkeypatch):
    monkeypatch.setattr(vio, "_have_encoder", lambda name: False)
    frames = np.full((3, 16, 16, 3), 0.5, np.float32)
    write_video(tmp_path / "m.mp4", frames, 25)
    with av.open(os.fspath(tmp_path / "m.mp4")) as container:
        assert container.streams.video[0].codec_context.name == "mpeg4"
    assert np.abs(read_video(tmp_path / "m.mp4").frames - 0.5).max() < 0.03


def test_grey_clip_written_as_rgb(tmp_path):
    frames = ramp(3, 8, 10, channels=1)
    write_video(tmp_path / "g.mkv", frames[..., 0], 25, lossless=True)  # (F, H, W) is grey too
    clip = read_video(tmp_path / "g.mkv")
    assert clip.frames.shape == (3, 8, 10, 3)
    assert np.abs(clip.frames - frames).max() <= 1 / 255 + 1e-6


def test_write_video_clips_values(tmp_path):
    frames = np.stack([np.full((8, 8, 3), -1.0), np.full((8, 8, 3), 2.0)])
    write_video(tmp_path / "c.mp4", frames, 25, lossless=True)
    got = read_video(tmp_path / "c.mp4").frames
    assert got[0].max() == 0 and got[1].min() == 1


def test_write_frames_round_trip(tmp_path):
    frames = ramp(12, 9, 7)
    paths = write_frames(tmp_path / "out", frames)
    assert [p.name for p in paths][:2] == ["frame_00000.png", "frame_00001.png"] and len(paths) == 12
    clip = read_video(tmp_path / "out")
    np.testing.assert_array_equal(clip.frames, frames)
    assert clip.fps == vio.FOLDER_FPS
    np.testing.assert_array_equal(read_video(tmp_path / "out", (3, 10), fps=12.5).frames, frames[3:10])
    assert read_video(tmp_path / "out", fps=12.5).fps == 12.5


def test_write_frames_grey_and_start(tmp_path):
    frames = ramp(3, 5, 6, channels=1)
    paths = write_frames(tmp_path / "g", frames, prefix="shot-1", start=8)
    assert [p.name for p in paths] == ["shot-1_00008.png", "shot-1_00009.png", "shot-1_00010.png"]
    clip = read_video(tmp_path / "g")
    assert clip.frames.shape == (3, 5, 6, 1)
    np.testing.assert_array_equal(clip.frames, frames)


def test_folder_natural_order_and_mixed_colour(tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    for i in (10, 2, 1):
        write_image(folder / f"f{i}.png", np.full((4, 4), i / 255))
    write_image(folder / "f11.png", np.full((4, 4, 3), 11 / 255))
    (folder / "notes.txt").write_text("ignored")
    (folder / ".hidden.png").write_bytes(b"ignored")
    clip = read_video(folder)
    assert clip.frames.shape == (4, 4, 4, 3)  # one colour frame makes the clip colour
    np.testing.assert_allclose(clip.frames[:, 0, 0, 0] * 255, [1, 2, 10, 11], atol=1e-4)


def test_write_frames_refuses(tmp_path):
    with pytest.raises(VideoError, match="prefix"):
        write_frames(tmp_path / "a", ramp(1), prefix="../x")
    with pytest.raises(VideoError, match="shape"):
        write_frames(tmp_path / "a", np.zeros((2, 3)))
    with pytest.raises(VideoError, match="does not exist"):
        write_frames(tmp_path / "no" / "a", ramp(1))
    bad = ramp(4)
    bad[3, 0, 0, 0] = np.nan
    with pytest.raises(VideoError, match="frame 3"):
        write_frames(tmp_path / "a", bad)
    assert list(tmp_path.iterdir()) == []  # nothing written, not even a temporary folder


def test_write_video_leaves_nothing_on_failure(tmp_path):
    bad = ramp(6)
    bad[4] = np.inf
    with pytest.raises(VideoError, match="frame 4"):
        write_video(tmp_path / "v.mp4", bad, 25)
    assert list(tmp_path.iterdir()) == []
    old = tmp_path / "old.mp4"
    old.write_bytes(b"previous")
    with pytest.raises(VideoError):
        write_video(old, bad, 25)
    assert old.read_bytes() == b"previous" and len(list(tmp_path.iterdir())) == 1


@pytest.mark.parametrize("name, args, message", [("v.avi", (25,), "unknown video suffix"),
                                                 ("v.mp4", (0,), "fps"), ("v.mp4", (float("nan"),), "fps"),
                                                 ("missing/v.mp4", (25,), "does not exist")])
def test_write_video_refuses(tmp_path, name, args, message):
    with pytest.raises(VideoError, match=message):
        write_video(tmp_path / name, ramp(2), *args)
    assert not any(tmp_path.rglob("*"))


# ======================================================== the shared clips
def test_carphone_ranges(carphone):
    full = read_video(carphone)
    assert full.frames.shape == (120, 144, 176, 3)
    assert full.fps == pytest.approx(30000 / 1001)
    assert 0 <= full.frames.min() and full.frames.max() <= 1
    part = read_video(carphone, (100, 110))
    np.testing.assert_array_equal(part.frames, full.frames[100:110])
    np.testing.assert_array_equal(read_video(carphone, (0, 1)).frames, full.frames[:1])
    np.testing.assert_array_equal(read_video(carphone, (115, None)).frames, full.frames[115:])
    assert probe_video(carphone) == {"frames": 120, "height": 144, "width": 176, "fps": pytest.approx(29.97, abs=1e-2),
                                     "codec": "h264", "duration": pytest.approx(4.004)}


@pytest.mark.parametrize("frames", [(100, 200), (120, None), (130, 140)])
def test_range_outside_clip(carphone, frames):
    with pytest.raises(VideoError, match="outside the clip, which has 120 frames"):
        read_video(carphone, frames)


def test_pixel_cap_refuses_before_decoding(bigbuckbunny):
    with pytest.raises(VideoError, match=r"the clip claims 132 frames of 1280x720.*limit of 1000000 pixels"):
        read_video(bigbuckbunny, max_pixels=1_000_000)
    with pytest.raises(VideoError, match="frames 10:13 claims 3 frames"):
        read_video(bigbuckbunny, (10, 13), max_pixels=2 * 1280 * 720)
    assert read_video(bigbuckbunny, (0, 2), max_pixels=2 * 1280 * 720).frames.shape == (2, 720, 1280, 3)


def test_pixel_cap_while_decoding(tmp_path):
    path = encode(tmp_path / "raw.h264", 30, fmt="h264")  # raw H.264: no frame count in any header
    assert probe_video(path)["frames"] is None
    with pytest.raises(VideoError, match="more than 4 frames of 32x32"):
        read_video(path, max_pixels=5 * 32 * 32 - 1)
    assert read_video(path, (0, 5), max_pixels=5 * 32 * 32).frames.shape == (5, 32, 32, 3)


# ==================================================================== refusals
def test_missing_and_special_files(tmp_path):
    with pytest.raises(VideoError, match="no such file"):
        read_video(tmp_path / "nope.mp4")
    with pytest.raises(VideoError, match="no such file"):
        probe_video(tmp_path / "nope.mp4")
    (tmp_path / "empty.mp4").write_bytes(b"")
    with pytest.raises(VideoError, match="empty"):
        read_video(tmp_path / "empty.mp4")
    if hasattr(os, "mkfifo"):
        os.mkfifo(tmp_path / "pipe.mp4")
        with pytest.raises(VideoError, match="FIFO"):
            read_video(tmp_path / "pipe.mp4")


def test_not_a_video(tmp_path):
    (tmp_path / "text.mp4").write_text("this is not a video\n" * 40)
    with pytest.raises(VideoError, match="not a video file FFmpeg can read"):
        read_video(tmp_path / "text.mp4")
    write_image(tmp_path / "still.png", np.zeros((8, 8, 3)))
    os.rename(tmp_path / "still.png", tmp_path / "still.mp4")
    with pytest.raises(VideoError, match=r"still image \(png\).*folder"):
        read_video(tmp_path / "still.mp4")
    with pytest.raises(VideoError, match="still image"):
        probe_video(tmp_path / "still.mp4")


def test_audio_only(tmp_path):
    path = tmp_path / "sound.m4a"
    with av.open(os.fspath(path), "w") as out:
        stream = out.add_stream("aac", rate=44100)
        for i in range(10):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 44100, i * 1024
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    with pytest.raises(VideoError, match=r"no video stream \(streams: audio\)"):
        read_video(path)


def test_truncated_mp4(tmp_path, carphone):
    data = carphone.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[:len(data) // 2])  # the index (moov) sits at the end: nothing is readable
    with pytest.raises(VideoError, match="not a video file FFmpeg can read.*cut short"):
        read_video(cut)
    fast = remux(carphone, tmp_path / "fast.mp4", movflags="faststart")  # index first: frames until the cut
    data = fast.read_bytes()
    cut.write_bytes(data[:len(data) // 2])
    with pytest.raises(VideoError, match=r"(corrupt video data|stream ends) at frame \d+"):
        read_video(cut)
    assert read_video(cut, (0, 20)).frames.shape[0] == 20  # the intact start is still readable


def test_truncated_mkv(tmp_path, carphone):
    data = remux(carphone, tmp_path / "full.mkv").read_bytes()
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(data[:len(data) // 2])
    with pytest.raises(VideoError, match="truncated|missing frames"):
        read_video(cut)


def test_corrupt_midway(tmp_path, carphone):
    data = bytearray(carphone.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 2000] = np.random.default_rng(0).integers(0, 256, 2000, dtype=np.uint8).tobytes()
    (tmp_path / "garbled.mp4").write_bytes(bytes(data))
    with pytest.raises(VideoError, match=r"corrupt video data at frame \d+.*damaged") as caught:
        read_video(tmp_path / "garbled.mp4")
    failed_at = int(str(caught.value).split("at frame ")[1].split()[0])
    assert 20 < failed_at < 100
    assert read_video(tmp_path / "garbled.mp4", (0, 10)).frames.shape[0] == 10


def test_frame_size_changes(tmp_path):
    first = encode(tmp_path / "a.h264", 4, size=(32, 32), fmt="h264").read_bytes()
    second = encode(tmp_path / "b.h264", 4, size=(48, 32), fmt="h264").read_bytes()
    (tmp_path / "both.h264").write_bytes(first + second)
    with pytest.raises(VideoError, match="frame 4 is 48x32 but frame 0 is 32x32"):
        read_video(tmp_path / "both.h264")
    assert read_video(tmp_path / "both.h264", (0, 4)).frames.shape == (4, 32, 32, 3)


def test_folder_frames_of_different_size(tmp_path):
    for i, size in enumerate([(4, 4), (4, 4), (5, 4)]):
        write_image(tmp_path / f"frame_{i}.png", np.zeros(size))
    with pytest.raises(VideoError, match=r"frame 2 \(frame_2.png\) is 4x5 but frame 0 \(frame_0.png\) is 4x4"):
        read_video(tmp_path)
    assert read_video(tmp_path, (0, 2)).frames.shape == (2, 4, 4, 1)


@pytest.mark.parametrize("suffix", [".mp4", ".mkv"])
def test_variable_frame_rate(tmp_path, suffix):
    path = encode(tmp_path / f"vfr{suffix}", 8, pts=[0, 1, 2, 5, 6, 10, 11, 12], time_base=Fraction(1, 25))
    with pytest.raises(VideoError, match=r"variable frame rate or missing frames \(frame 3 comes 3 frame intervals .*ffmpeg -i IN -vf fps=25 OUT.mp4"):
        read_video(path)


def test_constant_rate_with_rounded_timestamps(tmp_path, carphone):
    clip = read_video(remux(carphone, tmp_path / "ms.mkv"), (0, 40))  # 29.97 fps in 1 ms ticks: 33, 34, 33, ...
    assert clip.frames.shape[0] == 40 and clip.fps == pytest.approx(29.97, abs=0.01)


def test_folder_errors(tmp_path):
    with pytest.raises(VideoError, match="holds no frame images"):
        read_video(tmp_path)
    (tmp_path / "readme.txt").write_text("x")
    with pytest.raises(VideoError, match="holds no frame images"):
        probe_video(tmp_path)
    write_frames(tmp_path / "clip", ramp(3, 4, 4))
    with pytest.raises(VideoError, match="outside the clip, which has 3 frames"):
        read_video(tmp_path / "clip", (2, 5))
    with pytest.raises(VideoError, match="claims 3 frames of 4x4"):
        read_video(tmp_path / "clip", max_pixels=47)
    (tmp_path / "clip" / "frame_00001.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(VideoError, match="frame 1 of"):
        read_video(tmp_path / "clip")
    assert probe_video(tmp_path / "clip") == {"frames": 3, "height": 4, "width": 4, "fps": 25.0, "codec": "png",
                                              "duration": 0.12}
