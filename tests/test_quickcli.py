"""The quick command line: help, argument errors and ``smoe info`` never load torch, numba or scipy,
and the NumPy kernel facts ``info`` prints equal the torch ones."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from smoe import kernelfacts
from smoe.fitted import FittedModel
from smoe.model import Model, bounding_radius
from smoe.modelfile import save_model
from smoe.rasterizer import kernels_per_tile

HEAVY = ("torch", "numba", "scipy", "matplotlib")
# Runs smoe's main on the arguments, then prints the exit status and which heavy modules were imported.
PROBE = ("import json, sys; from smoe.cli import main; code = main(sys.argv[1:]); "
         f"print(json.dumps([code, sorted(m for m in {HEAVY!r} if m in sys.modules)]))")


def _run(*args: str) -> tuple[int, list[str]]:
    done = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, timeout=120)
    return tuple(json.loads(done.stdout.strip().splitlines()[-1]))


COMMANDS = ["fit", "fit-batch", "fit-video", "render", "eval", "info", "denoise", "upscale", "segment", "encode", "decode"]


@pytest.mark.parametrize("args", [["--help"], *([c, "--help"] for c in COMMANDS)])
def test_help_loads_no_heavy_module(args):
    assert _run(*args) == (0, [])


#: Bad arguments, and inputs found missing before any work: each is refused before torch loads.
BAD_ARGUMENTS = [
    "encode x.png -o y.smoe --bpp 0", "encode x.png -o y.smoe --bpp 25", "encode x.png -o y.smoe --bpp 1 --kernels 3",
    "encode x.png -o y.smoe", "encode x.png -o y.smoe --bpp nan", "encode /no/such/image.png -o y.smoe --bpp 1",
    "decode /no/such/file.smoe -o x.png", "decode x.smoe -o y.png --scale 0",
    "fit --iters -3 x.png", "fit --mode foo", "fit --lam 1 --mode rbf /no/such/image.png", "fit /no/such/image.png",
    "fit-batch --workers 2 --scheduler tcp://host:1 a.png", "render", "render /no/such/model.npz -o x.png",
    "info", "info /no/such/model.npz", "eval /no/such/a.png /no/such/b.png",
    "denoise --models 0 x.png -o y.png", "denoise --sigma 5 x.png -o y.png",
    "upscale /no/such/image.png --scale 2 -o x.png", "segment /no/such/image.png -o x.png",
    "fit-video", "fit-video x.mp4", "fit-video --iters -3 x.mp4 -n 4", "fit-video x.mp4 -n 4 --frames 5:2",
    "fit-video x.mp4 -n 4 --frames 7", "fit-video x.mp4 -n 4 --tile-t 65", "fit-video x.mp4 -n 4 --fps 0",
    "fit-video x.mp4 -n 4 --mode rbf --lam 1", "fit-video /no/such/clip.mp4 -n 4", "fit-video /no/such/dir/ -n 4",
    "render m.npz --fps-scale 0 -o x.mp4",
]


@pytest.mark.parametrize("args", BAD_ARGUMENTS)
def test_argument_errors_load_no_heavy_module(args):
    assert _run(*args.split()) == (2, [])


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    rng = np.random.default_rng(3)
    model = _random_model(rng, 200, np.float32, channels=3)
    path = tmp_path_factory.mktemp("quick") / "m.smoe.npz"
    save_model(path, FittedModel(model, (40, 56), "smoe", "global", (3, 9)))
    return path


@pytest.mark.parametrize("json_flag", [[], ["--json"]])
def test_info_loads_no_heavy_module(model_file, json_flag):
    assert _run("info", *json_flag, str(model_file)) == (0, [])


@pytest.mark.parametrize("args", ["denoise --models 1000 x.png -o y.png",
                                  "denoise --models 8 --shift-step 4 x.png -o y.png",
                                  "denoise --area-power 2 x.png -o y.png"])
def test_denoise_count_and_layout_refused_before_heavy_modules(args):
    assert _run(*args.split()) == (2, [])


def test_render_past_the_output_limit_refused_before_heavy_modules(model_file, tmp_path):
    out = tmp_path / "huge.png"
    assert _run("render", str(model_file), "--scale", "2000", "-o", str(out)) == (2, [])
    assert not out.exists()


def test_render_options_of_the_other_kind_refused_before_heavy_modules(model_file, tmp_path):
    from test_video_modelfile import _fitted
    from smoe.video.modelfile import save_video_model

    video = tmp_path / "v.smoe.npz"
    save_video_model(video, _fitted())
    for args in ([str(model_file), "--fps-scale", "2", "-o", str(tmp_path / "x.png")],
                 [str(video), "--sharpen", "0.7", "-o", str(tmp_path / "x.mp4")],
                 [str(video), "--scope", "global", "-o", str(tmp_path / "x.mp4")],
                 [str(video), "-o", str(tmp_path / "x.png")]):
        assert _run("render", *args) == (2, []), args
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.smoe.npz"]


def _random_model(rng, n: int, dtype, channels: int = 1) -> Model:
    """Kernels from needles to blobs, some dead, some centred outside the frame."""
    mu = rng.uniform(-20, 80, (n, 2))
    chol = np.stack([np.exp(rng.normal(-1, 1.5, n)), rng.normal(0, 1, n), np.exp(rng.normal(-1, 1.5, n))], 1)
    pi = rng.normal(0.5, 0.5, n)
    return Model(*(a.astype(dtype) for a in (mu, chol, pi, rng.random((n, channels)))))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_numpy_kernel_facts_equal_torch(dtype):
    rng = np.random.default_rng(0)
    for trial in range(40):
        model = _random_model(rng, int(rng.integers(0, 300)), dtype)
        arrays = model.numpy()
        frame = (int(rng.integers(1, 70)), int(rng.integers(1, 70)))
        tile = int(rng.choice([4, 8, 16, 32, 64]))
        offset = (int(rng.integers(0, tile)), int(rng.integers(0, tile)))
        # torch's vectorized sqrt and scalar division are not always correctly rounded (NumPy's are): radii may
        # differ in the last bit, which moves a box only if its edge falls on a tile border to that bit.
        np.testing.assert_allclose(kernelfacts.bounding_radius(arrays["chol"]), bounding_radius(model.chol).numpy(),
                                   rtol=1e-6, atol=0)
        for mode in ("smoe", "rbf"):
            expected = kernels_per_tile(model, *frame, mode=mode, tile_offset=offset, tile=tile)
            got = kernelfacts.kernels_per_tile(arrays["mu"], arrays["chol"], arrays["pi"], frame, mode=mode,
                                               tile_offset=offset, tile=tile)
            assert got == expected, (trial, mode)
        if len(model):
            axes = torch.linalg.eigvalsh(model.covariance.double()).clamp(min=0).sqrt().numpy()
            facts = kernelfacts.bandwidth(arrays["chol"])
            expected = {"median_major": np.median(axes[:, 1]), "median_minor": np.median(axes[:, 0]),
                        "median_sigma": np.median(np.sqrt(axes[:, 0] * axes[:, 1])),
                        "min_major": axes[:, 1].min(), "max_major": axes[:, 1].max()}
            assert facts == pytest.approx(expected, rel=1e-12, abs=0)


def test_bandwidth_of_no_kernels_is_none():
    assert kernelfacts.bandwidth(np.zeros((0, 3), np.float32)) is None


@pytest.mark.parametrize("json_flag", [[], ["--json"]])
def test_info_of_a_bitstream_loads_no_heavy_module(tmp_path, json_flag):
    import fuzzing

    path = tmp_path / "b.smoe"
    path.write_bytes(fuzzing.base_bitstreams()[0])
    assert _run("info", *json_flag, str(path)) == (0, [])
