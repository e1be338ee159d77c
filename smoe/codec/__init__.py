"""The SMoE image codec: a model quantized, entropy coded and framed as a ``.smoe`` bitstream.

* :mod:`~smoe.codec.quantizer`: kernels to integers and back (the decoder's
  definition of the model), and the same rounding for quantization-aware fitting;
* :mod:`~smoe.codec.positions`: Morton order and gap coding of the centres;
* :mod:`~smoe.codec.entropy`: per-file models and range coding (``constriction``);
* :mod:`~smoe.codec.bitstream`: the file layout, written and checked;
* :mod:`~smoe.codec.encoder`: fit, fine-tune under quantization, rate control.

The layout is specified in ``docs/bitstream.md``.

Examples
--------
>>> import numpy as np, smoe
>>> image = np.random.default_rng(0).random((32, 32, 3)).astype(np.float32)
>>> data = smoe.encode(image, bpp=4.0, seconds=1)
>>> smoe.decode(data).render().shape
(32, 32, 3)
"""

from __future__ import annotations

from .bitstream import BitstreamError, read_bitstream
from .encoder import MAX_BPP, Compressed, compress
from .quantizer import Steps, dequantize

__all__ = ["encode", "decode", "compress", "Compressed", "Steps", "BitstreamError", "read_info", "read_file",
           "is_bitstream", "MAX_BPP", "MAX_BITSTREAM_BYTES"]

#: Largest bitstream file read: 10 000 bits per kernel at the kernel limit is far beyond any real stream.
MAX_BITSTREAM_BYTES = 1 << 28


def encode(image, *, bpp: float | None = None, kernels: int | None = None, target_psnr: float | None = None,
           **options) -> bytes:
    """The bitstream of an image (:func:`compress`, which says what else it measured); ``smoe.encode``.

    Give exactly one of ``bpp`` (a rate the file stays at or below), ``kernels`` or ``target_psnr``;
    ``options`` go to :func:`compress` (``steps``, ``seconds``, ``seed``, ``quiet``).
    """
    return compress(image, bpp=bpp, kernels=kernels, target_psnr=target_psnr, **options).data


def decode(data: bytes, name: str = "bitstream"):
    """The :class:`smoe.FittedModel` a bitstream holds; ``smoe.decode``.

    Parameters
    ----------
    data : bytes
    name : str
        What error messages call the data (a file name).

    Returns
    -------
    FittedModel
        Renders at any size, like every model: ``smoe.decode(data).render(scale=2)``.

    Raises
    ------
    BitstreamError
        A truncated, corrupt or hostile stream (a :class:`smoe.modelfile.ModelFileError`).
    """
    import torch

    from ..fitted import FittedModel
    from ..model import Model

    header, symbols, _ = read_bitstream(data, name)
    arrays = dequantize(symbols, header.channels, header.mode, header.steps)
    try:
        model = Model(*(torch.from_numpy(arrays[k]) for k in ("mu", "chol", "pi", "experts")))
    except ValueError as exc:
        raise BitstreamError(f"{name}: decodes to an invalid model ({exc})") from exc
    return FittedModel(model, header.frame, header.mode, header.scope, header.tile_offset, None, header.tile)


def is_bitstream(path) -> bool:
    """True if the file at ``path`` starts with the bitstream's magic bytes (False if it cannot be read)."""
    import os
    import stat

    from .bitstream import MAGIC

    try:
        if not stat.S_ISREG(os.stat(path).st_mode):  # a FIFO or device would block open(); its reader refuses it
            return False
        with open(path, "rb") as handle:
            return handle.read(len(MAGIC)) == MAGIC
    except OSError:
        return False


def read_file(path) -> bytes:
    """The bytes of a ``.smoe`` file, refusing a missing, special or oversized one with a :class:`BitstreamError`."""
    from ..limits import read_regular

    try:
        return read_regular(path, MAX_BITSTREAM_BYTES, "an smoe bitstream")
    except ValueError as exc:
        raise BitstreamError(f"{path}: {exc}") from exc


def read_info(data: bytes, name: str = "bitstream") -> dict:
    """What a bitstream holds, for ``smoe info``: header fields, section sizes, bits per kernel."""
    header, symbols, sizes = read_bitstream(data, name)
    h, w = header.frame
    return {"format": "smoe-bitstream", "bytes": len(data), "kernels": header.kernels, "height": h, "width": w,
            "channels": header.channels, "mode": header.mode, "scope": header.scope, "tile": header.tile,
            "tile_offset": list(header.tile_offset), "bpp": 8 * len(data) / (h * w),
            "bits_per_kernel": 8 * len(data) / header.kernels if header.kernels else None,
            "steps": dict(zip(("position", "log_diag", "shear", "gate", "luma", "chroma"), header.steps.astuple())),
            "sections": sizes}
