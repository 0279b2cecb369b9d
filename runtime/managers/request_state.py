"""A request in flight in the tokenizer manager: what has come back for it so far, and how
each text output from the detokenizer updates it.

A consumer (a route handler, the Engine) reads the request's queue: stream chunks as they
arrive, or one "finished" marker, or an exception (RequestError: the runtime refused the
request; RuntimeDiedError: the runtime is gone).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from radixlm.runtime.managers.messages import TextOutput


class RequestError(RuntimeError):
    """A request the runtime refused or aborted (bad input found late, abort, ...)."""

    def __init__(self, message: str, status_code: int = 400) -> None:
        super().__init__(message)
        self.status_code = status_code


@dataclass
class ReqState:
    """A request in flight, as the tokenizer manager tracks it for its consumer."""

    rid: str
    index: int
    stream: bool
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)
    text: str = ""
    output_ids: list[int] = field(default_factory=list)
    meta_info: dict[str, Any] = field(default_factory=dict)
    finished: bool = False
    created: float = field(default_factory=time.perf_counter)
    first_token_at: float | None = None
    last_token_at: float | None = None

    def apply(self, out: TextOutput, now: float, metrics: Any = None) -> None:
        """Take one text output of this request: its text, token ids and meta_info grow, the
        latency metrics are observed, and the consumer's queue gets a chunk (streaming) or
        the news that it finished (otherwise)."""
        tok = out.token
        reason = tok.finished_reason
        if reason is not None and reason.get("type") == "abort" and reason.get("status_code") == 400:
            self.finished = True
            self.queue.put_nowait(RequestError(reason.get("message", "invalid request"), 400))
            return
        if tok.new_ids:
            if self.first_token_at is None:
                self.first_token_at = now
                if metrics is not None:
                    metrics.observe_ttft(now - self.created)
            elif metrics and self.last_token_at is not None:
                metrics.observe_itl((now - self.last_token_at) / len(tok.new_ids))
            self.last_token_at = now
        self.text += out.text_delta
        self.output_ids += tok.new_ids
        meta = self.meta_info
        meta.update(
            id=self.rid,
            prompt_tokens=tok.prompt_tokens,
            completion_tokens=tok.completion_tokens,
            cached_tokens=tok.cached_tokens,
            finish_reason=reason,
            retractions=tok.retractions,
        )
        if tok.jump_forward_tokens is not None:
            meta["jump_forward_tokens"] = tok.jump_forward_tokens
        if tok.spec_proposed_tokens is not None:
            meta["spec_proposed_tokens"] = tok.spec_proposed_tokens
            meta["spec_accepted_tokens"] = tok.spec_accepted_tokens
        for key in (
            "input_token_logprobs",
            "input_top_logprobs",
            "output_token_logprobs",
            "output_top_logprobs",
        ):
            new = getattr(tok, key)
            if new is not None:
                meta.setdefault(key, []).extend(new)
        self.finished = reason is not None
        if self.finished:
            meta["e2e_latency"] = now - self.created
            if metrics is not None:
                metrics.observe_finished(self)
        if self.stream:
            # a snapshot: the consumer may read this chunk after later tokens have arrived
            snapshot = {k: list(v) if isinstance(v, list) else v for k, v in meta.items()}
            self.queue.put_nowait(
                {
                    "index": self.index,
                    "text": out.text_delta,
                    "output_ids": list(tok.new_ids),
                    "meta_info": snapshot,
                    "finished": self.finished,
                }
            )
        elif self.finished:
            self.queue.put_nowait({"finished": True})
