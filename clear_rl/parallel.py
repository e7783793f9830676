"""Ordered worker processes for the CPU-bound data builders (`clear-rl degrade`, `prepare`).

`ordered_map` runs one task function over a stream of tasks in worker processes and yields
the results in submission order, so a run's output is the same bytes whatever the number of
workers: every task draws from its own seeds, and the one-process path runs the same function
in-process under the same thread settings. Workers are *spawned* (forking a process whose
torch or OpenMP runtime has started is unsafe) and run one thread each, so N workers use N
cores and no more. Only a bounded number of tasks is in flight, for memory. What workers log
goes to this process's loggers, as if it were logged here.

This module imports nothing heavy: a spawned worker imports it (for its initializer) before
torch, so the thread variables it sets are read when the OpenMP runtime starts.
"""

from __future__ import annotations

import contextlib
import logging
import logging.handlers
import multiprocessing
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar

from clear_rl.errors import ClearRLError

C = TypeVar("C")
T = TypeVar("T")
R = TypeVar("R")

THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
# With workers=0 (automatic), the first task runs here, timed, and workers start only when the
# tasks left would take longer than this on one core: starting a worker (spawn, import torch)
# takes 2-3 s, so a small job (few or small images) is faster in one process.
AUTO_SECONDS = 10.0
IN_FLIGHT_PER_WORKER = 2  # tasks queued per worker: enough to keep it busy, few for memory


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def check_workers(workers: int) -> None:
    """A worker count is 0 (automatic: see `ordered_map`) or a positive number of processes."""
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise ClearRLError(
            f"workers must be 0 (automatic: one per core when worth it) or a number of processes >= 1, "
            f"got {workers!r}"
        )


def _cv2() -> Any:
    """OpenCV when installed (the engine's CPU backend may use it): its thread pool is set too."""
    try:
        import cv2
    except ImportError:
        return None
    return cv2


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run the block with torch (and OpenCV) on one thread, as a worker runs, then restore:
    the one-process path computes under the same settings as the workers, on one core."""
    import torch

    cv2 = _cv2()
    before = torch.get_num_threads(), cv2.getNumThreads() if cv2 else None
    torch.set_num_threads(1)
    if cv2:
        cv2.setNumThreads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before[0])
        if cv2:
            cv2.setNumThreads(before[1])


def _forward_logs(logs: Any) -> None:
    """Hand each record the workers send to the logger of its name here (its level, its
    handlers), until the None that ends the pool."""
    while (record := logs.get()) is not None:
        logger = logging.getLogger(record.name)
        if logger.isEnabledFor(record.levelno):
            logger.handle(record)


def _die_with_parent(parent: int) -> None:
    """Linux: have the kernel kill this worker the moment its parent dies, SIGKILL included
    (prctl PR_SET_PDEATHSIG); elsewhere `_start_worker`'s watch thread notices within 0.2 s."""
    with contextlib.suppress(Exception):  # no libc prctl (not Linux): the watch thread does it
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1: PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent died before the request above took effect
        os._exit(1)


def _start_worker(parent: int, logs: Any, level: int) -> None:
    """Initializer of a worker: one thread for every runtime, its records sent to the parent,
    Ctrl-C left to the parent (which stops the pool), and an exit of its own as soon as the
    parent is killed outright."""
    _die_with_parent(parent)
    for name in THREAD_VARIABLES:
        os.environ[name] = "1"
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    root = logging.getLogger()
    root.handlers[:] = [logging.handlers.QueueHandler(logs)]
    root.setLevel(level)
    import torch

    torch.set_num_threads(1)
    with contextlib.suppress(RuntimeError):  # only allowed before any inter-op work
        torch.set_num_interop_threads(1)
    cv2 = _cv2()
    if cv2:
        cv2.setNumThreads(1)

    def watch_parent() -> None:  # a SIGKILLed parent leaves its workers blocked on the task queue
        while os.getppid() == parent:
            time.sleep(0.2)
        os._exit(1)

    threading.Thread(target=watch_parent, name="watch-parent", daemon=True).start()


def ordered_map(
    function: Callable[[T], R], jobs: Iterable[tuple[C, T]], workers: int, tasks: int
) -> Iterator[tuple[C, R]]:
    """Yield `(context, function(task))` for each `(context, task)` of `jobs`, in order.

    `function` must be a module-level function and tasks picklable; contexts stay in this
    process. `tasks` is how many jobs there are. With `workers` 1 the tasks run here, one at a
    time, on one thread; with N, in min(N, tasks) spawned processes; with 0, the first runs here
    and the rest in one process per core if they would take more than AUTO_SECONDS on one.
    An error in a task, or in producing the jobs, is raised here when the one-process run would
    meet it: after the results before it. Close the iterator (or exhaust it) to stop the workers.
    """
    check_workers(workers)
    source = iter(jobs)
    if workers == 0:
        workers = yield from _first_then_choose(function, source, tasks)
        tasks -= 1
    if min(workers, tasks) <= 1:
        yield from _in_process(function, source)
    else:
        yield from _in_pool(function, source, min(workers, tasks))


def _run_here(function: Callable[[T], R], task: T) -> R:
    with one_thread():
        return function(task)


def _in_process(function: Callable[[T], R], source: Iterator[tuple[C, T]]) -> Iterator[tuple[C, R]]:
    for context, task in source:
        yield context, _run_here(function, task)


def _first_then_choose(
    function: Callable[[T], R], source: Iterator[tuple[C, T]], tasks: int
) -> Generator[tuple[C, R], None, int]:
    """Run the first task here, timed; return how many workers the others are worth."""
    cores = available_cores()
    if cores == 1 or tasks <= 1:
        return 1
    for context, task in source:
        start = time.perf_counter()
        result = _run_here(function, task)
        estimate = (time.perf_counter() - start) * (tasks - 1)
        yield context, result
        return cores if estimate > AUTO_SECONDS else 1
    return 1


def _stop_workers(pool: ProcessPoolExecutor) -> None:
    """Terminate a pool's worker processes. `ProcessPoolExecutor.terminate_workers` exists from
    Python 3.14; before it, the processes are only reachable through the pool's `_processes`."""
    terminate = getattr(pool, "terminate_workers", None)
    if terminate is not None:
        terminate()
        return
    for process in list((getattr(pool, "_processes", None) or {}).values()):
        with contextlib.suppress(Exception):
            process.terminate()


def _in_pool(
    function: Callable[[T], R], source: Iterator[tuple[C, T]], workers: int
) -> Iterator[tuple[C, R]]:
    """The tasks of `source` in `workers` spawned processes, results in order."""
    spawn = multiprocessing.get_context("spawn")
    logs = spawn.Queue()
    pool = ProcessPoolExecutor(
        workers,
        mp_context=spawn,
        initializer=_start_worker,
        initargs=(os.getpid(), logs, logging.getLogger().getEffectiveLevel()),
    )
    forwarder = threading.Thread(target=_forward_logs, args=(logs,), name="worker-logs", daemon=True)
    forwarder.start()
    pending: deque[tuple[C, Future]] = deque()
    failure = None
    try:
        while True:
            while failure is None and len(pending) < workers * IN_FLIGHT_PER_WORKER:
                try:
                    context, task = next(source)
                except StopIteration:
                    break
                except Exception as exc:  # raised after the results of the jobs before it
                    failure = exc
                    break
                pending.append((context, pool.submit(function, task)))
            if not pending:
                break
            context, future = pending.popleft()
            try:
                result = future.result()
            except BrokenProcessPool as exc:
                raise ClearRLError(
                    "a worker process died (killed, or out of memory?); run with fewer workers"
                ) from exc
            yield context, result
        if failure is not None:
            raise failure
    finally:
        # Every result taken: the workers exit now, their last records forwarded. Stopped early
        # (an error, Ctrl-C, the consumer closed the iterator): queued tasks are dropped and the
        # running ones are stopped, so no worker outlives the command.
        pool.shutdown(wait=not pending, cancel_futures=True)
        if pending:
            _stop_workers(pool)
        if not pending:
            logs.put(None)
            forwarder.join(timeout=10)  # a worker killed mid-record could leave the queue locked
            logs.cancel_join_thread()
