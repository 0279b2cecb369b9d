"""Overlapped decode: the Scheduler's decode steps split into launch and completion.

Overlap (on by default on CUDA): in steady decode the scheduler queues step N+1 before it
waits for step N, with N's sampled ids (still on the device) as N+1's input, then
processes N's tokens (stop checks, outputs to the client) while the device runs N+1. The
device never waits for the host's bookkeeping. A request that finishes at N has been fed
into N+1 anyway; that one token is dropped, and the K/V it wrote goes to the tree with the
rest of the request. Steps that need host-side history to sample (grammar masks,
penalties), admissions, aborts and retractions first wait for the step in flight, so
outputs are identical with overlap on or off.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from radixlm.runtime.model_executor.forward_batch import ForwardHandle, ForwardResult
from radixlm.runtime.scheduler.batch_builder import LogprobOwner, build_decode_batch
from radixlm.runtime.scheduler.output_rules import store_logprobs
from radixlm.runtime.scheduler.request import Req


@dataclass
class InflightDecode:
    """A decode step queued on the device whose tokens the host has not processed yet."""

    reqs: list[Req]
    handle: ForwardHandle
    logprob_owners: list[LogprobOwner]
    row_of: dict[int, int]  # id(request) -> its row in this step


class OverlappedDecode:
    """The Scheduler's decode launch and completion, and the overlap of the two across steps.
    Uses the Scheduler's `cache`, `runner`, `running`, `stats`, `device`, `inflight`,
    `_last_decode_end`, `_append_token`, `_run_decode` and `_decay_token_ratio`."""

    def _drain(self) -> list[Req]:
        """Wait for the decode step in flight and process its tokens."""
        inflight, self.inflight = self.inflight, None
        return self._complete_decode(inflight) if inflight is not None else []

    def _overlapped_decode(self) -> list[Req]:
        """Queue the next decode step, then process the one in flight while it runs. Falls
        back to a plain step (after draining) when the next step needs settled state."""
        prev = self.inflight
        # requests certain to finish with the step in flight (length limits) are not fed again
        pending = 1 if prev is not None else 0
        reqs = [
            r
            for r in self.running
            if len(r.output_ids) + pending < r.sampling_params.max_new_tokens
            and r.seq_len + pending < self.runner.context_len
        ]
        if not reqs:
            return self._drain()
        fed_by_prev = prev is None or all(id(r) in prev.row_of for r in reqs)
        # retraction needs a drained step, so only eviction may make room here
        if not (fed_by_prev and all(self._can_overlap(r) for r in reqs) and self.cache.make_room(len(reqs))):
            touched = self._drain()
            return touched + (self._run_decode() if self.running else [])
        self.inflight = self._launch_decode(reqs, prev)
        if prev is not None:
            self.stats.overlapped_steps += 1
            return self._complete_decode(prev)
        return []

    def _can_overlap(self, req: Req) -> bool:
        """Sampling this request needs no token of the step in flight on the host."""
        p = req.sampling_params
        return (
            req.grammar is None
            and not p.frequency_penalty
            and not p.presence_penalty
            and p.repetition_penalty == 1.0
        )

    def _launch_decode(self, reqs: list[Req], prev: InflightDecode | None) -> InflightDecode:
        """Queue one decode step. With `prev` (a step in flight that fed every one of `reqs`)
        the input ids are prev's sampled ids, gathered on the device; each request's
        `kv_len` then already counts prev's token, whose id the host does not know yet."""
        slots = self.cache.alloc_slots(len(reqs))
        assert slots is not None, "decode slots must exist after retraction"
        kv_lens = [r.kv_len for r in reqs]  # the new token's position = tokens already cached
        batch, lp = build_decode_batch(
            rows=reqs,
            input_ids=None if prev else [r.last_token_id for r in reqs],
            positions=kv_lens,
            slots=slots,
            vocab_size=self.runner.vocab_size,
            device=self.device,
            prev=(prev.handle.sampled, [prev.row_of[id(r)] for r in reqs]) if prev else None,
        )
        # one scatter for the whole batch, with device-side indices (no host sync)
        self.cache.req_pool.req_to_token[batch.req_pool_indices, batch.positions] = slots.to(
            self.cache.req_pool.req_to_token.dtype
        )
        for req in reqs:
            req.kv_len += 1  # its K/V is being written by this step
        start = time.perf_counter()
        handle = self.runner.launch(batch)
        self.stats.decode_forward_s += time.perf_counter() - start
        self.stats.decode_steps += 1
        self._decay_token_ratio()
        owners = [(reqs[i], "output") for i in lp]
        return InflightDecode(reqs, handle, owners, {id(r): i for i, r in enumerate(reqs)})

    def _complete_decode(self, step: InflightDecode) -> list[Req]:
        """Process a decode step's tokens. Requests that finished while it was in flight
        (overlap fed them once more) drop their token: their K/V already went to the tree."""
        result = self._wait(step.handle)
        store_logprobs(result, step.logprob_owners)
        touched = []
        for req, token in zip(step.reqs, result.next_token_ids):
            if req.finished:
                continue
            self._append_token(req, token)
            touched.append(req)
            if req.finished:
                self.running.remove(req)
                self.cache.cache_req(req, finished=True)
        return touched

    def _wait(self, handle: ForwardHandle) -> ForwardResult:
        start = time.perf_counter()
        result = handle.result()
        self.stats.decode_forward_s += time.perf_counter() - start
        if handle.start_event is not None:
            self.stats.decode_gpu_busy_s += handle.start_event.elapsed_time(handle.end_event) / 1e3
            if self._last_decode_end is not None:
                self.stats.decode_gpu_idle_s += self._last_decode_end.elapsed_time(handle.start_event) / 1e3
            self._last_decode_end = handle.end_event
        return result
