"""Reused daemon threads for the DSL's background work: state executors' workers, streamed
program bodies, and run_batch's workers.

Starting a thread is not free: `Thread.start` waits until the new thread has run, which on a
busy machine is a GIL hand-off away (milliseconds on 2 cores, measured in
benchmarks/programs/README.md), and a program used to start two or three. `spawn` gives the
function to an idle thread when there is one and starts a thread only when none is idle, so
the count grows to the largest number of functions running at once and then stays. A thread
idle for `IDLE_EXIT_S` exits.

Each function runs to completion on its thread; an exception it lets escape is logged, and
the thread lives on. Nothing here bounds concurrency: a function that waits for another
spawned function can never deadlock the pool.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable

logger = logging.getLogger("radixlm.lang")
IDLE_EXIT_S = 60.0


class _Worker:
    __slots__ = ("task", "wake")

    def __init__(self, task: Callable[[], None]) -> None:
        self.task: Callable[[], None] | None = task
        self.wake = threading.Event()


class WorkerThreads:
    def __init__(self, name: str) -> None:
        self.name = name
        self._lock = threading.Lock()
        self._idle: list[_Worker] = []  # LIFO: the most recently used thread is the warmest

    def spawn(self, task: Callable[[], None]) -> None:
        """Run `task()` on an idle thread, or on a new one when none is idle."""
        with self._lock:
            worker = self._idle.pop() if self._idle else None
            if worker is not None:
                worker.task = task
                worker.wake.set()
                return
        worker = _Worker(task)
        threading.Thread(target=self._loop, args=(worker,), daemon=True, name=self.name).start()

    def idle_count(self) -> int:
        with self._lock:
            return len(self._idle)

    def _loop(self, worker: _Worker) -> None:
        while True:
            task, worker.task = worker.task, None
            try:
                task()
            except BaseException:  # the task's own business; the thread stays usable
                logger.exception("a background task of %s failed", self.name)
            del task  # drop references (a finished state) before idling
            with self._lock:
                worker.wake.clear()
                self._idle.append(worker)
            if not worker.wake.wait(IDLE_EXIT_S):
                with self._lock:
                    if worker.task is None:  # still idle: leave; spawn no longer sees it
                        self._idle.remove(worker)
                        return
                # a spawn took it between the timeout and the lock: run that task


_threads = WorkerThreads("radixlm-program")


def spawn(task: Callable[[], None]) -> None:
    _threads.spawn(task)


def _reset_after_fork() -> None:
    """A forked child has none of the parent's threads: forget them, or spawn would hand work
    to a thread that does not exist there."""
    global _threads
    _threads = WorkerThreads("radixlm-program")


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)
