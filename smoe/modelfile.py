"""Saving and loading fitted models, without pickle.

A model file is a NumPy ``.npz`` archive (``np.savez_compressed``) holding

=========== ============ ==========================================
name        shape        content
=========== ============ ==========================================
``mu``      (L, d)       kernel centres, float32 or float64
``chol``    (L, 3 or 6)  precision Cholesky factors, same dtype
``pi``      (L,)         gate weights, same dtype
``experts`` (L, C)       constant experts, same dtype, C = 1 or 3
``meta``    (n,) uint8   UTF-8 JSON object, see below
=========== ============ ==========================================

where ``d``, the ``dim`` of the metadata, is 2 for an image model
(:class:`smoe.model.Model`, ``chol`` of 3 numbers) and 3 for a video model
(:class:`smoe.video.model.VideoModel` over ``(x, y, t)``, ``chol`` of 6).

``meta`` holds ``format`` (``"smoe-model"``), ``format_version`` (2),
``dim`` (2 or 3; files without it are images, as every file was before video
models), ``mode`` (``"smoe"``/``"rbf"``), ``height`` and ``width`` of the
image or the frames the model was fitted on, ``channels``, ``tile`` (the tile
side in pixels; image files without it were written when it was always 16)
and ``smoe_version`` (the writer's).  An image file adds ``scope``
(``"raster"``/``"global"``), ``tile_offset`` (``[oy, ox]``) and ``spec`` (the
resolved :class:`smoe.spec.FitSpec` as a JSON object, or null); a video file
adds ``frames``, ``fps``, ``tile_t`` (frames per space-time tile) and
``settings`` (how it was fitted, a JSON object).  So a file says how to render
the model and how to fit it again.

Format 1 stored no tile offset (it was always ``[0, 0]``) and a free JSON
object ``settings`` instead of ``spec``; such files still load, with the spec
read from ``settings`` where those are the fields of a spec.  Readers from
before video models ignore ``dim`` and refuse a video file, which lacks
``scope``, ``tile_offset`` and ``spec``; this one names the kind of model and
the function that loads it.

Loading never unpickles: :mod:`smoe.archive` parses the zip structure and
the ``.npy`` headers itself and refuses an array of Python objects, so opening
a model file from a stranger cannot run code; sizes are checked against the
caps of :mod:`smoe.limits` before memory is committed.  Parameters are stored
in their own dtype, so a saved model renders bit-identically after loading.
Reading and checking a file needs NumPy only (:func:`read_model_arrays`, what
``smoe info`` uses, for either kind); torch is loaded when :func:`load_model`
builds the model.  :mod:`smoe.video.modelfile` writes and loads video models
through the functions here.
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
from .validate import check_finite, is_whole, one_line
from .video.fitted import MAX_VIDEO_PIXELS, check_tile_t

__all__ = ["ModelFileError", "save_model", "load_model", "read_model_file", "read_model_arrays", "fitted_from_arrays",
           "model_file_bytes", "pack_model_file", "check_kind", "check_clip", "DIAGONAL", "FORMAT_NAME",
           "FORMAT_VERSION"]

FORMAT_NAME = "smoe-model"
#: The newest format version this code reads and the one it writes.
FORMAT_VERSION = 2
#: Entries of ``chol`` on the diagonal of the precision factor, which must be positive, by dimension
#: (those of :class:`smoe.model.Model` and :data:`smoe.video.model.DIAGONAL`, named here without torch).
DIAGONAL = {2: (0, 2), 3: (0, 2, 5)}

_ARRAYS = ("mu", "chol", "pi", "experts")
# Besides format and format_version: of an image file by format version, and of a video file.
_REQUIRED_META = {1: ("mode", "scope", "height", "width", "channels"),
                  2: ("mode", "scope", "height", "width", "channels", "tile_offset", "spec")}
_REQUIRED_VIDEO_META = ("mode", "height", "width", "channels", "tile", "frames", "fps", "tile_t", "settings")
# What a file of each dimension is, and how to open it: for the message to whoever opens it as the other kind.
_KINDS = {2: ("an image model (2D kernels over x, y)", "load it with smoe.load_model"),
          3: ("a video model (3D kernels over x, y, t)",
              "load it with smoe.video.load_video_model or render it with `smoe render`")}
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
    meta = {
        "dim": 2,
        "mode": fitted.mode,
        "scope": fitted.scope,
        "height": fitted.height,
        "width": fitted.width,
        "channels": model.channels,
        "tile_offset": list(fitted.tile_offset),
        "tile": fitted.tile,
        "spec": None if fitted.spec is None else fitted.spec.to_dict(),
    }
    return pack_model_file(model.numpy(), meta)


def pack_model_file(arrays: dict[str, np.ndarray], meta: dict) -> bytes:
    """The bytes of a model file of validated parameter ``arrays`` and the kind's ``meta`` keys.

    The writers of both kinds end here: the kernel count and dtype are
    checked, and ``format``, ``format_version`` and ``smoe_version`` added.

    Parameters
    ----------
    arrays : dict of str to ndarray
        ``mu``, ``chol``, ``pi`` and ``experts`` of a model that passed its own
        ``validate``.
    meta : dict
        JSON-safe metadata of the kind, ``dim`` included (see the module docstring).

    Examples
    --------
    >>> one = {"mu": np.zeros((1, 2)), "chol": np.ones((1, 3)), "pi": np.ones(1), "experts": np.ones((1, 1))}
    >>> meta = {"dim": 2, "mode": "smoe", "scope": "raster", "height": 4, "width": 4, "channels": 1,
    ...         "tile_offset": [0, 0], "tile": 16, "spec": None}
    >>> pack_model_file(one, meta)[:2]
    b'PK'
    """
    if len(arrays["mu"]) > MAX_KERNELS:
        raise ValueError(f"a model file holds at most {MAX_KERNELS} kernels, got {len(arrays['mu'])}")
    if arrays["mu"].dtype not in (np.float32, np.float64):
        raise ValueError(f"model dtype must be float32 or float64 to be saved, got {arrays['mu'].dtype}")
    meta = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, **meta, "smoe_version": __version__}
    text = json.dumps(meta, sort_keys=True)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays, meta=np.frombuffer(text.encode("utf-8"), dtype=np.uint8))
    return buffer.getvalue()


def check_clip(frames, height, width) -> None:
    """A video model's clip: frames as :func:`smoe.limits.check_frame` allows, at least one, and at most
    :data:`smoe.video.fitted.MAX_VIDEO_PIXELS` pixels in total.

    Examples
    --------
    >>> check_clip(10, 480, 640)
    >>> check_clip(10_000, 480, 640)
    Traceback (most recent call last):
    ...
    ValueError: 10000 frames of 640x480 pixels exceed the limit of 640 megapixels in total
    """
    check_frame(height, width)
    if not (is_whole(frames) and frames >= 1):
        raise ValueError(f"frames must be a positive whole number, got {frames!r}")
    if frames * height * width > MAX_VIDEO_PIXELS:
        raise ValueError(f"{frames} frames of {width}x{height} pixels exceed the limit of "
                         f"{MAX_VIDEO_PIXELS // 1_000_000} megapixels in total")


# ====================================================================== load
def load_model(path) -> FittedModel:
    """Read and validate an image model file: the fitted model, ready to render.

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
        claims sizes above the limits, holds an inconsistent or invalid
        model, or holds a video model (:func:`smoe.video.modelfile.load_video_model`
        loads those).  The message names the file and the problem.

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
        ``format``, ``format_version``, ``dim`` (2), ``mode``, ``scope``,
        ``height``, ``width``, ``channels``, ``tile_offset``, ``tile``,
        ``smoe_version`` and ``spec`` (format 2) or ``settings`` (format 1);
        see the module docstring.

    Examples
    --------
    >>> fitted, meta = read_model_file("out/model.smoe.npz")  # doctest: +SKIP
    >>> meta["dim"], meta["scope"]  # doctest: +SKIP
    (2, 'raster')
    """
    arrays, meta, spec = read_model_arrays(path, dim=2)
    return fitted_from_arrays(path, arrays, meta, spec), meta


def fitted_from_arrays(path, arrays: dict[str, np.ndarray], meta: dict, spec: FitSpec | None) -> FittedModel:
    """The :class:`FittedModel` of what :func:`read_model_arrays` returned for ``path`` (loads torch).

    Lets a caller act on the metadata (say, refuse an output size) before torch is loaded.
    A video model's arrays raise :class:`ModelFileError` (see :func:`check_kind`).
    """
    check_kind(path, meta, 2)
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


def read_model_arrays(path, dim: int | None = None) -> tuple[dict[str, np.ndarray], dict, FitSpec | None]:
    """A model file's checked parameter arrays, metadata and fit spec, read with NumPy alone.

    Every check of :func:`load_model` (or of
    :func:`smoe.video.modelfile.load_video_model`) on the file is made; only
    the torch model is not built.

    Parameters
    ----------
    path : str or os.PathLike
    dim : {None, 2, 3}
        The kind of model wanted: 2 an image model, 3 a video model; a file of
        the other kind is refused (:func:`check_kind`) before its arrays are
        read.  None reads either; ``meta["dim"]`` tells which it was.

    Returns
    -------
    arrays : dict of str to ndarray
        ``mu`` (L, d), ``chol`` (L, 3) for d = 2 or (L, 6) for d = 3, ``pi`` (L,),
        ``experts`` (L, C), in the stored dtype.
    meta : dict
        The checked metadata with ``dim`` filled in (see the module docstring).
    spec : FitSpec or None
        The stored fit spec of an image model (None where a format-1 file's
        settings are not a spec's fields, and for a video model, whose fit
        settings are ``meta["settings"]``).

    Examples
    --------
    >>> arrays, meta, spec = read_model_arrays("out/model.smoe.npz")  # doctest: +SKIP
    >>> arrays["mu"].shape, meta["dim"], meta["format_version"]  # doctest: +SKIP
    ((2000, 2), 2, 2)
    """
    path = Path(path)
    with _open_archive(path) as npz:
        try:
            meta = _parse_meta(path, _read_meta(path, npz))
            if dim is not None:
                check_kind(path, meta, dim)
            headers = {name: _header(path, npz, name) for name in _ARRAYS}
            _check_arrays(path, headers, meta)
            for name in _ARRAYS:  # every value checked before any array is allocated
                _check_values(path, npz, name, DIAGONAL[meta["dim"]])
            arrays = {name: npz.read(name) for name in _ARRAYS}
        except ArchiveError as exc:
            raise _fail(path, f"truncated or corrupt model file ({exc})") from exc
        except MemoryError as exc:
            raise _fail(path, "too large to load in the memory available") from exc
    return arrays, meta, _stored_spec(path, meta)


def check_kind(path, meta: dict, dim: int) -> None:
    """Refuse the checked metadata ``meta`` of ``path`` unless it describes a model of dimension ``dim``.

    Raises
    ------
    ModelFileError
        Naming the kind of model the file holds and how to load it.

    Examples
    --------
    >>> check_kind("clip.smoe.npz", {"dim": 3}, 2)
    Traceback (most recent call last):
    ...
    smoe.modelfile.ModelFileError: clip.smoe.npz: a video model (3D kernels over x, y, t); load it with \
smoe.video.load_video_model or render it with `smoe render`
    """
    if meta["dim"] != dim:
        kind, how = _KINDS[meta["dim"]]
        raise ModelFileError(f"{path}: {kind}; {how}")


def _stored_spec(path: Path, meta: dict) -> FitSpec | None:
    """The fit spec an image file records; a format-1 file's free settings give one only if they are a spec's fields."""
    if meta["dim"] != 2:
        return None
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


def _check_values(path: Path, npz: Npz, name: str, diagonal: tuple[int, ...]) -> None:
    """Check the values of array ``name`` while inflating them in chunks.

    A bad value is found before any array is allocated, so a crafted file
    that claims millions of kernels costs a chunk of memory, not the arrays.
    The columns ``diagonal`` of ``chol`` (:data:`DIAGONAL`) must be positive.
    """
    header = npz.header(name)
    n_kernels, cols = header.shape[0], (header.shape[1] if header.ndim == 2 else 1)
    fortran = header.fortran_order and cols > 1
    at = 0  # flat index of the chunk's first value; chunks hold whole rows unless Fortran-ordered
    for piece in npz.chunks(name, header.dtype.itemsize * (1 if fortran else cols)):
        values = np.frombuffer(piece, dtype=header.dtype)
        bad = ~np.isfinite(values) | (np.abs(values) >= MAX_PARAMETER)
        if name == "chol":
            index = at + np.arange(values.size)
            bad |= (values <= 0) & np.isin(index // n_kernels if fortran else index % cols, diagonal)
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
    """Decode and check the JSON metadata of either kind; ``dim`` is filled in."""
    meta = _decode_meta(path, raw)
    version = _check_format(path, meta)
    dim = meta.setdefault("dim", 2)  # files without it are images: all of them were before video models
    if not (_is_int(dim) and dim in _KINDS):
        raise _fail(path, f"dim must be 2 (an image model) or 3 (a video model), got {dim!r}")
    missing = [key for key in (_REQUIRED_META[version] if dim == 2 else _REQUIRED_VIDEO_META) if key not in meta]
    if missing:
        raise _fail(path, f"metadata lacks {', '.join(map(repr, missing))}; the file is incomplete")
    if problem := _choice_problem("mode", meta["mode"], MODES):
        raise _fail(path, problem)
    try:
        if dim == 2:
            check_frame(meta["height"], meta["width"])
        else:
            check_clip(meta["frames"], meta["height"], meta["width"])
    except ValueError as exc:
        raise _fail(path, f"{exc}; this smoe cannot render it") from None
    if meta.get("channels") not in (1, 3) or isinstance(meta.get("channels"), bool):
        raise _fail(path, f"channels must be 1 or 3, got {meta.get('channels')!r}")
    meta.setdefault("tile", TILE)  # image files written before the tile size was a choice used 16
    if not _is_int(meta["tile"]):
        raise _fail(path, f"tile must be a whole number, got {meta['tile']!r}")
    try:
        check_tile_size(meta["tile"])
    except ValueError as exc:
        raise _fail(path, str(exc)) from None
    if dim == 2:
        _check_image_meta(path, meta, version)
    else:
        _check_video_meta(path, meta)
    meta.setdefault("smoe_version", "unknown")
    return meta


def _decode_meta(path: Path, raw: np.ndarray) -> dict:
    """The metadata array as a JSON object."""
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
    return meta


def _check_format(path: Path, meta: dict) -> int:
    """The format version of a smoe model file's metadata, one this code reads."""
    if meta.get("format") != FORMAT_NAME:
        raise _fail(path, f"not a smoe model file (format {meta.get('format')!r}, expected {FORMAT_NAME!r})")
    version = meta.get("format_version")
    if not _is_positive_int(version):
        raise _fail(path, f"format_version must be a positive integer, got {version!r}")
    if version > FORMAT_VERSION:
        raise _fail(path, f"written by a newer smoe (format {version}); upgrade smoe (this one reads formats up "
                          f"to {FORMAT_VERSION})")
    return version


def _check_image_meta(path: Path, meta: dict, version: int) -> None:
    """Scope, tile offset and spec (or format 1's settings) of an image model."""
    if problem := _choice_problem("scope", meta["scope"], SCOPES):
        raise _fail(path, problem)
    if version == 1:
        meta.setdefault("settings", {})
        _check_settings(path, meta["settings"])
        meta["tile_offset"] = [0, 0]  # format 1 knew no other
    elif meta["spec"] is not None and not isinstance(meta["spec"], dict):
        raise _fail(path, f"the stored fit spec must be a JSON object or null, got {type(meta['spec']).__name__}")
    offset = meta["tile_offset"]
    if not (isinstance(offset, list) and len(offset) == 2 and all(_is_int(o) for o in offset)):
        raise _fail(path, f"tile_offset must be a list of two whole numbers, got {offset!r}")
    try:
        check_tile_offset(tuple(offset), meta["tile"])
    except ValueError as exc:
        raise _fail(path, str(exc)) from None


def _check_video_meta(path: Path, meta: dict) -> None:
    """Frame rate, frames per tile and settings of a video model (its clip size is checked with the frame)."""
    try:
        check_finite("fps", meta["fps"], low=0, low_open=True)
        check_tile_t(meta["tile_t"])
    except ValueError as exc:
        raise _fail(path, str(exc)) from None
    _check_settings(path, meta["settings"])


def _check_settings(path: Path, settings) -> None:
    if not isinstance(settings, dict):
        raise _fail(path, f"settings must be a JSON object, got {type(settings).__name__}")


def _check_arrays(path: Path, arrays: dict[str, NpyHeader], meta: dict) -> None:
    """Dtypes and shapes for the file's ``dim``, before the values are checked."""
    dtype = arrays["mu"].dtype
    for name in _ARRAYS:
        array = arrays[name]
        if array.dtype not in (np.float32, np.float64):
            raise _fail(path, f"array {name!r} has dtype {array.dtype}; expected float32 or float64")
        if array.dtype != dtype:
            raise _fail(path, f"array {name!r} has dtype {array.dtype} but mu has {dtype}; all must match")
    mu, dim = arrays["mu"], meta["dim"]
    if mu.ndim != 2 or mu.shape[1] != dim:
        raise _fail(path, f"array 'mu' has shape {mu.shape}; expected (L, {dim})")
    n_kernels, channels = mu.shape[0], meta["channels"]
    if n_kernels > MAX_KERNELS:
        raise _fail(path, f"holds {n_kernels} kernels, more than the limit of {MAX_KERNELS}; "
                          "the file is not one smoe writes")
    # the lower triangle of a dim x dim precision factor
    expected = {"chol": (n_kernels, dim * (dim + 1) // 2), "pi": (n_kernels,), "experts": (n_kernels, channels)}
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
