"""Saving and loading fitted models, without pickle.

A model file is a NumPy ``.npz`` archive (``np.savez_compressed``) holding

=========== ============ ==========================================
name        shape        content
=========== ============ ==========================================
``mu``      (L, 2)       kernel centres, float32 or float64
``chol``    (L, 3)       precision Cholesky factors, same dtype
``pi``      (L,)         gate weights, same dtype
``experts`` (L, C)       constant experts, same dtype, C = 1 or 3
``meta``    (n,) uint8   UTF-8 JSON object, see below
=========== ============ ==========================================

``meta`` holds ``format`` (``"smoe-model"``), ``format_version`` (2),
``mode`` (``"smoe"``/``"rbf"``), ``scope`` (``"raster"``/``"global"``),
``height`` and ``width`` of the image the model was fitted on, ``channels``,
``tile_offset`` (``[oy, ox]``), ``tile`` (the tile side in pixels; files
without it were written when it was always 16), ``smoe_version`` (the writer's) and ``spec``
(the resolved :class:`smoe.spec.FitSpec` as a JSON object, or null), so a
file says how to render the model and how to fit it again.

Format 1 stored no tile offset (it was always ``[0, 0]``) and a free JSON
object ``settings`` instead of ``spec``; such files still load, with the spec
read from ``settings`` where those are the fields of a spec.

Loading never unpickles: :mod:`smoe.archive` parses the zip structure and
the ``.npy`` headers itself and refuses an array of Python objects, so opening
a model file from a stranger cannot run code; sizes are checked against the
caps of :mod:`smoe.limits` before memory is committed.  Parameters are stored
in their own dtype, so a saved model renders bit-identically after loading.
Reading and checking a file needs NumPy only (:func:`read_model_arrays`, what
``smoe info`` uses); torch is loaded when :func:`load_model` builds the model.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from pathlib import Path

import numpy as np

from .archive import ArchiveError, NpyHeader, Npz
from .atomic import atomic_write_bytes
from .limits import MAX_KERNELS, MAX_META_BYTES, MAX_PARAMETER, check_frame, load_json, open_regular
from .fitted import FittedModel
from .sizes import TILE, check_tile_offset, check_tile_size
from .spec import MODES, SCOPES, FitSpec
from .version import __version__
from .validate import one_line

__all__ = ["ModelFileError", "save_model", "load_model", "read_model_file", "read_model_arrays", "fitted_from_arrays",
           "model_file_bytes", "FORMAT_NAME", "FORMAT_VERSION"]

FORMAT_NAME = "smoe-model"
#: The newest format version this code reads and the one it writes.
FORMAT_VERSION = 2

_ARRAYS = ("mu", "chol", "pi", "experts")
# Besides format and format_version, by format version.
_REQUIRED_META = {1: ("mode", "scope", "height", "width", "channels"),
                  2: ("mode", "scope", "height", "width", "channels", "tile_offset", "spec")}
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")  # a zip with members / an empty zip


class ModelFileError(ValueError):
    """A model file cannot be read; the message names the file and says why."""


# ====================================================================== save
def save_model(path, fitted: FittedModel) -> None:
    """Write a model file atomically.

    Parameters
    ----------
    path : str or os.PathLike
        Target file, written as given (``.npz`` is the conventional suffix).
    fitted : FittedModel
        The kernels (saved in their own dtype, float32 or float64, from the
        CPU) with their frame, mode, scope, tile offset and spec.

    Raises
    ------
    ValueError
        An invalid model, a frame or kernel count above the limits of
        :mod:`smoe.limits`, or a spec that JSON cannot hold.

    Examples
    --------
    >>> import smoe, tempfile, numpy as np
    >>> image = np.random.default_rng(0).random((16, 16)).astype(np.float32)
    >>> fitted = smoe.fit(image, 20, iters=3).fitted
    >>> path = tempfile.mkdtemp() + "/m.smoe.npz"
    >>> save_model(path, fitted)
    >>> load_model(path).frame
    (16, 16)
    """
    atomic_write_bytes(path, model_file_bytes(fitted))


def model_file_bytes(fitted: FittedModel) -> bytes:
    """The bytes of the model file :func:`save_model` writes."""
    if not isinstance(fitted, FittedModel):
        raise ValueError(f"save_model takes a FittedModel (smoe.fit(...).fitted), got {type(fitted).__name__}")
    check_frame(*fitted.frame)
    model = fitted.model
    model.validate()
    if len(model) > MAX_KERNELS:
        raise ValueError(f"a model file holds at most {MAX_KERNELS} kernels, got {len(model)}")
    arrays = model.numpy()
    if arrays["mu"].dtype not in (np.float32, np.float64):
        raise ValueError(f"model dtype must be float32 or float64 to be saved, got {arrays['mu'].dtype}")
    meta = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "mode": fitted.mode,
        "scope": fitted.scope,
        "height": fitted.height,
        "width": fitted.width,
        "channels": model.channels,
        "tile_offset": list(fitted.tile_offset),
        "tile": fitted.tile,
        "smoe_version": __version__,
        "spec": None if fitted.spec is None else fitted.spec.to_dict(),
    }
    text = json.dumps(meta, sort_keys=True)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays, meta=np.frombuffer(text.encode("utf-8"), dtype=np.uint8))
    return buffer.getvalue()


# ====================================================================== load
def load_model(path) -> FittedModel:
    """Read and validate a model file: the fitted model, ready to render.

    Nothing in the file is trusted: the zip structure, each array's header and
    the metadata are checked against the caps of :mod:`smoe.limits` before an
    array is allocated, and parameter values are checked as they are inflated
    (:mod:`smoe.archive`), so a bad file is refused with little memory.

    Parameters
    ----------
    path : str or os.PathLike

    Returns
    -------
    FittedModel
        Tensors on the CPU, in the dtype stored in the file; ``spec`` is None
        for a format-1 file whose settings are not a spec's fields.

    Raises
    ------
    ModelFileError
        The file is missing, not a regular file, not an ``.npz`` archive,
        truncated or corrupt, carries pickled objects, comes from a newer smoe,
        claims sizes above the limits, or holds an inconsistent or invalid
        model.  The message names the file and the problem.

    Examples
    --------
    >>> fitted = load_model("out/model.smoe.npz")  # doctest: +SKIP
    >>> fitted.frame, fitted.mode, len(fitted.model)  # doctest: +SKIP
    ((256, 384), 'smoe', 2000)
    """
    return read_model_file(path)[0]


def read_model_file(path) -> tuple[FittedModel, dict]:
    """:func:`load_model`, and the file's metadata.

    Returns
    -------
    fitted : FittedModel
    meta : dict
        ``format``, ``format_version``, ``mode``, ``scope``, ``height``,
        ``width``, ``channels``, ``tile_offset``, ``smoe_version`` and ``spec``
        (format 2) or ``settings`` (format 1); see the module docstring.
    """
    arrays, meta, spec = read_model_arrays(path)
    return fitted_from_arrays(path, arrays, meta, spec), meta


def fitted_from_arrays(path, arrays: dict[str, np.ndarray], meta: dict, spec: FitSpec | None) -> FittedModel:
    """The :class:`FittedModel` of what :func:`read_model_arrays` returned for ``path`` (loads torch).

    Lets a caller act on the metadata (say, refuse an output size) before torch is loaded.
    """
    from .model import Model  # here, not at the top: reading a file for `smoe info` must not load torch

    try:
        model = Model(*(arrays[name] for name in _ARRAYS))
    except ValueError as exc:
        raise ModelFileError(f"{path}: invalid model: {exc}") from exc
    try:
        fitted = FittedModel(model, (meta["height"], meta["width"]), meta["mode"], meta["scope"],
                             tuple(meta["tile_offset"]), spec, meta["tile"])
    except (ValueError, TypeError) as exc:
        raise ModelFileError(f"{path}: {one_line(exc)}") from exc
    return fitted


def read_model_arrays(path) -> tuple[dict[str, np.ndarray], dict, FitSpec | None]:
    """A model file's checked parameter arrays, metadata and fit spec, read with NumPy alone.

    Every check of :func:`load_model` on the file is made; only the torch
    :class:`smoe.model.Model` is not built.

    Returns
    -------
    arrays : dict of str to ndarray
        ``mu`` (L, 2), ``chol`` (L, 3), ``pi`` (L,), ``experts`` (L, C), in the stored dtype.
    meta : dict
        As :func:`read_model_file` returns it.
    spec : FitSpec or None
        The stored fit spec (None where a format-1 file's settings are not a spec's fields).

    Examples
    --------
    >>> arrays, meta, spec = read_model_arrays("out/model.smoe.npz")  # doctest: +SKIP
    >>> arrays["mu"].shape, meta["format_version"]  # doctest: +SKIP
    ((2000, 2), 2)
    """
    path = Path(path)
    with _open_archive(path) as npz:
        try:
            meta = _parse_meta(path, _read_meta(path, npz))
            headers = {name: _header(path, npz, name) for name in _ARRAYS}
            _check_arrays(path, headers, meta)
            for name in _ARRAYS:  # every value checked before any array is allocated
                _check_values(path, npz, name)
            arrays = {name: npz.read(name) for name in _ARRAYS}
        except ArchiveError as exc:
            raise _fail(path, f"truncated or corrupt model file ({exc})") from exc
        except MemoryError as exc:
            raise _fail(path, "too large to load in the memory available") from exc
    return arrays, meta, _stored_spec(path, meta)


def _stored_spec(path: Path, meta: dict) -> FitSpec | None:
    """The fit spec a file records; a format-1 file's free settings give one only if they are a spec's fields."""
    if meta["format_version"] == 1:
        settings = {key: value for key, value in meta["settings"].items() if key != "iterations"}
        try:
            return FitSpec.from_dict(settings) if settings else None
        except (ValueError, TypeError):
            return None
    if meta["spec"] is None:
        return None
    try:
        return FitSpec.from_dict(meta["spec"])
    except (ValueError, TypeError) as exc:
        raise ModelFileError(f"{path}: the stored fit spec is invalid ({one_line(exc)})") from exc


def _fail(path: Path, problem: str) -> ModelFileError:
    return ModelFileError(f"{path}: {problem}")


@contextlib.contextmanager
def _open_archive(path: Path):
    """The model file as a checked :class:`smoe.archive.Npz`, open for the body."""
    try:
        handle = open_regular(path, "a model file")
    except FileNotFoundError:
        raise ModelFileError(f"no such model file: {path}") from None
    except ValueError as exc:
        raise _fail(path, str(exc)) from None
    with handle:
        try:
            if handle.read(4) not in _ZIP_MAGIC:
                raise _fail(path, "not a smoe model file (not an .npz archive)")
            npz = Npz(handle, os.fstat(handle.fileno()).st_size)
        except ArchiveError as exc:
            raise _fail(path, f"truncated or corrupt model file ({exc})") from exc
        except OSError as exc:
            raise _fail(path, f"cannot read ({exc.strerror or exc}); check the file") from exc
        missing = [name for name in (*_ARRAYS, "meta") if name not in npz.names]
        if missing:
            raise _fail(path, f"not a smoe model file: missing array(s) {', '.join(missing)}")
        yield npz


def _header(path: Path, npz: Npz, name: str) -> NpyHeader:
    header = npz.header(name)
    if header.dtype.hasobject:
        raise _fail(path, f"array {name!r} holds pickled Python objects; refusing to load it "
                          "(a model file holds numbers only)")
    return header


def _read_meta(path: Path, npz: Npz) -> np.ndarray:
    """The metadata array, its size checked before it is inflated."""
    header = _header(path, npz, "meta")
    if header.nbytes > MAX_META_BYTES * (4 if header.dtype.kind == "U" else 1):
        raise _fail(path, f"metadata of {header.nbytes} bytes exceeds the limit of {MAX_META_BYTES >> 20} MiB; "
                          "the file is not a smoe model")
    return npz.read("meta")


def _check_values(path: Path, npz: Npz, name: str) -> None:
    """Check the values of array ``name`` while inflating them in chunks.

    A bad value is found before any array is allocated, so a crafted file
    that claims millions of kernels costs a chunk of memory, not the arrays.
    """
    header = npz.header(name)
    n_kernels, cols = header.shape[0], (header.shape[1] if header.ndim == 2 else 1)
    fortran = header.fortran_order and cols > 1
    at = 0  # flat index of the chunk's first value; chunks hold whole rows unless Fortran-ordered
    for piece in npz.chunks(name, header.dtype.itemsize * (1 if fortran else cols)):
        values = np.frombuffer(piece, dtype=header.dtype)
        bad = ~np.isfinite(values) | (np.abs(values) >= MAX_PARAMETER)
        if name == "chol":  # the diagonal b00, b11 must be positive
            index = at + np.arange(values.size)
            bad |= (values <= 0) & ((index // n_kernels if fortran else index % cols) != 1)
        if bad.any():
            k = int(np.argmax(bad))
            row = (at + k) % n_kernels if fortran else (at + k) // cols
            raise _fail(path, f"invalid model: kernel {row}: {_value_problem(name, values[k])}")
        at += values.size


def _value_problem(name: str, value: np.floating) -> str:
    """What is wrong with a value of array ``name`` that failed the checks (compared in its own dtype)."""
    if not np.isfinite(value):
        return f"{name} is not finite ({float(value)}); fix or prune that kernel"
    if np.abs(value) >= MAX_PARAMETER:
        return f"{name} holds {float(value):g}, beyond the limit of {MAX_PARAMETER:g}; fix or prune that kernel"
    return f"Cholesky diagonal must be positive, got {float(value)}"


def _parse_meta(path: Path, raw: np.ndarray) -> dict:
    """Decode and check the JSON metadata."""
    if raw.dtype == np.uint8 and raw.ndim == 1:
        try:
            text = raw.tobytes().decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _fail(path, "metadata is not UTF-8 text") from exc
    elif raw.dtype.kind == "U" and raw.ndim == 0:
        text = str(raw[()])
    else:
        raise _fail(path, f"metadata must be a uint8 byte array, got dtype {raw.dtype} and shape {raw.shape}")
    try:
        meta = load_json(text)
    except ValueError as exc:
        raise _fail(path, f"metadata is not valid JSON ({one_line(exc)})") from exc
    if not isinstance(meta, dict):
        raise _fail(path, "metadata must be a JSON object")

    if meta.get("format") != FORMAT_NAME:
        raise _fail(path, f"not a smoe model file (format {meta.get('format')!r}, expected {FORMAT_NAME!r})")
    version = meta.get("format_version")
    if not _is_positive_int(version):
        raise _fail(path, f"format_version must be a positive integer, got {version!r}")
    if version > FORMAT_VERSION:
        raise _fail(path, f"written by a newer smoe (format {version}); upgrade smoe (this one reads formats up "
                          f"to {FORMAT_VERSION})")
    missing = [key for key in _REQUIRED_META[version] if key not in meta]
    if missing:
        raise _fail(path, f"metadata lacks {', '.join(map(repr, missing))}; the file is incomplete")
    for key, choices in (("mode", MODES), ("scope", SCOPES)):
        if problem := _choice_problem(key, meta.get(key), choices):
            raise _fail(path, problem)
    try:
        check_frame(meta.get("height"), meta.get("width"))
    except ValueError as exc:
        raise _fail(path, f"{exc}; this smoe cannot render it") from None
    if meta.get("channels") not in (1, 3) or isinstance(meta.get("channels"), bool):
        raise _fail(path, f"channels must be 1 or 3, got {meta.get('channels')!r}")
    if version == 1:
        meta.setdefault("settings", {})
        if not isinstance(meta["settings"], dict):
            raise _fail(path, f"settings must be a JSON object, got {type(meta['settings']).__name__}")
        meta["tile_offset"] = [0, 0]  # format 1 knew no other
    elif meta["spec"] is not None and not isinstance(meta["spec"], dict):
        raise _fail(path, f"the stored fit spec must be a JSON object or null, got {type(meta['spec']).__name__}")
    offset = meta["tile_offset"]
    if not (isinstance(offset, list) and len(offset) == 2 and all(_is_int(o) for o in offset)):
        raise _fail(path, f"tile_offset must be a list of two whole numbers, got {offset!r}")
    meta.setdefault("tile", TILE)  # files written before the tile size was a choice used 16
    if not _is_int(meta["tile"]):
        raise _fail(path, f"tile must be a whole number, got {meta['tile']!r}")
    try:
        check_tile_size(meta["tile"])
        check_tile_offset(tuple(offset), meta["tile"])
    except ValueError as exc:
        raise _fail(path, str(exc)) from None
    meta.setdefault("smoe_version", "unknown")
    return meta


def _check_arrays(path: Path, arrays: dict[str, np.ndarray], meta: dict) -> None:
    """Dtypes and shapes, before Model checks the values."""
    dtype = arrays["mu"].dtype
    for name in _ARRAYS:
        array = arrays[name]
        if array.dtype not in (np.float32, np.float64):
            raise _fail(path, f"array {name!r} has dtype {array.dtype}; expected float32 or float64")
        if array.dtype != dtype:
            raise _fail(path, f"array {name!r} has dtype {array.dtype} but mu has {dtype}; all must match")
    mu = arrays["mu"]
    if mu.ndim != 2 or mu.shape[1] != 2:
        raise _fail(path, f"array 'mu' has shape {mu.shape}; expected (L, 2)")
    n_kernels, channels = mu.shape[0], meta["channels"]
    if n_kernels > MAX_KERNELS:
        raise _fail(path, f"holds {n_kernels} kernels, more than the limit of {MAX_KERNELS}; "
                          "the file is not one smoe writes")
    expected = {"chol": (n_kernels, 3), "pi": (n_kernels,), "experts": (n_kernels, channels)}
    for name, shape in expected.items():
        if arrays[name].shape != shape:
            raise _fail(path, f"array {name!r} has shape {arrays[name].shape}; expected {shape} "
                              f"for L={n_kernels} kernels and {channels} channel(s) per the metadata")


# ==================================================================== helpers
def _choice_problem(name, value, choices) -> str | None:
    if value in choices:
        return None
    return f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}"


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _is_positive_int(value) -> bool:
    return _is_int(value) and value > 0
