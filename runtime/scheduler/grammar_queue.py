"""Constrained requests waiting for their grammar to compile.

Compiling a regex or JSON schema into a token automaton can take seconds, so it runs on the
grammar cache's worker threads and the scheduler keeps decoding meanwhile. A request enters
the waiting queue only once its grammar is ready; one whose grammar fails is finished with a
400-status abort that names the problem. A request with `reasoning_end_token_id` gets its
grammar behind a `ReasoningGate`: free while the model thinks, applied once it stops.
"""

from __future__ import annotations

import concurrent.futures

from radixlm.runtime.constrained.backend import constraint_of
from radixlm.runtime.constrained.grammar_cache import GrammarCache
from radixlm.runtime.scheduler.request import Req


class GrammarQueue:
    def __init__(self, grammars: GrammarCache | None) -> None:
        self.grammars = grammars  # None: constrained requests are refused
        self.pending: list[tuple[Req, concurrent.futures.Future]] = []  # (request, its grammar)

    def __bool__(self) -> bool:
        return bool(self.pending)

    def requests(self) -> list[Req]:
        return [req for req, _ in self.pending]

    def needs_grammar(self, req: Req) -> bool:
        return req.grammar is None and constraint_of(req.sampling_params) is not None

    def add(self, req: Req) -> None:
        """Start (or reuse) the compilation of the request's grammar."""
        if self.grammars is None:
            refused: concurrent.futures.Future = concurrent.futures.Future()
            refused.set_exception(
                ValueError("this runtime has no constrained decoding (regex / json_schema / ebnf / grammar)")
            )
            self.pending.append((req, refused))
            return
        self.pending.append((req, self.grammars.get(constraint_of(req.sampling_params))))

    def ready_rids(self) -> list[str]:
        """Requests whose grammar is compiled (or failed, or that were aborted) by now."""
        return [req.rid for req, fut in self.pending if fut.done() or req.to_abort]

    def poll(self, ready: set[str] | None = None) -> tuple[list[Req], list[tuple[Req, dict]]]:
        """Take the requests whose grammar is settled: (ready to wait for admission, failed
        with their finish reason). `ready`: the rids to treat as settled (tensor parallel:
        the leader's view, so every rank admits the same requests in the same step; a rank
        still compiling one waits for it here)."""
        admitted: list[Req] = []
        failed: list[tuple[Req, dict]] = []
        still = []
        for req, fut in self.pending:
            settled = (req.rid in ready) if ready is not None else (fut.done() or bool(req.to_abort))
            if not settled:
                still.append((req, fut))
            elif req.to_abort:
                failed.append((req, {"type": "abort", "message": req.to_abort}))
            elif fut.exception() is not None:
                failed.append((req, {"type": "abort", "message": str(fut.exception()), "status_code": 400}))
            else:
                params = req.sampling_params
                req.grammar = fut.result().new_matcher(
                    params.reasoning_end_token_id, params.reasoning_start_token_id
                )
                admitted.append(req)
        self.pending = still
        return admitted, failed
