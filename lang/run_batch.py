"""`run_batch`: one program over many argument sets, at the speed of the requests it makes.

Up to `num_threads` workers (reused threads, worker_threads.py) take the programs in input
order. A worker runs a program's body and executes each expression as it is appended, on its
own thread (the state would be synced right after anyway): one thread per running program, no
hand-off to a second. The workers' requests go through one `RequestGather` when the backend
offers one (client/request_gather.py): a request waits until every worker still running has
one ready, or a few milliseconds, and then they leave together, so the scheduler prefills the
programs' first calls as one batch, as it does for `Engine.generate` of the same prompts. The
programs' constant prefix is prefilled once: the backend decides how (RuntimeEndpoint: the
scheduler's in-batch dedup under LPM, for a prefix at least its `in_batch_prefix_tokens` long;
otherwise the prefix goes first and the programs' requests, not the workers, wait for its
reply). A backend that cannot gather prefills it with
`cache_prefix` before the workers start.

Semantics are those of running each program alone: expressions within a state keep their
order; a program's failure (a request or its own Python code) stays in its state's `error()`;
states come back in input order.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from radixlm.lang.program_state import ProgramState
from radixlm.lang.worker_threads import spawn

# How long held requests wait for one more worker's (seconds) before they go without it. Short
# against a scheduler iteration on a GPU (a few ms); a worker busy elsewhere (a tool, a fork's
# children) delays the others' next requests by about this (request_gather.py bounds the hold).
GATHER_MAX_WAIT_S = 0.004
AUTO_THREADS_CAP = 256


def auto_threads(programs: int) -> int:
    """num_threads="auto": SGLang's max(96, 16 x cores), or one worker per program up to
    `AUTO_THREADS_CAP`. A worker waiting for its reply costs no CPU, and with every program
    running at once their first calls reach the scheduler as one batch (with 96 workers, 128
    programs take two waves)."""
    return max(96, (os.cpu_count() or 1) * 16, min(programs, AUTO_THREADS_CAP))


def run_programs(
    run_one: Callable[[dict], ProgramState],
    calls: Sequence[dict],
    *,
    backend: Any,
    num_threads: int,
    prefix: str | None,
    progress_bar: Any,
    generator_style: bool,
) -> list[ProgramState] | Iterator[ProgramState]:
    """Run `run_one(call)` for every call on `num_threads` workers; `prefix` (the programs'
    constant prefix, or None) is prefilled before their requests go out."""
    workers = max(1, min(num_threads, len(calls)))
    join = backend.gather_requests(workers, prefix)
    if join is None and prefix is not None:
        backend.cache_prefix(prefix)  # a backend that cannot gather: wait for the prefill here
    results: list[Any] = [None] * len(calls)
    done = [threading.Event() for _ in calls]
    next_index = iter(range(len(calls)))
    take = threading.Lock()
    finished = threading.Condition()
    unfinished = [len(calls)]

    def worker() -> None:
        with join() if join is not None else contextlib.nullcontext():
            while True:
                with take:
                    i = next(next_index, None)
                if i is None:
                    return
                try:
                    results[i] = run_one(calls[i])
                except BaseException as exc:  # not the program's own failure (that stays in its
                    results[i] = _Raised(exc)  # state): the caller's, e.g. a bad argument
                done[i].set()
                with finished:
                    unfinished[0] -= 1
                    if unfinished[0] == 0:
                        finished.notify_all()

    for _ in range(workers):
        spawn(worker)

    def ordered() -> Iterator[ProgramState]:
        try:
            for i, event in enumerate(done):
                event.wait()
                result = results[i]
                results[i] = None  # the iterator's consumer owns it now
                if isinstance(result, _Raised):
                    raise result.exc
                if progress_bar is not None:
                    progress_bar.update(1)
                yield result
        finally:
            if progress_bar is not None:
                progress_bar.close()

    if generator_style:
        return ordered()
    with finished:  # one wake-up for the whole batch, not one per program (each a GIL hand-off)
        finished.wait_for(lambda: unfinished[0] == 0)
    return list(ordered())


class _Raised:
    __slots__ = ("exc",)

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc
