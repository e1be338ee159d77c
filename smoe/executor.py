"""Run independent work units in this process, in local processes or on Dask.

One interface serves every embarrassingly parallel part of smoe: the images of
a batch, the chunks of AS-SMoE local segment fits and the H shifted models of
multi-model denoising.  A work unit is a *top-level* function (so it can be
pickled by reference) applied to one item of a list, with keyword arguments
shared by all items::

    from smoe.executor import make_executor

    with make_executor(workers=2) as ex:             # Dask LocalCluster, 2 x 1 thread
        renders = ex.map(fit_shift, offsets, image=image, settings=settings)

    with make_executor(scheduler="tcp://host:8786") as ex:   # an existing cluster
        for outcome in ex.imap(fit_image, items):    # in completion order
            ...outcome.index, outcome.value, outcome.error...

Backends
--------
``inprocess``
    Runs the items one after the other in the calling process; no start-up
    cost, the default for one worker.
``processes``
    A ``concurrent.futures`` pool of spawned local processes (no extra
    dependency).  A worker process that dies takes the pool down; the items
    that were running are retried on a fresh pool.
``dask``
    ``dask.distributed``: a ``LocalCluster`` of worker processes started for
    the executor's lifetime, or an existing cluster given by its scheduler
    address.  A worker that dies has its task rerun on another worker by the
    scheduler (up to ``retries`` times for a LocalCluster; an external
    scheduler applies its own ``distributed.scheduler.allowed-failures``).

Every backend runs a work unit with ``threads_per_worker`` numba and torch
threads, set inside the unit itself so that it holds on any worker, and each
worker runs one unit at a time: ``workers x threads_per_worker`` threads in
all, which should not exceed the cores.  The fused rasterizer's sums depend
on the thread count, so a fixed ``threads_per_worker`` (default 1) gives
bit-identical results whatever the number of workers or the backend.

An exception raised by a work unit is returned as that item's outcome (it is
not retried: fitting is deterministic, a retry would fail the same way);
losing the cluster itself raises :class:`ExecutorError`.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import logging
import os
import uuid
import warnings
from abc import ABC, abstractmethod
from collections import deque
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator

import numpy as np

__all__ = ["Executor", "ExecutorError", "Outcome", "InProcessExecutor", "ProcessExecutor", "DaskExecutor",
           "make_executor", "available_cores", "worker_info", "set_threads", "BACKENDS"]

#: Names accepted by :func:`make_executor`'s ``backend``.
BACKENDS = ("auto", "inprocess", "processes", "dask")
#: Seconds to wait for a Dask scheduler to answer, and then for it to have a worker: short, so that a
#: wrong address fails fast (a healthy scheduler answers in milliseconds).
CONNECT_TIMEOUT = 5.0
#: Shared arguments at least this large are sent to Dask workers once, not with every task.
_SCATTER_BYTES = 1 << 16


class ExecutorError(RuntimeError):
    """The executor cannot start or lost its workers; the message says what to do."""


@dataclass(frozen=True)
class Outcome:
    """The result of one work item: ``value`` on success, else ``error``."""

    index: int
    value: Any = None
    error: BaseException | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


# ============================================================ work unit side
def set_threads(threads: int) -> None:
    """Give numba and torch ``threads`` threads in the calling worker.

    numba's setting is per calling thread and torch's per process, and a Dask
    worker runs tasks on threads of its own: so the unit sets both itself.
    """
    import numba
    import torch

    numba.set_num_threads(max(1, min(threads, numba.config.NUMBA_NUM_THREADS)))
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


def worker_info(_item=None) -> dict:
    """Where a unit runs: host, pid and thread counts (``ex.map(worker_info, range(4))`` shows a cluster)."""
    import socket

    import numba
    import torch

    return {"host": socket.gethostname(), "pid": os.getpid(), "numba_threads": numba.get_num_threads(),
            "torch_threads": torch.get_num_threads()}


def _run_unit(fn: Callable, item, common: dict, threads: int):
    set_threads(threads)
    return fn(item, **common)


def _init_process(threads: int) -> None:
    """Process-pool initializer: the parent handles Ctrl-C; thread counts are fixed once."""
    import signal

    # A terminal's Ctrl-C reaches the whole process group; the parent decides what to
    # do, so the workers must not die with a traceback each.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    set_threads(threads)


def _thread_environment(threads: int) -> dict[str, str]:
    """Environment for worker processes we start, read by the libraries as they load."""
    n = str(threads)
    return {"OMP_NUM_THREADS": n, "MKL_NUM_THREADS": n, "OPENBLAS_NUM_THREADS": n, "NUMBA_NUM_THREADS": n,
            "OMP_WAIT_POLICY": "PASSIVE"}


# ================================================================ interface
class Executor(ABC):
    """Runs a top-level function over work items; see the module docstring.

    Attributes
    ----------
    kind : str
        ``"inprocess"``, ``"processes"`` or ``"dask"``.
    workers : int
        Units that run at the same time.
    threads_per_worker : int
        numba and torch threads each unit runs with.
    """

    kind = ""

    def __init__(self, workers: int, threads_per_worker: int):
        self.workers = workers
        self.threads_per_worker = threads_per_worker

    @abstractmethod
    def imap(self, fn: Callable, items: Iterable, /, **common) -> Iterator[Outcome]:
        """Apply ``fn(item, **common)`` to every item; yield outcomes as they complete.

        Parameters
        ----------
        fn : callable
            A module-level function (workers import it by name).
        items : iterable
            Consumed lazily: only a few items per worker are in flight, so a
            generator can read large inputs as they are needed.
        **common
            Keyword arguments passed to every call (sent to each worker once
            where the backend can).

        Yields
        ------
        Outcome
            In completion order; ``index`` is the item's position.
        """

    def map(self, fn: Callable, items: Iterable, /, **common) -> list:
        """``[fn(item, **common) for item in items]``, computed in parallel, in input order.

        Raises the first exception a unit raises (the other units are cancelled).
        """
        results: dict[int, Any] = {}
        with contextlib.closing(self.imap(fn, items, **common)) as outcomes:  # closing cancels the rest
            for outcome in outcomes:
                if outcome.error is not None:
                    raise outcome.error
                results[outcome.index] = outcome.value
        return [results[i] for i in range(len(results))]

    def describe(self) -> str:
        """One line for the user: where and how wide the work runs."""
        return f"{self.kind}, {self.workers} worker(s) x {self.threads_per_worker} thread(s)"

    def close(self) -> None:
        """Stop the workers this executor started."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _window(self) -> int:
        # Two units per worker: one running, one queued, so a worker never
        # waits for the client between units.
        return 2 * max(1, self.workers)


# ================================================================ in-process
class InProcessExecutor(Executor):
    """Runs the items one after the other in this process."""

    kind = "inprocess"

    def __init__(self, threads_per_worker: int = 1):
        super().__init__(1, threads_per_worker)

    def imap(self, fn, items, /, **common):
        import numba
        import torch

        saved = numba.get_num_threads(), torch.get_num_threads()
        try:
            for index, item in enumerate(items):
                try:
                    value = _run_unit(fn, item, common, self.threads_per_worker)
                except Exception as exc:  # noqa: BLE001 - the unit's failure is its outcome
                    yield Outcome(index, error=exc)
                else:
                    yield Outcome(index, value)
        finally:
            numba.set_num_threads(saved[0])
            torch.set_num_threads(saved[1])

    def describe(self) -> str:
        return f"in-process, {self.threads_per_worker} thread(s)"


# ============================================================== processes
class ProcessExecutor(Executor):
    """A pool of spawned local processes (``concurrent.futures``).

    Parameters
    ----------
    workers : int
    threads_per_worker : int
    retries : int
        Times an item is run again after the pool broke while it was running
        (a worker process died); the pool is rebuilt each time.
    """

    kind = "processes"

    def __init__(self, workers: int, threads_per_worker: int = 1, retries: int = 3):
        super().__init__(workers, threads_per_worker)
        self.retries = retries
        self._pool: cf.ProcessPoolExecutor | None = None

    def _get_pool(self) -> cf.ProcessPoolExecutor:
        if self._pool is None:
            import multiprocessing

            # spawn: a forked child would inherit torch's and numba's thread pools in an undefined state.
            self._pool = cf.ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"),
                                                initializer=_init_process, initargs=(self.threads_per_worker,))
        return self._pool

    def _drop_pool(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    def imap(self, fn, items, /, **common):
        source = enumerate(items)
        retry: deque = deque()
        running: dict[cf.Future, tuple[int, Any, int]] = {}
        try:
            while True:
                while len(running) < self._window():
                    if retry:
                        index, item, attempt = retry.popleft()
                    else:
                        nxt = next(source, None)
                        if nxt is None:
                            break
                        (index, item), attempt = nxt, 0
                    future = self._get_pool().submit(_run_unit, fn, item, common, self.threads_per_worker)
                    running[future] = (index, item, attempt)
                if not running:
                    return
                done, _ = cf.wait(running, return_when=cf.FIRST_COMPLETED)
                broken = any(isinstance(f.exception(), BrokenProcessPool) for f in done)
                if broken:
                    # Every unit of a broken pool fails; collect them all before starting a new pool.
                    cf.wait(running)
                    done = set(running)
                    self._drop_pool()
                for future in sorted(done, key=lambda f: running[f][0]):
                    index, item, attempt = running.pop(future)
                    exc = future.exception()
                    if isinstance(exc, BrokenProcessPool):
                        if attempt < self.retries:
                            retry.append((index, item, attempt + 1))
                            continue
                        exc = ExecutorError(f"a worker process died {attempt + 1} times while running item "
                                            f"{index} (out of memory or killed?); it was given up")
                    yield Outcome(index, error=exc) if exc is not None else Outcome(index, future.result())
        finally:
            if running:  # stopped early (Ctrl-C, an error in the caller): do not wait for the running units
                self._kill_pool()

    def _kill_pool(self) -> None:
        if self._pool is None:
            return
        processes = list((getattr(self._pool, "_processes", None) or {}).values())
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._pool = None
        for process in processes:
            process.terminate()
        for process in processes:
            process.join(timeout=5)

    def describe(self) -> str:
        return f"{self.workers} local processes x {self.threads_per_worker} thread(s)"

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


# ==================================================================== Dask
class DaskExecutor(Executor):
    """Work units as ``dask.distributed`` tasks.

    Parameters
    ----------
    workers : int
        Worker processes of the LocalCluster started when no ``scheduler``
        is given; ignored otherwise (the cluster's workers are used).
    threads_per_worker : int
        numba and torch threads per unit.  Each LocalCluster worker runs one
        task at a time; start external workers with ``--nthreads 1``.
    scheduler : str, optional
        Address of a running scheduler, e.g. ``tcp://host:8786``.
    retries : int
        LocalCluster only: times a task is rerun after the worker running it
        died (Dask's ``allowed-failures``).
    connect_timeout : float
        Seconds to reach the scheduler and to see at least one worker.
    silence_logs : bool
        Keep Dask's own log records (tracebacks of lost connections, worker
        restarts) below CRITICAL off stderr while the executor lives: the
        executor reports what matters as exceptions and outcomes.
    """

    kind = "dask"

    def __init__(self, workers: int = 1, threads_per_worker: int = 1, *, scheduler: str | None = None,
                 retries: int = 3, connect_timeout: float = CONNECT_TIMEOUT, silence_logs: bool = True):
        super().__init__(workers, threads_per_worker)
        distributed = _import_distributed()
        self.scheduler = scheduler
        self._cluster = self._client = None
        self._log_levels = _silence_loggers("distributed") if silence_logs else {}
        try:
            if scheduler is None:
                self._client = self._start_local_cluster(distributed, retries)
            else:
                self._client = _connect(distributed, scheduler, connect_timeout)
                self.workers = self._cluster_threads()
        except BaseException:
            self.close()
            raise

    def _start_local_cluster(self, distributed, retries: int):
        import dask

        # Dask gives its workers MALLOC_TRIM_THRESHOLD_=65536, which turns off
        # glibc's adaptive mmap threshold: every per-iteration image buffer is
        # then mapped and faulted in afresh, and a fit ran 25 % slower than in
        # the client process.  None removes it from the workers' environment.
        with dask.config.set({"distributed.scheduler.allowed-failures": retries,
                              "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}):
            self._cluster = distributed.LocalCluster(
                n_workers=self.workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                dashboard_address=None, silence_logs=logging.CRITICAL, env=_thread_environment(self.threads_per_worker))
        try:
            return distributed.Client(self._cluster, set_as_default=False)
        except BaseException:
            self._cluster.close()
            raise

    def _cluster_threads(self) -> int:
        return max(1, sum(self._client.nthreads().values()))

    @property
    def client(self):
        """The ``distributed.Client`` (for callers that need more of Dask)."""
        return self._client

    def _window(self) -> int:
        if self.scheduler is not None:  # an external cluster may grow or shrink while we run
            self.workers = self._cluster_threads()
        return super()._window()

    def _shared(self, common: dict) -> dict:
        """Send large shared arguments to the cluster once; the tasks get references."""
        out = {}
        for key, value in common.items():
            if isinstance(value, np.ndarray) and value.nbytes >= _SCATTER_BYTES:
                value = self._client.scatter(value, hash=False)
            out[key] = value
        return out

    def imap(self, fn, items, /, **common):
        from distributed import as_completed

        shared = self._shared(common)
        prefix = f"{getattr(fn, '__name__', 'unit')}-{uuid.uuid4().hex[:12]}"
        source = enumerate(items)
        running: dict = {}
        completed = as_completed(loop=self._client.loop)

        def fill():
            window = self._window()
            while len(running) < window:
                nxt = next(source, None)
                if nxt is None:
                    return
                index, item = nxt
                # retries=0: an exception is deterministic; worker deaths are rescheduled by the scheduler.
                future = self._client.submit(_run_unit, fn, item, shared, self.threads_per_worker,
                                             key=f"{prefix}-{index}", pure=False, retries=0)
                running[future] = index
                completed.add(future)

        try:
            fill()
            while running:
                future = next(completed)
                index = running.pop(future)
                outcome = self._outcome(index, future)
                future.release()
                fill()  # keep the workers busy while the caller handles this outcome
                yield outcome
        finally:
            for future in running:
                future.cancel()

    def _outcome(self, index: int, future) -> Outcome:
        if future.status == "finished":
            return Outcome(index, future.result())
        if future.status == "error":
            return Outcome(index, error=future.exception())
        where = f"the Dask scheduler at {self.scheduler}" if self.scheduler else "the local Dask cluster"
        raise ExecutorError(f"lost {where} (task {future.key} is {future.status}); check the scheduler and rerun")

    def describe(self) -> str:
        if self.scheduler is None:
            return f"Dask LocalCluster, {self.workers} worker(s) x {self.threads_per_worker} thread(s)"
        return f"Dask cluster at {self.scheduler}, {self.workers} worker thread(s)"

    def close(self) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # shutdown chatter is not the user's concern
            if self._client is not None:
                self._client.close()
                self._client = None
            if self._cluster is not None:
                self._cluster.close()
                self._cluster = None
        for name, level in self._log_levels.items():
            logging.getLogger(name).setLevel(level)
        self._log_levels = {}


def _silence_loggers(prefix: str) -> dict[str, int]:
    """Set ``prefix`` and its existing child loggers to CRITICAL; return their old levels."""
    names = [prefix] + [n for n in logging.root.manager.loggerDict if n.startswith(prefix + ".")]
    saved = {}
    for name in names:
        logger = logging.getLogger(name)
        saved[name] = logger.level
        logger.setLevel(logging.CRITICAL)
    return saved


def _import_distributed():
    try:
        import distributed
    except ImportError:
        raise ExecutorError("the Dask backend needs the packages dask and distributed; install them with "
                            "pip install 'dask[distributed]', or use another backend") from None
    return distributed


def _connect(distributed, address: str, timeout: float):
    """A Client of the scheduler at ``address`` that has at least one worker, or ExecutorError within ~timeout."""
    try:
        client = distributed.Client(address, timeout=timeout, set_as_default=False)
    except Exception as exc:  # noqa: BLE001 - Dask reports bad addresses through many types
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise ExecutorError(f"cannot reach the Dask scheduler at {address}: {reason}; check the address and that "
                            f"'dask scheduler' is running there") from None
    try:
        client.wait_for_workers(1, timeout=timeout)
    except Exception:  # noqa: BLE001 - a TimeoutError whose type moved between Dask versions
        client.close()
        raise ExecutorError(f"the Dask scheduler at {address} has no workers after {timeout:.0f} s; start some "
                            f"with 'dask worker {address} --nthreads 1'") from None
    return client


# ================================================================ factory
def make_executor(workers: int = 1, *, scheduler: str | None = None, threads_per_worker: int = 1,
                  backend: str = "auto", retries: int = 3, connect_timeout: float = CONNECT_TIMEOUT) -> Executor:
    """Create the executor for ``workers`` parallel units.

    Parameters
    ----------
    workers : int
        Units at the same time on this machine; ignored with ``scheduler``.
    scheduler : str, optional
        Address of a running Dask scheduler (``tcp://host:8786``); implies
        the Dask backend.
    threads_per_worker : int
        numba and torch threads per unit (see the module docstring).
    backend : {"auto", "inprocess", "processes", "dask"}
        ``"auto"``: Dask with ``scheduler``; in-process for one worker;
        otherwise a Dask LocalCluster, or local processes when Dask is not
        installed.
    retries : int
        Reruns of a unit whose worker died.
    connect_timeout : float
        Seconds to reach a scheduler (Dask) before giving up.

    Returns
    -------
    Executor
        Use it as a context manager, or call ``close()``.

    Raises
    ------
    ValueError
        Invalid arguments.
    ExecutorError
        The backend cannot start (Dask missing, scheduler unreachable).
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    for name, value, least in (("workers", workers, 1), ("threads_per_worker", threads_per_worker, 1),
                               ("retries", retries, 0)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < least:
            raise ValueError(f"{name} must be a whole number of at least {least}, got {value!r}")
    if scheduler is not None and backend not in ("auto", "dask"):
        raise ValueError(f"a scheduler address needs the dask backend, not {backend!r}")
    if backend == "auto":
        backend = "dask" if scheduler is not None else "inprocess" if workers == 1 else \
            "dask" if _has_distributed() else "processes"
    if scheduler is None:
        _warn_oversubscription(1 if backend == "inprocess" else workers, threads_per_worker)
    if backend == "inprocess":
        return InProcessExecutor(threads_per_worker)
    if backend == "processes":
        return ProcessExecutor(workers, threads_per_worker, retries)
    return DaskExecutor(workers, threads_per_worker, scheduler=scheduler, retries=retries,
                        connect_timeout=connect_timeout)


def _has_distributed() -> bool:
    import importlib.util

    return importlib.util.find_spec("distributed") is not None


def _warn_oversubscription(workers: int, threads: int) -> None:
    cores = available_cores()
    if workers * threads > cores:
        warnings.warn(f"{workers} worker(s) x {threads} thread(s) = {workers * threads} threads on {cores} cores: "
                      f"they will slow each other down; use fewer workers or threads", stacklevel=3)
