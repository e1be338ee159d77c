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

``meta`` holds ``format`` (``"smoe-model"``), ``format_version`` (int),
``mode`` (``"smoe"``/``"rbf"``), ``scope`` (``"raster"``/``"global"``),
``height`` and ``width`` of the image the model was fitted on, ``channels``,
``smoe_version`` (the writer's) and ``settings`` (a free JSON object with the
fit settings).

Loading uses ``np.load(..., allow_pickle=False)``: an archive that carries
pickled Python objects is refused before any of it is unpickled, so opening
a model file from a stranger cannot run code.  Parameters are stored in their
own dtype, so a saved model renders bit-identically after loading.
"""

from __future__ import annotations

import json
import zipfile
import zlib
from pathlib import Path

import numpy as np

from .imageio import atomic_write
from .model import Model
from .rasterizer import MODES, SCOPES
from .version import __version__

__all__ = ["ModelFileError", "save_model", "load_model", "FORMAT_NAME", "FORMAT_VERSION"]

FORMAT_NAME = "smoe-model"
#: The newest format version this code reads and the one it writes.
FORMAT_VERSION = 1

_ARRAYS = ("mu", "chol", "pi", "experts")
_REQUIRED_META = ("mode", "scope", "height", "width", "channels")  # besides format and format_version
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")  # a zip with members / an empty zip


class ModelFileError(ValueError):
    """A model file cannot be read; the message names the file and says why."""


# ====================================================================== save
def save_model(path, model: Model, *, mode: str, scope: str, height: int, width: int,
               settings: dict | None = None) -> None:
    """Write a model file atomically.

    Parameters
    ----------
    path : str or os.PathLike
        Target file, written as given (``.npz`` is the conventional suffix).
    model : Model
        L kernels; saved in its own dtype (float32 or float64), moved to the CPU.
    mode : {"smoe", "rbf"}
        Regression function the model was fitted for.
    scope : {"raster", "global"}
        Scope the model was fitted with.
    height, width : int
        Size of the image the model was fitted on.
    settings : dict, optional
        Fit settings, stored as JSON; NumPy scalars/arrays and paths are
        converted, anything else must be JSON-serialisable.

    Raises
    ------
    ValueError
        Invalid model or arguments, or settings that JSON cannot hold.
    """
    for name, value, choices in (("mode", mode, MODES), ("scope", scope, SCOPES)):
        if problem := _choice_problem(name, value, choices):
            raise ValueError(problem)
    for name, size in (("height", height), ("width", width)):
        if not _is_positive_int(size):
            raise ValueError(f"{name} must be a positive integer, got {size!r}")
    if settings is not None and not isinstance(settings, dict):
        raise ValueError(f"settings must be a dict, got {type(settings).__name__}")
    model.validate()
    arrays = model.numpy()
    if arrays["mu"].dtype not in (np.float32, np.float64):
        raise ValueError(f"model dtype must be float32 or float64 to be saved, got {arrays['mu'].dtype}")
    meta = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "mode": mode,
        "scope": scope,
        "height": int(height),
        "width": int(width),
        "channels": model.channels,
        "smoe_version": __version__,
        "settings": settings or {},
    }
    try:
        text = json.dumps(meta, default=_json_default, sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"settings must be JSON-serialisable: {exc}") from exc
    meta_bytes = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
    with atomic_write(path, "wb") as handle:
        np.savez_compressed(handle, **arrays, meta=meta_bytes)


def _json_default(value):
    """Turn the non-JSON values fit settings commonly hold into JSON ones."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    raise TypeError(f"{type(value).__name__} value {value!r} is not JSON-serialisable")


# ====================================================================== load
def load_model(path) -> tuple[Model, dict]:
    """Read and validate a model file.

    Parameters
    ----------
    path : str or os.PathLike

    Returns
    -------
    model : Model
        Tensors on the CPU, in the dtype stored in the file.
    meta : dict
        ``format``, ``format_version``, ``mode``, ``scope``, ``height``,
        ``width``, ``channels``, ``smoe_version`` and ``settings`` (see the
        module docstring).

    Raises
    ------
    ModelFileError
        The file is missing, not an ``.npz`` archive, truncated or corrupt,
        carries pickled objects, comes from a newer smoe, or holds an
        inconsistent or invalid model.  The message names the file and the
        problem.
    """
    path = Path(path)
    arrays = _read_arrays(path)
    meta = _parse_meta(path, arrays.pop("meta"))
    _check_arrays(path, arrays, meta)
    try:
        model = Model(*(arrays[name] for name in _ARRAYS))
    except ValueError as exc:
        raise ModelFileError(f"{path}: invalid model: {exc}") from exc
    return model, meta


def _fail(path: Path, problem: str) -> ModelFileError:
    return ModelFileError(f"{path}: {problem}")


def _read_arrays(path: Path) -> dict[str, np.ndarray]:
    """All required arrays of the archive, fully read into memory."""
    if not path.exists():
        raise ModelFileError(f"no such model file: {path}")
    if path.is_dir():
        raise _fail(path, "is a directory, not a model file")
    with open(path, "rb") as handle:
        magic = handle.read(4)
    if magic not in _ZIP_MAGIC:
        raise _fail(path, "not a smoe model file (not an .npz archive)")
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = [name for name in (*_ARRAYS, "meta") if name not in archive.files]
            if missing:
                raise _fail(path, f"not a smoe model file: missing array(s) {', '.join(missing)}")
            return {name: _read_member(path, archive, name) for name in (*_ARRAYS, "meta")}
    except ModelFileError:
        raise
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError) as exc:
        raise _fail(path, f"truncated or corrupt model file ({_one_line(exc)})") from exc


def _read_member(path: Path, archive, name: str) -> np.ndarray:
    try:
        array = archive[name]
    except ValueError as exc:
        # NumPy refuses object arrays under allow_pickle=False before unpickling anything.
        if "allow_pickle" in str(exc):
            raise _fail(path, f"array {name!r} holds pickled Python objects; refusing to load it "
                              "(a model file holds numbers only)") from exc
        raise _fail(path, f"array {name!r} is corrupt ({_one_line(exc)})") from exc
    except MemoryError as exc:
        raise _fail(path, f"array {name!r} is too large to load") from exc
    if not isinstance(array, np.ndarray):  # NumPy returns raw bytes for a member that is not .npy
        raise _fail(path, f"member {name!r} is not a NumPy array")
    return array


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
        meta = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _fail(path, f"metadata is not valid JSON ({exc})") from exc
    if not isinstance(meta, dict):
        raise _fail(path, "metadata must be a JSON object")

    if meta.get("format") != FORMAT_NAME:
        raise _fail(path, f"not a smoe model file (format {meta.get('format')!r}, expected {FORMAT_NAME!r})")
    version = meta.get("format_version")
    if not _is_positive_int(version):
        raise _fail(path, f"format_version must be a positive integer, got {version!r}")
    if version > FORMAT_VERSION:
        raise _fail(path, f"written by a newer smoe (format version {version}, this smoe reads up to "
                          f"{FORMAT_VERSION}); upgrade smoe to load it")
    missing = [key for key in _REQUIRED_META if key not in meta]
    if missing:
        raise _fail(path, f"metadata lacks {', '.join(map(repr, missing))}; the file is incomplete")
    for key, choices in (("mode", MODES), ("scope", SCOPES)):
        if problem := _choice_problem(key, meta.get(key), choices):
            raise _fail(path, problem)
    for key in ("height", "width"):
        if not _is_positive_int(meta.get(key)):
            raise _fail(path, f"{key} must be a positive integer, got {meta.get(key)!r}")
    if meta.get("channels") not in (1, 3) or isinstance(meta.get("channels"), bool):
        raise _fail(path, f"channels must be 1 or 3, got {meta.get('channels')!r}")
    meta.setdefault("settings", {})
    if not isinstance(meta["settings"], dict):
        raise _fail(path, f"settings must be a JSON object, got {type(meta['settings']).__name__}")
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


def _is_positive_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value > 0


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__
