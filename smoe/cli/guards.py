"""Guards around a command's work: outputs proved writable before it starts,
directories it created removed if it fails, SIGTERM handled as Ctrl-C."""

from __future__ import annotations

import contextlib
import secrets
import tempfile
from pathlib import Path

from .options import CliError

def _missing_dirs(path: Path) -> list[Path]:
    """``path`` and those of its parents that do not exist yet, deepest first."""
    missing = []
    while not path.exists() and path.parent != path:
        missing.append(path)
        path = path.parent
    return missing


def _remove_empty(dirs: list[Path]) -> None:
    """Undo :func:`_prepare_outdir` after a failure: remove the directories it made, if still empty."""
    for d in dirs:
        with contextlib.suppress(OSError):
            d.rmdir()


@contextlib.contextmanager
def _removed_on_failure(created: list[Path]):
    """Run the block; if it fails in any way, remove the directories in ``created`` that are still empty."""
    try:
        yield
    except BaseException:
        _remove_empty(created)
        raise


def _check_kernel_count(n_kernels: int | None, h: int, w: int, path) -> None:
    if n_kernels is not None and n_kernels > h * w:
        raise CliError(f"-n {n_kernels} is more kernels than the {h * w} pixels of {path} ({w}x{h}); "
                       f"use -n {h * w} or fewer")


def _prepare_outdir(outdir: Path, names=()) -> list[Path]:
    """Create ``outdir`` and prove a file can be written in it, before any long computation.

    Parameters
    ----------
    outdir : Path
    names : iterable of str
        Files that will be written there; none may be an existing directory.

    Returns
    -------
    The directories this call created, deepest first (see :func:`_remove_empty`).
    """
    created = _missing_dirs(outdir)
    if outdir.exists() and not outdir.is_dir():
        raise CliError(f"output directory {outdir} exists and is a file; choose another path with -o")
    try:
        outdir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=outdir):
            pass
    except OSError as exc:
        _remove_empty(created)
        reason = "part of the path is a file, not a directory" if isinstance(exc, NotADirectoryError) \
            else (exc.strerror or str(exc))
        raise CliError(f"cannot write to output directory {outdir}: {reason}; choose another path with -o") from exc
    for name in names:
        if (outdir / name).is_dir():
            _remove_empty(created)
            raise CliError(f"{outdir / name} is a directory; remove it or choose another output directory with -o")
    return created


def _prepare_output_file(out: Path) -> list[Path]:
    """Create ``out``'s directory and check that an image with ``out``'s suffix can be written there.

    A 1 x 1 probe image is written beside ``out`` and removed again: that tests
    the suffix through :func:`write_image` itself and the directory's permissions.
    Returns the directories created, deepest first.
    """
    import numpy as np
    from ..imageio import ImageError, write_image

    if out.is_dir():
        raise CliError(f"output {out} is a directory; give a file name such as {out / 'render.png'}")
    created = _prepare_outdir(out.parent)
    probe = out.with_name(f".smoe-probe-{secrets.token_hex(4)}{out.suffix}")
    try:
        write_image(probe, np.zeros((1, 1), np.float32))
    except ImageError as exc:
        _remove_empty(created)
        raise CliError(str(exc).replace(str(probe), str(out))) from exc  # name the user's file, not the probe
    except BaseException:
        _remove_empty(created)
        raise
    finally:
        with contextlib.suppress(OSError):
            probe.unlink()
    return created



@contextlib.contextmanager
def _sigterm_as_interrupt():
    """Let SIGTERM stop a batch as Ctrl-C does: summary written, workers shut down."""
    import signal

    def stop(signum, frame):
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, stop)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
