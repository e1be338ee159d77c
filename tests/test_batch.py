"""smoe fit-batch: outputs, resume, locking, bad inputs, and real Dask components.

The Dask tests start real processes (a LocalCluster; a ``dask scheduler``
and two ``dask worker`` processes on 127.0.0.1), kill them mid-batch and
check that every output is complete and equal to that of a serial run.
Deselect them with ``-m "not dask"``.
"""

import csv
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

from smoe.batch import ENTRY_NAME, LOCK_NAME, BatchError, BatchLock, expand_inputs, fit_batch, output_names
from smoe.cli import main
from smoe.imageio import read_image, write_image
from smoe.modelfile import load_model
from smoe.outputs import FIT_OUTPUTS

FAST = ["-n", "20", "--iters", "10", "--quiet"]
OPTIONS = {"n_kernels": 20, "iters": 10}
WAIT = 120  # seconds: the longest any step may take on a loaded 2-core machine before the test fails


def dask_test(test):
    """Starts Dask processes: marked ``dask`` (deselect with -m "not dask"), skipped without Dask."""
    missing = importlib.util.find_spec("distributed") is None
    return pytest.mark.dask(pytest.mark.skipif(missing, reason="needs dask and distributed")(test))


def _make_images(folder: Path, count: int, start: int = 0) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    y, x = np.mgrid[0:32, 0:48] / np.array([32, 48])[:, None, None]
    paths = []
    for k in range(start, start + count):
        disc = ((x - 0.3 - 0.05 * k) ** 2 + (y - 0.5) ** 2 < 0.05).astype(np.float32)
        path = folder / f"img{k:02d}.png"
        write_image(path, np.stack([x, y * (0.5 + 0.05 * k), 0.2 + 0.6 * disc], axis=2))
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Eight tiny images and their serial (in-process) fit-batch outputs, the reference for every run."""
    root = tmp_path_factory.mktemp("batch")
    _make_images(root / "in", 8)
    result = fit_batch([root / "in"], root / "serial", options=OPTIONS, backend="inprocess", workers=1)
    assert result.count("fitted") == 8
    return root / "in", root / "serial"


def _summary(outdir: Path) -> dict[str, dict]:
    with open(outdir / "summary.csv", newline="") as handle:
        return {row["image"]: row for row in csv.DictReader(handle)}


def _assert_same_outputs(outdir: Path, reference: Path, names) -> None:
    """Each image's model, reconstruction and quality equal the reference run's."""
    for name in names:
        got, ref = outdir / name, reference / name
        assert sorted(p.name for p in got.iterdir()) == sorted([*FIT_OUTPUTS, ENTRY_NAME]), name
        fitted, ref_fitted = load_model(got / "model.smoe.npz"), load_model(ref / "model.smoe.npz")
        assert fitted.spec == ref_fitted.spec, name
        for key, value in fitted.model.numpy().items():
            assert np.array_equal(value, ref_fitted.model.numpy()[key]), (name, key)
        assert (got / "reconstruction.png").read_bytes() == (ref / "reconstruction.png").read_bytes(), name
        m, r = (json.loads((d / "metrics.json").read_text()) for d in (got, ref))
        assert {k: m[k] for k in ("psnr", "ssim", "lpips", "kernels_final", "iterations")} == \
               {k: r[k] for k in ("psnr", "ssim", "lpips", "kernels_final", "iterations")}, name


def _assert_nothing_corrupt(outdir: Path) -> None:
    """Every visible file reads back; every folder holding metrics.json holds all outputs."""
    for path in outdir.rglob("*"):
        if path.is_dir() or any(part.startswith(".") for part in path.relative_to(outdir).parts):
            continue  # hidden: temporary files and folders, not outputs
        if path.suffix == ".png":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the figures have an alpha channel
                read_image(path)
        elif path.name.endswith(".npz"):
            load_model(path)
        elif path.suffix == ".json":
            json.loads(path.read_text())
    for metrics in outdir.glob("*/metrics.json"):
        assert all((metrics.parent / name).is_file() for name in FIT_OUTPUTS), metrics.parent


def _stamps(outdir: Path, names) -> dict:
    return {n: [(outdir / n / f).stat().st_mtime_ns for f in (*FIT_OUTPUTS, ENTRY_NAME)] for n in names}


def _finished(outdir: Path) -> set[str]:
    """Images with committed outputs (hidden folders are temporary, not committed)."""
    return {p.parent.name for p in outdir.glob(f"*/{ENTRY_NAME}") if not p.parent.name.startswith(".")}


def _wait_for(condition, what: str, timeout: float = WAIT, proc=None) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process ended (status {proc.returncode}) before {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.1)


def _smoe(args, **kwargs) -> subprocess.Popen:
    """``smoe ARGS`` in its own process group (so the test can kill everything it started)."""
    return subprocess.Popen([sys.executable, "-m", "smoe", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True, **kwargs)


def _kill_group(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(timeout=30)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("smoe: error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# ==================================================================== inputs
def test_expand_inputs_files_folders_globs(tmp_path):
    a = _make_images(tmp_path / "a", 2)
    b = _make_images(tmp_path / "b", 1)
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    got = expand_inputs([tmp_path / "a", str(tmp_path / "b" / "*.png"), a[0]])
    assert got == [p.absolute() for p in (*a, *b)]  # folder order, then glob, duplicates dropped
    names = output_names(got)
    assert names[1] == "img01"
    assert names[0] != names[2] and {n[:6] for n in (names[0], names[2])} == {"img00-"}  # same stem, two folders
    with pytest.raises(BatchError, match="no image file matches"):
        expand_inputs([str(tmp_path / "none" / "*.png")])
    with pytest.raises(BatchError, match="no such file or folder"):
        expand_inputs([tmp_path / "missing.png"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(BatchError, match="holds no image files"):
        expand_inputs([tmp_path / "empty"])


def test_glob_matching_nothing_is_one_line_error(tmp_path, capsys):
    assert main(["fit-batch", str(tmp_path / "*.png"), *FAST, "-o", str(tmp_path / "out")]) == 2
    assert "no image file matches" in _one_line_error(capsys)
    assert not (tmp_path / "out").exists()


# ================================================================ in-process
def test_bad_file_is_recorded_and_the_rest_resumes(images, tmp_path, capsys):
    folder, serial = images
    inputs = [str(folder / "img00.png"), str(folder / "img01.png"), str(tmp_path / "broken.png")]
    (tmp_path / "broken.png").write_bytes(b"this is no PNG")
    out = tmp_path / "out"
    args = ["fit-batch", *inputs, *FAST, "--backend", "inprocess", "-o", str(out)]
    assert main(args) == 2
    assert "1 of 3 images failed, the first broken" in _one_line_error(capsys)
    rows = _summary(out)
    assert [rows[n]["status"] for n in ("img00", "img01", "broken")] == ["fitted", "fitted", "error"]
    assert "not an image file" in rows["broken"]["error"]
    assert float(rows["img00"]["psnr"]) > 10 and rows["img00"]["kernels"] == "20"
    assert "| broken | error |" in (out / "summary.md").read_text()
    _assert_same_outputs(out, serial, ["img00", "img01"])
    assert not (out / "broken").exists() and not (out / LOCK_NAME).exists()

    before = _stamps(out, ["img00", "img01"])
    assert main(args) == 2  # rerun: the finished images are not touched
    assert _stamps(out, ["img00", "img01"]) == before
    assert [_summary(out)[n]["status"] for n in ("img00", "img01")] == ["skipped", "skipped"]

    assert main(["fit-batch", *inputs[:2], "-n", "20", "--iters", "12", "--quiet", "--backend", "inprocess",
                 "-o", str(out)]) == 0  # other settings: fitted again, in place
    assert [_summary(out)[n]["status"] for n in ("img00", "img01")] == ["fitted", "fitted"]
    assert json.loads((out / "img00" / "metrics.json").read_text())["iterations"] == 12


def test_unreadable_file_is_recorded(images, tmp_path, monkeypatch):
    folder, _ = images
    locked = tmp_path / "locked.png"
    locked.write_bytes((folder / "img02.png").read_bytes())
    real = os.open

    def open_(path, *args, **kwargs):  # chmod 0 would not stop root, so the refusal is simulated
        if Path(path).name == locked.name:
            raise PermissionError(13, "Permission denied", str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", open_)
    result = fit_batch([locked, folder / "img02.png"], tmp_path / "out", options=OPTIONS, workers=1)
    assert [r["status"] for r in result.rows] == ["error", "fitted"]
    assert "cannot read (Permission denied)" in result.rows[0]["error"]


def test_changed_input_is_refitted(images, tmp_path):
    folder, _ = images
    src = tmp_path / "in"
    src.mkdir()
    (src / "x.png").write_bytes((folder / "img00.png").read_bytes())
    out = tmp_path / "out"
    assert fit_batch([src], out, options=OPTIONS, workers=1).count("fitted") == 1
    assert fit_batch([src], out, options=OPTIONS, workers=1).count("skipped") == 1
    (src / "x.png").write_bytes((folder / "img03.png").read_bytes())
    with pytest.warns(UserWarning, match="inside the output folder"):  # the glob also matches our outputs
        result = fit_batch([str(tmp_path / "**" / "*.png")], out, options=OPTIONS, workers=1)
    assert [(r["image"], r["status"]) for r in result.rows] == [("x", "fitted")]


def test_second_batch_refuses_naming_the_lock(images, tmp_path, capsys):
    folder, _ = images
    out = tmp_path / "out"
    out.mkdir()
    with BatchLock(out):  # another batch holds the folder
        assert main(["fit-batch", str(folder / "img00.png"), *FAST, "-o", str(out)]) == 2
    line = _one_line_error(capsys)
    assert "in use by another fit-batch" in line and str(out / LOCK_NAME) in line and f"pid {os.getpid()}" in line


def test_stale_lock_is_taken_over(images, tmp_path, capsys):
    folder, _ = images
    out = tmp_path / "out"
    out.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait(timeout=30)
    (out / LOCK_NAME).write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "started": "then"}))
    assert main(["fit-batch", str(folder / "img00.png"), *FAST, "--backend", "inprocess", "-o", str(out)]) == 0
    err = capsys.readouterr().err
    assert "smoe: warning: taking over the lock file" in err and f"pid {dead.pid}" in err
    assert not (out / LOCK_NAME).exists()


def test_read_only_output_folder(images, tmp_path, capsys):
    folder, _ = images
    if os.geteuid() == 0:  # root writes anywhere it has permissions for; /sys refuses even root
        out = Path("/sys/smoe-test-out")
    else:
        (tmp_path / "ro").mkdir()
        (tmp_path / "ro").chmod(0o555)
        out = tmp_path / "ro" / "out"
    assert main(["fit-batch", str(folder / "img00.png"), *FAST, "-o", str(out)]) == 2
    assert "cannot write to output directory" in _one_line_error(capsys)


def test_kill_client_then_resume(images, tmp_path):
    """kill -9 of the client mid-batch: nothing corrupt, and the rerun only fits what was missing."""
    folder, serial = images
    out = tmp_path / "out"
    proc = _smoe(["fit-batch", str(folder), *FAST, "--backend", "inprocess", "-o", str(out)])
    try:
        _wait_for(lambda: len(_finished(out)) >= 2, "two finished images", proc=proc)
    finally:
        _kill_group(proc)
    _assert_nothing_corrupt(out)
    done = _finished(out)
    assert 2 <= len(done) < 8, "the batch was not interrupted mid-way; use more images"
    before = _stamps(out, done)

    with pytest.warns(UserWarning, match="taking over the lock file"):  # the killed client's
        result = fit_batch([folder], out, options=OPTIONS, workers=1)
    assert {r["image"] for r in result.rows if r["status"] == "skipped"} == done
    assert result.count("fitted") == 8 - len(done)
    assert _stamps(out, done) == before  # nothing finished was recomputed
    _assert_same_outputs(out, serial, [f"img{k:02d}" for k in range(8)])
    assert not [p for p in out.rglob(".*") if p.name != ENTRY_NAME]  # leftovers of the killed run are gone


# ====================================================================== Dask
@dask_test
def test_local_cluster_equals_serial(images, tmp_path):
    folder, serial = images
    out = tmp_path / "out"
    assert main(["fit-batch", str(folder / "img0[0-1].png"), *FAST, "--workers", "2", "-o", str(out)]) == 0
    _assert_same_outputs(out, serial, ["img00", "img01"])
    assert {r["status"] for r in _summary(out).values()} == {"fitted"}


@dask_test
def test_unreachable_scheduler_is_a_quick_one_line_error(images, tmp_path, capsys, monkeypatch):
    # Quick means: one connection attempt with the executor's bounded connect timeout, then the error.
    import distributed

    from smoe.executor import CONNECT_TIMEOUT

    folder, _ = images
    attempts = []
    real = distributed.Client
    monkeypatch.setattr(distributed, "Client", lambda *a, **k: attempts.append((a, k)) or real(*a, **k))
    address = f"tcp://127.0.0.1:{_free_port()}"
    assert main(["fit-batch", str(folder / "img00.png"), *FAST, "--scheduler", address,
                 "-o", str(tmp_path / "out")]) == 2
    assert [(a, k["timeout"]) for a, k in attempts] == [((address,), CONNECT_TIMEOUT)]
    assert 0 < CONNECT_TIMEOUT <= 30
    assert f"cannot reach the Dask scheduler at {address}" in _one_line_error(capsys)
    assert not (tmp_path / "out").exists()


# ``python -c`` body: ``smoe ARGS[1:]`` whose client, holding two committed images, stops before committing
# a third: it writes their names to the file ARGS[0] and waits there to be killed.
PAUSE_BEFORE_THIRD_COMMIT = """
import json, os, sys, threading
import smoe.batch
from smoe.cli import main

marker, committed, real = sys.argv[1], [], smoe.batch._commit

def commit(outdir, name, *args, **kwargs):
    if len(committed) == 2:
        with open(marker + ".tmp", "w") as handle:
            json.dump(committed, handle)
        os.replace(marker + ".tmp", marker)
        threading.Event().wait()
    real(outdir, name, *args, **kwargs)
    committed.append(name)

smoe.batch._commit = commit
sys.exit(main(sys.argv[2:]))
"""


@dask_test
def test_external_cluster_survives_client_and_worker_kills(images, tmp_path):
    """A scheduler and two workers started here; kill the client, rerun, kill a worker: all outputs correct."""
    from distributed import Client

    folder, serial = images
    out = tmp_path / "out"
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    dask = [str(Path(sys.executable).parent / "dask")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    started = []

    def start(args):
        proc = subprocess.Popen(dask + args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                                start_new_session=True)
        started.append(proc)
        return proc

    try:
        start(["scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"])
        worker_ports = [_free_port(), _free_port()]
        workers = {f"tcp://127.0.0.1:{p}": start(["worker", address, "--host", "127.0.0.1", "--worker-port", str(p),
                                                  "--nthreads", "1", "--no-nanny", "--no-dashboard"])
                   for p in worker_ports}
        with Client(address, timeout=WAIT) as watcher:
            watcher.wait_for_workers(2, timeout=WAIT)

            # 1. kill -9 of the client mid-batch: at a known point, when it is about to commit its third
            # image (it pauses there, and says which two it committed), not after however many a loaded
            # machine happened to finish.
            paused = tmp_path / "client-paused.json"
            client = subprocess.Popen(
                [sys.executable, "-c", PAUSE_BEFORE_THIRD_COMMIT, str(paused),
                 "fit-batch", str(folder), *FAST, "--scheduler", address, "-o", str(out)],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
            try:
                _wait_for(paused.exists, "the client to pause before its third commit", proc=client)
            finally:
                _kill_group(client)
            _assert_nothing_corrupt(out)
            first = _finished(out)
            assert first == set(json.loads(paused.read_text())) and len(first) == 2
            before = _stamps(out, first)

            # 2. rerun; kill a worker while it is fitting an image
            client = _smoe(["fit-batch", str(folder), *FAST, "--scheduler", address, "-o", str(out)])
            try:
                busy = []

                def worker_busy_after_a_commit():
                    if len(_finished(out)) > len(first):
                        busy[:] = [w for w, keys in watcher.processing().items() if keys and w in workers]
                    return bool(busy)

                _wait_for(worker_busy_after_a_commit, "a worker fitting an image after a commit", proc=client)
                victim = busy[0]
                workers[victim].kill()
                stdout, stderr = client.communicate(timeout=WAIT)
            finally:
                _kill_group(client)
            assert client.returncode == 0, stderr
            assert workers[victim].wait(timeout=30) == -signal.SIGKILL
    finally:
        for proc in reversed(started):
            _kill_group(proc)

    rows = _summary(out)
    assert {n for n, r in rows.items() if r["status"] == "skipped"} == first
    assert {r["status"] for r in rows.values()} <= {"skipped", "fitted"}
    assert _stamps(out, first) == before
    _assert_same_outputs(out, serial, [f"img{k:02d}" for k in range(8)])
