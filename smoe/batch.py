"""Fit many images: ``smoe fit-batch``, resumable and fault-tolerant.

:func:`fit_batch` fits every image of a list of files, folders and glob
patterns, each independently, on an :mod:`smoe.executor` (in-process, local
processes or Dask), and writes for each image the outputs of ``smoe fit`` to
``OUTDIR/<name>/``, plus ``summary.csv``, ``summary.md`` and ``manifest.json``.

Where the work runs and where files are written are kept apart: the client
reads each input, sends its bytes to a worker, and the worker returns the
bytes of every output file.  Only the client writes, so workers need no
shared file system and a dying worker cannot leave a partial file.

How an image's outputs are committed, so that a kill at any moment is safe:

- A new output folder is written as a hidden ``OUTDIR/.<name>.tmp-XXXXXXXX``
  and renamed to ``OUTDIR/<name>`` when complete: it appears whole or not
  at all.
- An existing folder (outputs of an earlier run or of ``smoe fit``) is
  updated in place: its completion markers are removed first, then every
  file is replaced atomically, ``metrics.json`` next to last and the batch
  record ``.smoe-entry.json`` last.  Other files in it are kept.
- ``.smoe-entry.json`` holds the SHA-256 of the input's bytes and of the
  fit settings.  A rerun skips an image whose record matches and whose
  outputs are all present; anything else is fitted again, and temporary
  files left by a killed run are removed.
- ``OUTDIR/.smoe-batch.lock`` (an OS file lock holding the pid) keeps a
  second batch out of the same folder; the OS releases it when its process
  dies, so a stale lock file is taken over with a warning.
"""

from __future__ import annotations

import contextlib
import csv
import datetime
import glob
import hashlib
import io
import json
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from .atomic import atomic_write_bytes, remove_temporaries, write_output_folder
from .batchlock import LOCK_NAME, BatchError, BatchLock
from .executor import Executor, available_cores, make_executor
from .fitting import fit
from .imageio import ImageError, decode_image
from .limits import MAX_IMAGE_BYTES, read_regular
from .memory import is_out_of_memory
from .outputs import FIT_OUTPUTS, fit_outputs
from .spec import FitSpec
from .version import __version__

__all__ = ["fit_batch", "fit_image", "expand_inputs", "output_names", "BatchError", "BatchResult", "BatchLock",
           "IMAGE_SUFFIXES", "BATCH_FILES", "LOCK_NAME", "ENTRY_NAME", "SUMMARY_FIELDS", "batch_spec"]

#: File suffixes taken from a folder or a glob (a file named explicitly is always tried).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp", ".ppm", ".pgm", ".pnm", ".gif")
ENTRY_NAME = ".smoe-entry.json"
MANIFEST_NAME, SUMMARY_CSV, SUMMARY_MD = "manifest.json", "summary.csv", "summary.md"
#: Files the batch writes in OUTDIR itself.
BATCH_FILES = (SUMMARY_CSV, SUMMARY_MD, MANIFEST_NAME)
#: Columns of summary.csv, one row per input image.
SUMMARY_FIELDS = ("image", "status", "kernels", "kernels_initial", "psnr", "ssim", "ms_ssim", "lpips", "seconds",
                  "input", "error")
_FORMAT_VERSION = 1
#: Seconds between rewrites of the summary while a batch runs (it is always written at the end).
_SUMMARY_EVERY = 5.0
_RESERVED = {LOCK_NAME, MANIFEST_NAME, SUMMARY_CSV, SUMMARY_MD}


# ==================================================================== inputs
def expand_inputs(inputs: Iterable[str | os.PathLike]) -> list[Path]:
    """Files, folders and glob patterns -> the image files, each once, in a stable order.

    A file named explicitly is taken whatever its suffix (a non-image then
    fails on its own); a folder contributes its image files (by suffix, not
    recursive); a pattern such as ``frames/*.png`` or ``data/**/*.jpg`` its
    matching image files, sorted.

    Raises
    ------
    BatchError
        A path that does not exist, or a folder or pattern with no image file.
    """
    found: list[Path] = []
    for text in map(str, inputs):
        path = Path(text).expanduser()
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not files:
                raise BatchError(f"folder {text} holds no image files ({' '.join(IMAGE_SUFFIXES)}); "
                                 "give another folder or the files themselves")
        elif path.exists():
            files = [path]
        elif glob.has_magic(text):
            matches = sorted(glob.glob(os.path.expanduser(text), recursive=True))
            files = [Path(m) for m in matches if Path(m).is_file() and Path(m).suffix.lower() in IMAGE_SUFFIXES]
            if not files:
                raise BatchError(f"no image file matches {text!r}; check the pattern (quote it so that the shell "
                                 "passes it unexpanded)")
        else:
            raise BatchError(f"no such file or folder: {text}; check the path")
        found.extend(files)
    unique: dict[Path, Path] = {}
    for path in found:
        unique.setdefault(path.resolve(), path.absolute())
    if not unique:
        raise BatchError("no input images given; name files, folders or glob patterns")
    return list(unique.values())


def output_names(paths: list[Path]) -> list[str]:
    """Output folder name for each input: its file name without suffix, made unique.

    Names that clash (``a/x.png`` and ``b/x.jpg``; compared without case, as
    some file systems do) get a short hash of the full path appended, so a
    name depends only on its own path and the set of clashing stems.
    """
    stems = [_safe_stem(p) for p in paths]
    counts: dict[str, int] = {}
    for stem in stems:
        counts[stem.lower()] = counts.get(stem.lower(), 0) + 1
    names = []
    for path, stem in zip(paths, stems):
        if counts[stem.lower()] > 1 or stem in _RESERVED:
            stem = f"{stem}-{hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:8]}"
        names.append(stem)
    return names


def _safe_stem(path: Path) -> str:
    # A leading dot would hide the folder and could clash with our temporary names.
    stem = path.stem.lstrip(".") or "image"
    return stem.replace(os.sep, "_")


# ================================================================= settings
def batch_spec(options: dict | FitSpec | None = None) -> FitSpec:
    """The validated fit spec of a batch: a :class:`smoe.spec.FitSpec`, or a dict of its fields.

    Every field is recorded with its value, so the settings hash is the same
    however the options were given (``init_options`` None and {} alike).

    Examples
    --------
    >>> batch_spec({"n_kernels": 300, "iters": 50}).iters
    50
    """
    if isinstance(options, FitSpec):
        return options.validate()
    options = dict(options or {})
    if options.get("init_options", {}) is None:
        options["init_options"] = {}
    return FitSpec().replace(**options).validate()


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _settings_digest(spec: FitSpec) -> str:
    return _digest(json.dumps(spec.to_dict(), sort_keys=True).encode())


# =============================================================== work unit
def fit_image(item: dict, *, spec: FitSpec) -> dict:
    """Fit one image and produce every ``smoe fit`` output (runs on a worker).

    Parameters
    ----------
    item : dict
        ``path`` (str, the client's path, for messages and metrics.json),
        ``data`` (the file's bytes) or ``error`` (why the client could not
        read it).
    spec : FitSpec
        :func:`batch_spec`.

    Returns
    -------
    dict
        ``files`` (output name -> bytes), ``report`` (the metrics.json
        content), ``seconds`` and ``warnings`` (messages raised on the way).

    Raises
    ------
    ImageError, ValueError, MemoryError
        The image cannot be read or fitted with these options.
    """
    start = time.perf_counter()
    path = Path(item["path"])
    if item.get("error"):
        raise ImageError(item["error"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        image = _decode_bytes(item["data"], path)
        try:
            spec.validate(image.shape)
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from None
        result = fit(image, spec=spec, quiet=True)
        files, report = fit_outputs(result.fitted, image, result.history, image_path=path, run=result.run_facts())
    messages = list(dict.fromkeys(" ".join(str(w.message).split()) for w in caught))
    return {"files": files, "report": report, "seconds": time.perf_counter() - start, "warnings": messages}


def _decode_bytes(data: bytes, path: Path):
    import numpy as np

    if not data:
        raise ImageError(f"{path}: empty file (0 bytes), not an image")
    return np.ascontiguousarray(decode_image(data, path), dtype=np.float32)


# ================================================================= outputs
def _remove_leftovers(outdir: Path, names: list[str]) -> None:
    """Delete the temporary files and folders a killed run left in OUTDIR and in each image's folder."""
    remove_temporaries(outdir)
    for name in names:
        remove_temporaries(outdir / name)


def _finished_report(folder: Path, input_sha: str | None, settings_sha: str) -> tuple[dict, dict] | None:
    """(record, metrics) of a complete earlier output for this input and these settings, else None."""
    try:
        entry = json.loads((folder / ENTRY_NAME).read_text())
        if entry.get("settings_sha256") != settings_sha or entry.get("input_sha256") != input_sha:
            return None
        if not all((folder / name).is_file() for name in FIT_OUTPUTS):
            return None
        return entry, json.loads((folder / "metrics.json").read_text())
    except (OSError, ValueError, AttributeError):
        return None


def _commit(outdir: Path, name: str, files: dict[str, bytes], record: dict) -> None:
    """Write one image's outputs so that a kill at any moment leaves no half-written output.

    ``metrics.json`` and then the batch record go last: a folder holding the
    record holds a complete fit.
    """
    record_bytes = (json.dumps(record, indent=2) + "\n").encode()
    write_output_folder(outdir / name, {**files, ENTRY_NAME: record_bytes}, markers=("metrics.json", ENTRY_NAME),
                        clean=False)  # fit_batch removed the leftovers of every folder at the start


# ================================================================= summary
def _row(name: str, path: Path, status: str, *, metrics: dict | None = None, seconds: float | None = None,
         error: str = "") -> dict:
    m = metrics or {}
    return {"image": name, "status": status, "kernels": m.get("kernels_final"),
            "kernels_initial": m.get("kernels_initial"), "psnr": m.get("psnr"), "ssim": m.get("ssim"),
            "ms_ssim": m.get("ms_ssim"), "lpips": m.get("lpips"), "seconds": seconds, "input": str(path),
            "error": error}


def _summary_csv(rows: list[dict]) -> bytes:
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=SUMMARY_FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: "" if v is None else v for k, v in row.items()} for row in rows)
    return text.getvalue().encode()


def _fmt(value, digits: int) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def _summary_md(rows: list[dict], spec: FitSpec) -> bytes:
    counts = {s: sum(r["status"] == s for r in rows) for s in ("fitted", "skipped", "error", "pending")}
    psnrs = [r["psnr"] for r in rows if r["psnr"] is not None]
    lines = ["# smoe fit-batch summary", "",
             f"{len(rows)} images: {counts['fitted']} fitted in this run, {counts['skipped']} unchanged since an "
             f"earlier run (skipped), {counts['error']} failed, {counts['pending']} not done yet."]
    if psnrs:
        lines.append(f"Mean PSNR {sum(psnrs) / len(psnrs):.2f} dB over {len(psnrs)} images.")
    lines += ["", "Settings: " + ", ".join(f"{k}={v}" for k, v in spec.to_dict().items()), "",
              "| image | status | kernels | PSNR (dB) | SSIM | MS-SSIM | LPIPS | seconds | error |",
              "|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        cells = [r["image"], r["status"], "" if r["kernels"] is None else str(r["kernels"]), _fmt(r["psnr"], 2),
                 _fmt(r["ssim"], 4), _fmt(r["ms_ssim"], 4), _fmt(r["lpips"], 4), _fmt(r["seconds"], 1),
                 r["error"]]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return ("\n".join(lines) + "\n").encode()


def _write_summary(outdir: Path, rows: list[dict], spec: FitSpec, settings_sha: str, hashes: dict[str, str]) -> None:
    atomic_write_bytes(outdir / SUMMARY_CSV, _summary_csv(rows))
    atomic_write_bytes(outdir / SUMMARY_MD, _summary_md(rows, spec))
    manifest = {
        "format": "smoe-batch-manifest", "version": _FORMAT_VERSION, "smoe": __version__,
        "updated": datetime.datetime.now().isoformat(timespec="seconds"),
        "settings": spec.to_dict(), "settings_sha256": settings_sha,
        "images": [{"name": r["image"], "input": r["input"], "input_sha256": hashes.get(r["image"]),
                    "status": r["status"], "error": r["error"]} for r in rows],
    }
    atomic_write_bytes(outdir / MANIFEST_NAME, (json.dumps(manifest, indent=2) + "\n").encode())


# ==================================================================== batch
@dataclass
class BatchResult:
    """What :func:`fit_batch` did.

    rows : one dict per input (keys :data:`SUMMARY_FIELDS`), in input order;
        status ``fitted``, ``skipped`` (complete from an earlier run),
        ``error`` or ``pending`` (interrupted before it ran)
    seconds : wall time of the batch
    executor : where the images were fitted (empty if nothing was)
    """

    outdir: Path
    rows: list[dict]
    seconds: float
    executor: str = ""
    spec: FitSpec = field(default_factory=FitSpec)

    def count(self, status: str) -> int:
        return sum(row["status"] == status for row in self.rows)

    @property
    def failed(self) -> list[dict]:
        return [row for row in self.rows if row["status"] == "error"]


@dataclass
class _Job:
    name: str
    path: Path
    sha256: str | None = None


def fit_batch(inputs: Iterable[str | os.PathLike], outdir: str | os.PathLike, *,
              options: dict | FitSpec | None = None,
              executor: Executor | None = None, workers: int | str = "auto", scheduler: str | None = None,
              threads_per_worker: int = 1, backend: str = "auto", quiet: bool = True) -> BatchResult:
    """Fit every input image and write its ``smoe fit`` outputs to ``outdir/<name>/``.

    Parameters
    ----------
    inputs : iterable of str or path
        Files, folders and glob patterns (see :func:`expand_inputs`).
    outdir : str or path
        Output folder, created if missing; locked while the batch runs.
    options : dict, optional
        The fit spec, or a dict of its fields (see :func:`batch_spec`); defaults as :func:`smoe.fit`.
    executor : Executor, optional
        Where to fit; by default one is made from ``workers``,
        ``scheduler``, ``threads_per_worker`` and ``backend`` (see
        :func:`smoe.executor.make_executor`) and closed at the end.
    workers : int or "auto"
        ``"auto"``: one per core (divided by ``threads_per_worker``), at most
        one per image to fit.
    quiet : bool
        False prints what runs where and a progress bar over the images.

    Returns
    -------
    BatchResult
        A failed image does not raise: it is a row with status ``error``.

    Raises
    ------
    BatchError
        No inputs, or the folder is locked by another batch.
    ExecutorError
        The executor cannot start or lost its cluster.
    KeyboardInterrupt
        Passed on after the summary is written; finished images stay
        committed and a rerun fits the rest.
    """
    start = time.perf_counter()
    spec = batch_spec(options)
    outdir = Path(outdir)
    paths = _outside(expand_inputs(inputs), outdir)
    jobs = [_Job(name, path) for name, path in zip(output_names(paths), paths)]
    outdir.mkdir(parents=True, exist_ok=True)
    settings_sha = _settings_digest(spec)
    with BatchLock(outdir):
        _remove_leftovers(outdir, [job.name for job in jobs])
        rows = [_row(job.name, job.path, "pending") for job in jobs]
        todo = _skip_finished(outdir, jobs, rows, settings_sha)
        result = BatchResult(outdir, rows, 0.0, spec=spec)
        own = executor is None and bool(todo)
        if own:  # before the summary is promised: a cluster that cannot start leaves no trace
            if workers == "auto":
                workers = max(1, min(len(todo), available_cores() // threads_per_worker))
            executor = make_executor(workers, scheduler=scheduler, threads_per_worker=threads_per_worker,
                                     backend=backend)
        try:
            if todo:
                _run(outdir, jobs, todo, rows, spec, settings_sha, result, executor, quiet)
        finally:
            try:
                _write_summary(outdir, rows, spec, settings_sha, {job.name: job.sha256 for job in jobs})
            finally:
                if own:
                    executor.close()
        result.seconds = time.perf_counter() - start
        return result


def _outside(paths: list[Path], outdir: Path) -> list[Path]:
    """Leave out inputs inside the output folder: a broad glob would otherwise fit our own outputs."""
    root = outdir.resolve()
    kept = [p for p in paths if not p.resolve().is_relative_to(root)]
    if len(kept) < len(paths):
        warnings.warn(f"left out {len(paths) - len(kept)} input file(s) inside the output folder {outdir}",
                      stacklevel=3)
    if not kept:
        raise BatchError(f"every input is inside the output folder {outdir}; choose another output folder with -o")
    return kept


def _skip_finished(outdir: Path, jobs: list[_Job], rows: list[dict], settings_sha: str) -> list[int]:
    """Mark the images finished by an earlier run as skipped; return the indices still to fit."""
    todo = []
    for i, job in enumerate(jobs):
        folder = outdir / job.name
        if (folder / ENTRY_NAME).is_file():
            with contextlib.suppress(OSError):
                job.sha256 = _digest(job.path.read_bytes())
            done = _finished_report(folder, job.sha256, settings_sha)
            if done is not None:
                record, metrics = done
                rows[i] = _row(job.name, job.path, "skipped", metrics=metrics, seconds=record.get("seconds"))
                continue
        todo.append(i)
    return todo


def _items(jobs: list[_Job], todo: list[int]):
    """Work items, read as the executor asks for them (a large batch is never all in memory)."""
    for i in todo:
        job = jobs[i]
        try:
            data = read_regular(job.path, MAX_IMAGE_BYTES, "an image file")
        except OSError as exc:
            yield {"path": str(job.path), "error": f"{job.path}: cannot read ({exc.strerror or exc}); check the "
                                                  "file and its permissions"}
            continue
        except ValueError as exc:  # not a regular file, too large or empty
            yield {"path": str(job.path), "error": f"{job.path}: {exc}"}
            continue
        job.sha256 = _digest(data)  # of the bytes actually fitted, should the file change meanwhile
        yield {"path": str(job.path), "data": data}


def _run(outdir, jobs, todo, rows, spec, settings_sha, result, executor, quiet) -> None:
    result.executor = executor.describe()
    if not quiet:
        skipped = len(jobs) - len(todo)
        print(f"fit-batch: {len(jobs)} images -> {outdir}/: {skipped} unchanged since an earlier run (skipped), "
              f"{len(todo)} to fit on {result.executor}", flush=True)
    bar = _progress(len(todo), quiet)
    last_summary = time.monotonic()
    try:
        for outcome in executor.imap(fit_image, _items(jobs, todo), spec=spec):
            i = todo[outcome.index]
            rows[i] = _handle(outdir, jobs[i], outcome, settings_sha)
            if bar is not None:
                bar.set_postfix_str(f"{jobs[i].name}: {rows[i]['status']}", refresh=False)
                bar.update(1)
            if time.monotonic() - last_summary > _SUMMARY_EVERY:
                _write_summary(outdir, rows, spec, settings_sha, {job.name: job.sha256 for job in jobs})
                last_summary = time.monotonic()
    finally:
        if bar is not None:
            bar.close()


def _handle(outdir: Path, job: _Job, outcome, settings_sha: str) -> dict:
    """Commit a finished image's outputs (or record its error); returns its summary row."""
    if not outcome.ok:
        return _row(job.name, job.path, "error", error=_error_text(outcome.error))
    value = outcome.value
    if (outdir / job.name).exists() and not (outdir / job.name).is_dir():
        return _row(job.name, job.path, "error", error=f"{outdir / job.name} exists and is not a folder, so the "
                    "outputs cannot go there; move it away and rerun")
    for message in value["warnings"]:
        warnings.warn(f"{job.name}: {message}", stacklevel=2)
    record = {"format": "smoe-batch-entry", "version": _FORMAT_VERSION, "input": str(job.path),
              "input_sha256": job.sha256, "settings_sha256": settings_sha, "seconds": value["seconds"],
              "finished": datetime.datetime.now().isoformat(timespec="seconds")}
    _commit(outdir, job.name, value["files"], record)
    return _row(job.name, job.path, "fitted", metrics=value["report"], seconds=value["seconds"])


def _error_text(exc: BaseException) -> str:
    """One line: the message of an expected failure; type and message otherwise."""
    text = " ".join(str(exc).split())
    if is_out_of_memory(exc):
        return "out of memory; fit it with fewer kernels (-n) or on a worker with more memory"
    if isinstance(exc, (ImageError, ValueError, OSError)) and text:
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _progress(total: int, quiet: bool):
    if quiet:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="img", dynamic_ncols=True, leave=True)

