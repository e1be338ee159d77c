"""smoe.executor: the same results, in order, from every backend; failures as outcomes; dead workers retried."""

import importlib.util
import math
import os
import sys

import numpy as np
import pytest

from smoe.executor import (DaskExecutor, ExecutorError, InProcessExecutor, ProcessExecutor, make_executor,
                           worker_info)


def dask_test(test):
    """Starts Dask processes: marked ``dask`` (deselect with -m "not dask"), skipped without Dask."""
    missing = importlib.util.find_spec("distributed") is None
    return pytest.mark.dask(pytest.mark.skipif(missing, reason="needs dask and distributed")(test))


def scaled(item, *, factor, offset=0.0):
    """A unit with shared keyword arguments (module level, so workers can load it)."""
    return np.asarray(item) * factor + offset


def die_once(item, *, marker):
    """Kills its own worker process the first time it sees item 1: a crash, not an exception."""
    if item == 1 and not os.path.exists(marker):
        open(marker, "w").close()
        os._exit(3)
    return item * 10


def _free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ==================================================================== factory
def test_auto_backend_choice():
    with make_executor(1) as ex:
        assert isinstance(ex, InProcessExecutor)
        assert ex.describe().startswith("in-process")
    with pytest.raises(ValueError, match="backend must be one of"):
        make_executor(2, backend="threads")
    with pytest.raises(ValueError, match="workers must be"):
        make_executor(0)
    with pytest.raises(ValueError, match="needs the dask backend"):
        make_executor(scheduler="tcp://127.0.0.1:1", backend="processes")


def test_oversubscription_warns():
    cores = os.cpu_count() or 1
    with pytest.warns(UserWarning, match="slow each other down"):
        make_executor(1, threads_per_worker=cores + 1).close()


# ================================================================= in-process
def test_inprocess_order_errors_and_threads():
    import numba
    import torch

    before = numba.get_num_threads(), torch.get_num_threads()
    with InProcessExecutor(threads_per_worker=1) as ex:
        outcomes = list(ex.imap(math.sqrt, [4, -1, 9]))
        assert [o.index for o in outcomes] == [0, 1, 2]
        assert outcomes[0].value == 2 and outcomes[2].value == 3
        assert isinstance(outcomes[1].error, ValueError) and not outcomes[1].ok
        assert ex.map(scaled, [1, 2], factor=3, offset=1) == [4, 7]
        info = ex.map(worker_info, [0])[0]
        assert (info["numba_threads"], info["torch_threads"]) == (1, 1)
        with pytest.raises(ValueError):
            ex.map(math.sqrt, [1, -1])
    assert (numba.get_num_threads(), torch.get_num_threads()) == before  # the caller's settings come back


# ================================================================= processes
def test_processes_match_inprocess_and_survive_a_dead_worker(tmp_path):
    items = [np.arange(5.0) + i for i in range(5)]
    with InProcessExecutor() as ex:
        expected = ex.map(scaled, items, factor=2.5)
    with ProcessExecutor(2, retries=2) as ex:
        got = ex.map(scaled, items, factor=2.5)
        assert all(np.array_equal(a, b) for a, b in zip(got, expected))
        assert all(o.error is None for o in ex.imap(scaled, items, factor=1.0))
        # Item 1 kills its worker once: the pool is rebuilt and the item rerun.
        assert ex.map(die_once, [0, 1, 2, 3], marker=str(tmp_path / "died")) == [0, 10, 20, 30]
        infos = ex.map(worker_info, range(2))
        assert all(i["pid"] != os.getpid() and i["numba_threads"] == 1 for i in infos)


def test_processes_give_up_after_retries(tmp_path):
    with ProcessExecutor(1, retries=0) as ex:
        outcomes = sorted(ex.imap(die_once, [0, 1], marker=str(tmp_path / "died")), key=lambda o: o.index)
    assert isinstance(outcomes[1].error, ExecutorError)
    assert "died" in str(outcomes[1].error)


# ====================================================================== Dask
@dask_test
def test_dask_local_cluster():
    import cloudpickle

    # The test module is not importable on the workers: send its functions by value.
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    big = np.linspace(0, 1, 40_000)  # > 64 KiB: scattered once instead of sent with every task
    with DaskExecutor(2, threads_per_worker=1) as ex:
        assert ex.describe().startswith("Dask LocalCluster, 2 worker")
        got = ex.map(scaled, [1.0, 2.0, 3.0], factor=big)
        assert all(np.array_equal(g, x * big) for g, x in zip(got, [1.0, 2.0, 3.0]))
        outcomes = sorted(ex.imap(math.sqrt, [4, -1, 9, 16, 25]), key=lambda o: o.index)
        assert [o.value for o in outcomes if o.ok] == [2, 3, 4, 5]
        assert isinstance(outcomes[1].error, ValueError)
        infos = ex.map(worker_info, range(6))
        assert {(i["numba_threads"], i["torch_threads"]) for i in infos} == {(1, 1)}
        assert all(i["pid"] != os.getpid() for i in infos)
        # Dask's default MALLOC_TRIM_THRESHOLD_ made fits 25 % slower on its workers.
        assert ex.map(os.environ.get, ["MALLOC_TRIM_THRESHOLD_"]) == [os.environ.get("MALLOC_TRIM_THRESHOLD_")]


@dask_test
def test_unreachable_scheduler_fails_fast(monkeypatch):
    # Fast means: one connection attempt, bounded by the caller's timeout, then an error (no retry, no
    # unbounded wait for the scheduler or for workers).
    import distributed

    attempts = []
    real = distributed.Client

    def client(*args, **kwargs):
        attempts.append((args, kwargs))
        return real(*args, **kwargs)

    monkeypatch.setattr(distributed, "Client", client)
    address = f"tcp://127.0.0.1:{_free_port()}"
    with pytest.raises(ExecutorError, match=f"cannot reach the Dask scheduler at {address}"):
        make_executor(scheduler=address, connect_timeout=1.5)
    assert len(attempts) == 1
    (args, kwargs), = attempts
    assert args == (address,) and kwargs["timeout"] == 1.5
