"""Writing files and folders so that a kill at any moment leaves no half-written output.

Every file the project writes goes through :func:`atomic_write`: readers see
the old file or the complete new one, never a mixture.  A set of files that
belong together (the outputs of one fit) goes through
:func:`write_output_folder`: a new folder appears complete or not at all, and
an existing one is updated so that its completion marker (``metrics.json``)
is present only while every file beside it is complete.

Temporary names, so that leftovers of a killed run can be recognised and
removed: ``.<file>.<8 hex>.tmp`` beside a file, ``.<folder>.tmp-<8 hex>``
beside a folder.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import stat
from pathlib import Path

__all__ = ["atomic_write", "atomic_path", "atomic_write_bytes", "fsync_directory", "write_output_folder",
           "remove_temporaries", "TEMP_FILE", "TEMP_DIR"]

#: Names of the temporary files :func:`atomic_write` creates.
TEMP_FILE = re.compile(r"^\..+\.[0-9a-f]{8}\.tmp$")
#: Names of the temporary folders :func:`write_output_folder` creates.
TEMP_DIR = re.compile(r"^\..+\.tmp-[0-9a-f]{8}$")


@contextlib.contextmanager
def atomic_write(path, mode: str = "wb", *, encoding: str | None = None):
    """Open a file for writing so that it appears complete or not at all.

    The body writes to a temporary file in the target's directory; on success
    the data is flushed, fsync'ed and moved over ``path`` with ``os.replace``
    (atomic on POSIX and Windows).  If the body raises, the temporary file is
    removed and an existing ``path`` is left untouched.

    Parameters
    ----------
    path : str or os.PathLike
    mode : {"wb", "w"}
        Binary or text.
    encoding : str, optional
        Text encoding for ``mode="w"``; UTF-8 by default.

    Yields
    ------
    The open file object.

    Examples
    --------
    >>> import tempfile
    >>> target = Path(tempfile.mkdtemp()) / "notes.txt"
    >>> with atomic_write(target, "w") as handle:
    ...     _ = handle.write("complete or absent")
    >>> target.read_text()
    'complete or absent'
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_write supports mode 'wb' or 'w', got {mode!r}")
    with atomic_path(path) as tmp:
        with open(tmp, mode, encoding=(encoding or "utf-8") if mode == "w" else None) as handle:
            yield handle


@contextlib.contextmanager
def atomic_path(path):
    """A temporary file name for a writer that wants a path (FFmpeg, say); moved over ``path`` if the body succeeds.

    The same promise as :func:`atomic_write`: on success the temporary file is
    fsync'ed and replaces ``path``; if the body raises it is removed.

    Yields
    ------
    Path of the (empty, existing) temporary file beside ``path``.

    Examples
    --------
    >>> import tempfile
    >>> target = Path(tempfile.mkdtemp()) / "clip.bin"
    >>> with atomic_path(target) as tmp:
    ...     _ = tmp.write_bytes(b"frames")
    >>> target.read_bytes()
    b'frames'
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"cannot write {path}: it is a directory")
    tmp, fd = _create_temp(path)
    os.close(fd)
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        _copy_permissions(path, tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_directory(path.parent)


def atomic_write_bytes(path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_write`).

    Examples
    --------
    >>> import tempfile
    >>> target = Path(tempfile.mkdtemp()) / "data.bin"
    >>> atomic_write_bytes(target, b"abc")
    >>> target.read_bytes()
    b'abc'
    """
    with atomic_write(path, "wb") as handle:
        handle.write(data)


def _create_temp(path: Path) -> tuple[Path, int]:
    # os.open with mode 0o666 lets the umask decide the permissions, exactly as
    # for a file created with open(); tempfile.mkstemp would force 0o600.
    for _ in range(100):
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            return tmp, os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        except FileExistsError:
            continue
    raise FileExistsError(f"cannot create a temporary file next to {path}")


def _copy_permissions(target: Path, tmp: Path) -> None:
    """Keep the mode bits of a file being replaced."""
    try:
        os.chmod(tmp, stat.S_IMODE(os.stat(target).st_mode))
    except FileNotFoundError:
        pass


def fsync_directory(directory: Path) -> None:
    """Make a rename durable; not possible (nor needed) on every platform."""
    if os.name != "posix":
        return
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# ================================================================= folders
def write_output_folder(outdir, files: dict[str, bytes], *, markers: tuple[str, ...] = ("metrics.json",),
                        clean: bool = True) -> None:
    """Write a set of files into ``outdir`` so that they appear together or not at all.

    A new folder is written as a hidden sibling ``.<name>.tmp-<8 hex>``, every
    file fsync'ed, and renamed to ``outdir``.  An existing folder is updated
    in place: the ``markers`` present are removed first, then every file is
    replaced atomically, the markers last and in the given order, so a folder
    holding the last marker holds a complete set.  Other files in it are kept.
    With ``clean``, leftovers of killed writes of this folder are removed
    first: temporary files in it and temporary folders of its name beside it.

    Parameters
    ----------
    outdir : str or os.PathLike
        The output folder; its parent must exist.
    files : dict of str to bytes
        File name (no directories) -> content.
    markers : tuple of str
        Names in ``files`` that mark a complete folder, written last.
    clean : bool
        False leaves leftovers to the caller (``fit-batch`` removes those of
        all its folders in one pass, see :func:`remove_temporaries`).

    Raises
    ------
    OSError
        ``outdir`` exists and is not a folder, or a write fails; an existing
        folder then reads as incomplete (its markers are gone), a new one does
        not appear.

    Examples
    --------
    >>> import tempfile
    >>> out = Path(tempfile.mkdtemp()) / "fit"
    >>> write_output_folder(out, {"a.txt": b"1", "metrics.json": b"{}"})
    >>> sorted(p.name for p in out.iterdir())
    ['a.txt', 'metrics.json']
    """
    outdir = Path(outdir)
    order = [name for name in files if name not in markers] + [name for name in markers if name in files]
    if clean:
        _remove_own_leftovers(outdir)
    if outdir.is_dir():
        for marker in markers:
            with contextlib.suppress(FileNotFoundError):
                (outdir / marker).unlink()
        for name in order:
            atomic_write_bytes(outdir / name, files[name])
        return
    if outdir.exists() or outdir.is_symlink():
        raise FileExistsError(f"{outdir} exists and is not a folder; move it away or choose another output folder")
    tmp = outdir.with_name(f".{outdir.name}.tmp-{secrets.token_hex(4)}")
    os.mkdir(tmp)  # not mkdtemp: its 0o700 would stay on the final folder
    try:
        for name in order:
            with open(tmp / name, "wb") as handle:
                handle.write(files[name])
                handle.flush()
                os.fsync(handle.fileno())
        fsync_directory(tmp)
        os.rename(tmp, outdir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_directory(outdir.parent)


def remove_temporaries(directory) -> None:
    """Delete the temporary files and folders killed writes left directly inside ``directory``.

    Only names this module creates (:data:`TEMP_FILE`, :data:`TEMP_DIR`) are
    touched; a missing directory is fine.  Two runs writing the same folder at
    the same time are not supported (``fit-batch`` locks its folder).

    Examples
    --------
    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> (folder / ".metrics.json.0123abcd.tmp").write_bytes(b"half")
    4
    >>> remove_temporaries(folder)
    >>> list(folder.iterdir())
    []
    """
    with contextlib.suppress(OSError), os.scandir(directory) as entries:
        for entry in entries:
            _remove_temporary(entry, TEMP_FILE.match(entry.name) is not None, TEMP_DIR.match(entry.name) is not None)


def _remove_own_leftovers(outdir: Path) -> None:
    """Temporary files inside ``outdir`` and temporary folders of ``outdir``'s own name beside it."""
    if outdir.is_dir():
        remove_temporaries(outdir)
    prefix = f".{outdir.name}.tmp-"
    with contextlib.suppress(OSError), os.scandir(outdir.parent) as entries:
        for entry in entries:
            if entry.name.startswith(prefix):
                _remove_temporary(entry, False, TEMP_DIR.match(entry.name) is not None)


def _remove_temporary(entry: os.DirEntry, as_file: bool, as_dir: bool) -> None:
    with contextlib.suppress(OSError):
        if as_dir and entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path, ignore_errors=True)
        elif as_file and entry.is_file(follow_symlinks=False):
            os.unlink(entry.path)
