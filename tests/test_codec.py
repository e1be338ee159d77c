"""The codec: quantizer parity, entropy and centre coding round trips, the bitstream's checks, rate control, CLI."""

import json
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
import torch

import smoe
from conftest import random_model
from smoe.codec import BitstreamError, compress, decode, read_info
from smoe.codec.bitstream import Header, read_bitstream, write_bitstream
from smoe.codec.encoder import check_rate
from smoe.codec.entropy import Decoder, Encoder, fit_model
from smoe.codec.positions import decode_centres, encode_centres, morton, unmorton
from smoe.codec.quantizer import Steps, dequantize, quantize, quantize_view, symbol_names


def _arrays(n=60, h=24, w=40, channels=3, seed=0):
    return random_model(n, h, w, channels=channels, seed=seed, margin=0.05).numpy()


@pytest.mark.parametrize("mode,channels", [("smoe", 3), ("smoe", 1), ("rbf", 3)])
def test_dequantize_is_a_fixed_point_of_quantize(mode, channels):
    steps = Steps()
    symbols = quantize(_arrays(channels=channels), (24, 40), mode, steps)
    assert symbols.shape[1] == len(symbol_names(channels, mode))
    again = quantize(dequantize(symbols, channels, mode, steps), (24, 40), mode, steps)
    np.testing.assert_array_equal(again, symbols)


@pytest.mark.parametrize("mode", ["smoe", "rbf"])
def test_straight_through_view_matches_the_decoder_and_passes_gradients(mode):
    arrays, steps = _arrays(), Steps()
    want = dequantize(quantize(arrays, (24, 40), mode, steps), 3, mode, steps)
    params = [torch.from_numpy(arrays[k]).double().requires_grad_() for k in ("mu", "chol", "pi", "experts")]
    got = quantize_view(*params, (24, 40), mode, steps)
    for name, g in zip(("mu", "chol", "pi", "experts"), got):
        np.testing.assert_allclose(g.detach().numpy(), want[name], rtol=1e-5, atol=1e-6, err_msg=name)
    got[0].sum().backward()
    inside = (arrays["mu"] > -16) & (arrays["mu"] < np.array([40 + 16, 24 + 16]))
    np.testing.assert_array_equal(params[0].grad.numpy(), inside.astype(np.float64))


def test_centres_outside_the_margin_are_clamped_to_it():
    arrays = _arrays()
    arrays["mu"][0] = (-500.0, 900.0)
    back = dequantize(quantize(arrays, (24, 40), "smoe", Steps()), 3, "smoe", Steps())
    np.testing.assert_allclose(back["mu"][0], (-16.0, 24 + 16.0))


def test_a_symbol_beyond_the_range_is_refused():
    arrays = _arrays()
    arrays["experts"][3] = 1e6
    with pytest.raises(ValueError, match="kernel 3: y needs a symbol beyond"):
        quantize(arrays, (24, 40), "smoe", Steps())


def test_morton_codes_round_trip_and_interleave():
    rng = np.random.default_rng(0)
    ix, iy = rng.integers(0, 1 << 21, 500), rng.integers(0, 1 << 21, 500)
    back = unmorton(morton(ix, iy))
    np.testing.assert_array_equal(back[0], ix)
    np.testing.assert_array_equal(back[1], iy)
    assert list(morton(np.array([1, 0, 3, 2]), np.array([0, 1, 3, 0]))) == [1, 2, 15, 4]


def test_symbols_raw_bits_and_centres_round_trip():
    rng = np.random.default_rng(1)
    values = np.round(rng.laplace(0, 4, 3000)).astype(np.int64)
    bits = rng.integers(0, 41, 200)
    raw = rng.integers(0, 1 << 62, 200, dtype=np.uint64) & ((np.uint64(1) << bits.astype(np.uint64)) - np.uint64(1))
    codes = np.sort(morton(rng.integers(0, 1500, 900), rng.integers(0, 1000, 900)))
    enc = Encoder()
    model = fit_model(values)
    enc.symbols(values, model)
    enc.raw(raw, bits)
    centre_model = encode_centres(enc, codes)
    dec = Decoder(enc.words())
    np.testing.assert_array_equal(dec.symbols(3000, model), values)
    np.testing.assert_array_equal(dec.raw(bits), raw)
    np.testing.assert_array_equal(decode_centres(dec, 900, centre_model), codes)


def test_the_entropy_model_costs_close_to_the_empirical_entropy():
    values = np.round(np.random.default_rng(2).laplace(0, 6, 20000)).astype(np.int64)
    _, counts = np.unique(values, return_counts=True)
    p = counts / counts.sum()
    entropy = -(p * np.log2(p)).sum()
    enc = Encoder()
    enc.symbols(values, fit_model(values))
    assert entropy <= enc.bits() / len(values) <= entropy + 0.05


@pytest.fixture(scope="module")
def image():
    y, x = np.mgrid[0:48, 0:64] / 64.0
    return np.stack([np.sin(6 * x) * 0.4 + 0.5, (x + y) / 2, (y > 0.4) * 0.8 + 0.1], -1).astype(np.float32)


@pytest.fixture(scope="module")
def compressed(image):
    return compress(image, bpp=3.0, seconds=4, seed=1)


def test_round_trip_decodes_the_encoders_quantized_model_bit_for_bit(image, compressed):
    header, symbols, _ = read_bitstream(compressed.data)
    decoded = decode(compressed.data)
    want = dequantize(symbols, 3, "smoe", header.steps)
    for name in ("mu", "chol", "pi", "experts"):
        np.testing.assert_array_equal(getattr(decoded.model, name).numpy(), want[name])
        np.testing.assert_array_equal(getattr(decoded.model, name).numpy(), getattr(compressed.fitted.model, name).numpy())
    np.testing.assert_array_equal(decoded.render(), compressed.fitted.render())
    assert compressed.psnr == pytest.approx(smoe.metrics.psnr(image, np.clip(decoded.render(), 0, 1)), abs=1e-12)
    # re-encoding the decoded symbols gives the same bytes
    assert write_bitstream(header, symbols)[0] == compressed.data


def test_rate_lands_at_most_three_percent_below_the_budget(image, compressed):
    budget = int(3.0 * 48 * 64 / 8)
    assert 0.97 * budget <= len(compressed.data) <= budget
    assert compressed.psnr > 30 and compressed.float_psnr > 30


def test_a_stream_short_of_its_rate_takes_the_finest_steps_that_fit():
    from smoe.codec.encoder import MIN_STEP_SCALE, _finest_steps, _stream_bytes
    from smoe.fitted import FittedModel

    fitted = FittedModel(random_model(60, 24, 40, seed=3), (24, 40), "smoe", "raster", (0, 0), None, 16)
    steps = Steps()
    coarse, finest = _stream_bytes(fitted, steps), _stream_bytes(fitted, steps.scaled(MIN_STEP_SCALE))
    assert coarse < finest
    budget = (coarse + finest) // 2
    chosen = _finest_steps(fitted, steps, budget)
    scale = chosen.position / steps.position
    assert MIN_STEP_SCALE < scale < 1 and np.allclose(chosen.astuple(), steps.scaled(scale).astuple())
    assert _stream_bytes(fitted, chosen) <= budget < _stream_bytes(fitted, steps.scaled(0.95 * scale))
    assert _finest_steps(fitted, steps, finest) == steps.scaled(MIN_STEP_SCALE)


def test_decoded_model_renders_at_any_size(compressed):
    assert decode(compressed.data).render(scale=2).shape == (96, 128, 3)


def test_info_reports_sections_that_add_up(compressed):
    info = read_info(compressed.data)
    assert sum(info["sections"].values()) == len(compressed.data) == info["bytes"]
    assert info["kernels"] == len(compressed.fitted.model)
    assert info["bits_per_kernel"] == pytest.approx(compressed.bits_per_kernel)


def test_grey_rbf_and_kernel_count_requests(image):
    grey = image.mean(-1)
    c = compress(grey, kernels=40, seconds=1)
    assert decode(c.data).model.channels == 1 and len(c.fitted.model) <= 40
    rbf = compress(image, kernels=30, seconds=1, steps=Steps(luma=1 / 32))
    assert rbf.fitted.mode == "smoe"  # the fit's mode is the default's; RBF bitstreams are covered below
    arrays = _arrays()
    header = Header((24, 40), 3, "rbf", "global", 8, (1, 2), 60, Steps())
    data = write_bitstream(header, quantize(arrays, (24, 40), "rbf", Steps()))[0]
    back = decode(data)
    assert (back.mode, back.scope, back.tile, back.tile_offset) == ("rbf", "global", 8, (1, 2))
    assert (back.model.pi.numpy() == 1).all()


@pytest.mark.parametrize("kwargs,problem", [
    ({"bpp": 0}, "bpp must be"), ({"bpp": 25}, "bpp must be"), ({"bpp": float("nan")}, "bpp must be"),
    ({"bpp": 1, "kernels": 3}, "exactly one"), ({}, "exactly one"), ({"target_psnr": 70}, "target_psnr must be"),
])
def test_encoder_options_out_of_range_are_refused_before_any_work(kwargs, problem):
    with pytest.raises(ValueError, match=problem):
        check_rate(**kwargs)
    with pytest.raises(ValueError, match=problem):
        compress(np.full((8, 8), np.nan), **kwargs)  # the bad image would fail later: the rate is checked first


def test_a_rate_too_small_for_a_stream_is_refused(image):
    with pytest.raises(ValueError, match="too few for a bitstream"):
        compress(image, bpp=0.01, seconds=1)


def _valid():
    arrays = _arrays()
    header = Header((24, 40), 3, "smoe", "raster", 16, (0, 0), 60, Steps())
    return write_bitstream(header, quantize(arrays, (24, 40), "smoe", Steps()))[0]


def _recrc(data):
    return data[:-4] + struct.pack("<I", zlib.crc32(data[:-4]))


def _patched(data, at, fmt, value):
    return _recrc(data[:at] + struct.pack(fmt, value) + data[at + struct.calcsize(fmt):])


@pytest.mark.parametrize("mutate,problem", [
    (lambda d: b"PK" + d[2:], "wrong magic"),
    (lambda d: d[:30], "truncated"),
    (lambda d: d[:-10], "CRC mismatch"),
    (lambda d: d[:100] + bytes([d[100] ^ 1]) + d[101:], "CRC mismatch"),
    (lambda d: _patched(d, 4, "<B", 2), "version 2 is newer"),
    (lambda d: _patched(d, 8, "<I", 1 << 30), "exceeds the limit"),
    (lambda d: _patched(d, 20, "<I", 10**6), "more than .* coded bytes can hold"),
    (lambda d: _patched(d, 20, "<I", 1 << 25), "above the limit"),
    (lambda d: _patched(d, 49, "<I", 3), "section sizes add up|found where section"),
    (lambda d: _patched(d, 49, "<I", 10**6), "declares 1000000 bytes"),
    (lambda d: _patched(d, 24, "<f", 0.0), "position step"),
    (lambda d: _recrc(d[:-4] + b"\0\0\0\0" + d[-4:]), "section sizes add up"),
])
def test_bad_bitstreams_are_refused_with_one_line(mutate, problem):
    with pytest.raises(BitstreamError, match=problem) as info:
        decode(mutate(_valid()), "f.smoe")
    assert "\n" not in str(info.value) and str(info.value).startswith("f.smoe: ")


def test_bitstream_error_is_a_model_file_error():
    assert issubclass(BitstreamError, smoe.modelfile.ModelFileError)


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "smoe", *map(str, args)], capture_output=True, text=True,
                          timeout=300)


def test_cli_encode_decode_info(tmp_path, image):
    src = tmp_path / "in.png"
    smoe.write_image(src, image)
    out = tmp_path / "a.smoe"
    done = _cli("encode", src, "-o", out, "--bpp", 3, "--seconds", 4, "--quiet")
    assert done.returncode == 0, done.stderr
    assert 0.97 * 1152 <= out.stat().st_size <= 1152
    done = _cli("decode", out, "-o", tmp_path / "d.png", "--size", "32x24")
    assert done.returncode == 0, done.stderr
    assert smoe.read_image(tmp_path / "d.png").shape == (24, 32, 3)
    info = json.loads(_cli("info", "--json", out).stdout)
    assert info["format"] == "smoe-bitstream" and info["bytes"] == out.stat().st_size


def test_cli_refuses_a_corrupt_bitstream_and_writes_nothing(tmp_path):
    bad = tmp_path / "bad.smoe"
    bad.write_bytes(_valid()[:-1])
    done = _cli("decode", bad, "-o", tmp_path / "x.png")
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "CRC mismatch" in done.stderr
    assert not (tmp_path / "x.png").exists()
    done = _cli("decode", bad, "-o", tmp_path / "y.png", "--scale", 1e6)
    assert done.returncode == 2 and not (tmp_path / "y.png").exists()


@pytest.mark.parametrize("channels,mode", [(3, "smoe"), (1, "smoe"), (3, "rbf")])
def test_an_empty_model_codes_into_the_fixed_overhead_and_back(channels, mode):
    from smoe.codec.bitstream import overhead_bytes

    header = Header((10, 12), channels, mode, "raster", 16, (0, 0), 0, Steps())
    data = write_bitstream(header, np.zeros((0, len(header.names)), np.int64))[0]
    assert len(data) == overhead_bytes(channels, mode)
    assert len(decode(data).model) == 0
