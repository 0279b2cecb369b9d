"""lang/worker_threads.py: threads are reused, never capped, and survive a failing task."""

from __future__ import annotations

import threading

from radixlm.lang.worker_threads import WorkerThreads

TIMEOUT_S = 10


def _run(pool: WorkerThreads, task) -> None:
    done = threading.Event()

    def wrapped() -> None:
        try:
            task()
        finally:
            done.set()

    pool.spawn(wrapped)
    assert done.wait(TIMEOUT_S)


def _until_idle(pool: WorkerThreads, count: int) -> None:
    """The task's thread files itself as idle just after the task returns."""
    for _ in range(1000):
        if pool.idle_count() >= count:
            return
        threading.Event().wait(0.01)
    raise AssertionError(f"{count} idle threads expected, {pool.idle_count()} seen")


def test_a_finished_tasks_thread_runs_the_next_task():
    pool = WorkerThreads("test-reuse")
    seen: list[int] = []
    _run(pool, lambda: seen.append(threading.get_ident()))
    _until_idle(pool, 1)
    _run(pool, lambda: seen.append(threading.get_ident()))
    assert seen[0] == seen[1] and seen[0] != threading.get_ident()


def test_concurrent_tasks_get_threads_of_their_own_and_a_task_may_wait_for_another():
    pool = WorkerThreads("test-concurrency")
    started = [threading.Event() for _ in range(4)]
    go = threading.Event()
    idents: set[int] = set()

    def blocker(i: int) -> None:
        idents.add(threading.get_ident())
        started[i].set()
        go.wait(TIMEOUT_S)

    for i in range(4):
        pool.spawn(lambda i=i: blocker(i))
    assert all(e.wait(TIMEOUT_S) for e in started)  # all four run at once: no cap
    assert len(idents) == 4
    inner_done = threading.Event()
    _run(pool, lambda: (pool.spawn(inner_done.set), inner_done.wait(TIMEOUT_S)))  # nested: no deadlock
    go.set()
    _until_idle(pool, 4)


def test_a_failing_task_is_logged_and_its_thread_lives_on(caplog):
    pool = WorkerThreads("test-failure")
    seen: list[int] = []

    def boom() -> None:
        seen.append(threading.get_ident())
        raise RuntimeError("task failed on purpose")

    with caplog.at_level("ERROR", logger="radixlm.lang"):
        pool.spawn(boom)
        _until_idle(pool, 1)
    assert any("test-failure" in r.getMessage() for r in caplog.records)
    _run(pool, lambda: seen.append(threading.get_ident()))
    assert seen[0] == seen[1]
