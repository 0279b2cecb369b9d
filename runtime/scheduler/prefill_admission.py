"""Prefill: which waiting requests join the next extend batch, and running that batch.

Admission walks the waiting queue in policy order (policy.py) and admits each request as an
extend over the longest prefix the radix tree already holds, under three budgets: the batch's
input tokens, the chunk size (a longer prompt is cut into chunks, one chunked request at a
time), and KV memory, where every running request keeps a reserve for the tokens it is still
expected to decode (`new_token_ratio` of its remaining max_new_tokens).

Bounded wait (no request starves): admission stops at the first request that does not fit, so
nothing behind it overtakes it for memory; retracted requests come first; under LPM a request
passed over in `MAX_PASSED_OVER` admission rounds goes ahead of every request that has not
waited as long.

Host tier: a request whose match continues into host-only prefixes (at least
`HOST_LOAD_MIN_TOKENS` of them) is not admitted yet: it starts their copy back to the device
under the same memory check admission makes, and waits in the queue, skipped, until the copy
has landed; it is then admitted over the whole prefix. A request whose prefix is being
loaded for another waits for that load instead of recomputing it.
"""

from __future__ import annotations

import torch

from radixlm.runtime.scheduler.batch_builder import build_extend_batch
from radixlm.runtime.scheduler.output_rules import store_logprobs
from radixlm.runtime.scheduler.policy import InBatchPrefixFilter, PrefillBudget, match_limit
from radixlm.runtime.scheduler.request import Req

# host-only prefixes shorter than this are recomputed: a copy costs more than a few tokens' prefill
HOST_LOAD_MIN_TOKENS = 8


class PrefillAdmission:
    """The Scheduler's prefill half. Uses the Scheduler's `waiting`, `running`, `chunked_req`,
    `cache` (KVCacheBridge), `policy`, `cfg`, `chunk_size`, `new_token_ratio` and `stats`."""

    def _schedule_prefill(self) -> list[Req]:
        budget = PrefillBudget(self.cfg.max_prefill_tokens, self.chunk_size, self.new_token_ratio)
        batch: list[Req] = []
        reserved = sum(budget.decode_reserve(r) for r in self.running)

        if self.chunked_req is not None:
            req = self.chunked_req
            n = min(len(req.fill_ids) - req.kv_len, budget.rem_chunk_tokens)
            if not self.cache.extend_into(req, n):
                return []  # not enough memory for the next chunk yet: decode frees some
            budget.take(n)
            batch.append(req)
            if req.is_chunked:
                return batch  # one chunked request at a time, and it used the whole chunk

        req_pool = self.cache.req_pool
        if not self.waiting or req_pool.available == 0:
            return batch
        dedup = InBatchPrefixFilter(self.policy.policy == "lpm")
        admitted: list[Req] = []
        # loading requests hold their loaded prefix locked: the memory they need beyond it is
        # set aside, and those whose load has landed go first, so loads cannot starve each other
        loading = {id(r): r.host_load.need for r in self.waiting if r.host_load is not None}
        reserved += sum(loading.values())
        order = self.policy.order(self.waiting)
        if loading:
            landed = [r for r in order if r.host_load is not None and r.host_load.done]
            order = landed + [r for r in order if r.host_load is None or not r.host_load.done]
        for req in order:
            if req_pool.available == 0 or budget.rem_chunk_tokens <= 0:
                break
            if req.host_load is not None and not req.host_load.done:
                continue  # its prefix is still on its way back from host memory
            match = self.cache.match(req.fill_ids[: match_limit(req)])
            if match.blocked_by is not None:
                continue  # another request's load is bringing this prefix back
            cached_len = len(match.kv_indices)
            extend_len = len(req.fill_ids) - cached_len
            if dedup.should_defer(req, cached_len + match.host_len):
                continue
            reserve = budget.decode_reserve(req)
            reserved -= loading.pop(id(req), 0)  # checked for itself below
            if match.host_len >= HOST_LOAD_MIN_TOKENS and self.cache.host is not None:
                self.cache.lock(match)  # its device prefix is not reclaimable for it
                fits = extend_len + reserve <= self.cache.reclaimable - reserved
                load = self.cache.start_load(match) if fits else None
                self.cache.unlock(match)  # the load's own lock covers the prefix now
                if load is None:
                    break
                if req.host_load is not None:  # an earlier load of a shorter prefix, now done
                    self.cache.release_load(req)
                req.host_load = load
                req.host_loaded_tokens += load.num_tokens
                load.need = extend_len - load.num_tokens + reserve
                reserved += load.need
                continue
            self.cache.lock(match)
            too_big = batch and extend_len > budget.rem_input_tokens
            if extend_len + reserve > self.cache.reclaimable - reserved or too_big:
                self.cache.unlock(match)
                break
            n = min(extend_len, budget.rem_chunk_tokens)
            self.cache.assign_row(req, match)
            if not self.cache.extend_into(req, n):  # cannot happen after the room check; undo cleanly
                self.cache.cache_req(req, finished=True)
                break
            if req.host_load is not None:  # admitted over the loaded prefix, under its own lock now
                self.cache.release_load(req)
            if req.cached_tokens < 0:  # first admission (a retracted request was counted already)
                req.cached_tokens = cached_len
                self.stats.prompt_tokens += req.prompt_len
                self.stats.cached_tokens += min(cached_len, req.prompt_len)
                self.stats.host_cached_tokens += min(req.host_loaded_tokens, cached_len, req.prompt_len)
            reserved += reserve
            budget.take(n)
            batch.append(req)
            admitted.append(req)
            if req.is_chunked:
                self.chunked_req = req
                break
        for req in admitted:
            self.waiting.remove(req)
        if admitted:
            for req in self.waiting:
                req.passed_over += 1
        return batch

    def _run_extend(self, reqs: list[Req]) -> list[Req]:
        out_loc = torch.cat([self.cache.row(r)[r.kv_len : r.extend_target] for r in reqs])
        batch, owners = build_extend_batch(
            reqs=reqs, out_loc=out_loc, vocab_size=self.runner.vocab_size, device=self.device
        )
        result = self.runner.forward(batch)
        self._last_decode_end = None  # the next decode step's wait is not the host's fault
        self.stats.prefill_batches += 1
        store_logprobs(result, owners)

        touched = []
        for req, token in zip(reqs, result.next_token_ids):
            req.kv_len = req.extend_target
            if req.is_chunked:
                self.cache.cache_req(req, finished=False)
                continue
            if req is self.chunked_req:
                self.chunked_req = None
            if token >= 0:
                self._append_token(req, token)
            elif len(req.output_ids) >= req.sampling_params.max_new_tokens:
                self._finish(req, {"type": "length", "length": req.sampling_params.max_new_tokens})
            self.cache.cache_req(req, finished=req.finished)
            if not req.finished:
                self.running.append(req)
            touched.append(req)
        return touched
