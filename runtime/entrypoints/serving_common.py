"""What the native and the OpenAI-compatible serving share: preparing requests, running them
while watching for the client leaving, and streaming them. Runtime errors leave every helper
here as HTTPErrors, mapped by http_errors.

The helpers take the TokenizerManager (or anything with its `prepare`, `generate` and
`tokenizer`) as an argument and know nothing of FastAPI: the client's presence comes in as an
`is_disconnected` callable, so the serving functions can be called directly in tests.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from radixlm.runtime.entrypoints.http_errors import HTTPError, as_http_errors, http_error_stream
from radixlm.runtime.managers.tokenizer_manager import PreparedRequest, TokenizerManager

T = TypeVar("T")
IsDisconnected = Callable[[], Awaitable[bool]]

DISCONNECT_POLL_S = 0.5


def prepare(
    tm: TokenizerManager, text: str | None, ids: list[int] | None, params: dict, **kw: Any
) -> PreparedRequest:
    with as_http_errors():
        return tm.prepare(text, ids, params, **kw)


async def collect(tm: TokenizerManager, req: PreparedRequest, rid: str | None = None) -> list[dict]:
    """A request's final outputs, one per sample, in index order."""
    outs = [item async for item in tm.generate(req, rid=rid)]
    return sorted(outs, key=lambda o: o["index"])


async def run_watching(coro: Awaitable[T], is_disconnected: IsDisconnected | None = None) -> T:
    """Await coro, cancelling it (and so aborting its requests) if the client leaves."""
    task = asyncio.ensure_future(coro)
    try:
        with as_http_errors():
            while True:
                done, _ = await asyncio.wait({task}, timeout=DISCONNECT_POLL_S)
                if done:
                    return task.result()
                if is_disconnected is not None and await is_disconnected():
                    task.cancel()
                    raise HTTPError(499, "client disconnected")
    finally:
        if not task.done():
            task.cancel()


def stream(tm: TokenizerManager, req: PreparedRequest, rid: str | None = None) -> AsyncIterator[dict]:
    """A request's streamed deltas; a runtime error part-way through becomes an HTTPError."""
    return http_error_stream(tm.generate(req, stream=True, rid=rid))


def token_text(tm: TokenizerManager, token_id: int) -> str:
    return tm.tokenizer.decode([token_id])
