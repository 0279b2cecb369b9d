"""The scheduler: continuous batching over a radix-cached KV pool.

Each `step()` runs one batch: a prefill (extend) batch when waiting requests can be
admitted, else one decode step for every running request. Prefill admits requests as
extends over their cached prefix under token budgets, chunks long prompts (one chunked
request at a time), and inserts freshly computed KV into the radix tree so concurrent
requests share it at once. When decode runs out of KV slots, the requests that lose
least are retracted (their KV is handed to the tree, where it stays reusable until
evicted) and re-queued at the front; nothing is ever dropped.

Bounded wait (no request starves): admission tries waiting requests in policy order and
stops at the first one that does not fit, so nothing behind it overtakes it for memory;
retracted requests come first; under LPM a request passed over in `MAX_PASSED_OVER`
admission rounds goes ahead of every request that has not waited as long (policy.py).
Retraction takes the running request with the fewest output tokens (ties: the longest
prompt); a retracted request keeps its outputs, so when it returns it is not chosen
before newer arrivals. Every decode step adds a token to each running request and a
retraction removes none, so the total only grows and every request finishes.

Overlap (on by default on CUDA): in steady decode the scheduler queues step N+1 before it
waits for step N, with N's sampled ids (still on the device) as N+1's input, then
processes N's tokens (stop checks, outputs to the client) while the device runs N+1. The
device never waits for the host's bookkeeping. A request that finishes at N has been fed
into N+1 anyway; that one token is dropped, and the K/V it wrote goes to the tree with the
rest of the request. Steps that need host-side history to sample (grammar masks,
penalties), admissions, aborts and retractions first wait for the step in flight, so
outputs are identical with overlap on or off.

The scheduler knows nothing of attention math or sockets: it builds a `ForwardBatch`,
gets a `ForwardResult` back, and reports the requests that progressed.
"""

from __future__ import annotations

import concurrent.futures
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from radixlm.runtime.config import EngineConfig
from radixlm.runtime.constrained.grammar import Grammar, build_vocab_mask
from radixlm.runtime.constrained.grammar_cache import GrammarCache
from radixlm.runtime.layers.sampling import SamplingBatch
from radixlm.runtime.model_executor.device_copy import to_device
from radixlm.runtime.model_executor.forward_batch import (
    ForwardBatch,
    ForwardHandle,
    ForwardMode,
    ForwardResult,
)
from radixlm.runtime.model_executor.model_runner import ModelRunner
from radixlm.runtime.radix.radix_cache import RadixCache
from radixlm.runtime.scheduler.policy import InBatchPrefixFilter, PrefillBudget, SchedulePolicy, match_limit
from radixlm.runtime.scheduler.request import Req

logger = logging.getLogger(__name__)

CPU_DEFAULT_CHUNK = 2048
GPU_DEFAULT_CHUNK = 8192
RETRACT_RESERVE_STEPS = 20  # decode steps of headroom to free per request left after a retraction
MAX_DRAFT_TOKENS = 32  # jump-forward: most drafted tokens one request feeds in one step


@dataclass
class SchedulerStats:
    prompt_tokens: int = 0
    cached_tokens: int = 0
    generated_tokens: int = 0
    prefill_batches: int = 0
    decode_steps: int = 0
    retractions: int = 0
    finished_requests: int = 0
    aborted_requests: int = 0  # of the finished: aborted (by a client, a grammar failure, shutdown)
    jump_forward_tokens: int = 0
    # wall time of decode iterations of the scheduler loop (receive, schedule, forward, emit)
    # and of queuing the step plus waiting for its tokens inside them: their difference is
    # the scheduler's own CPU time per step, which the GPU waits for unless overlap hides it
    decode_iter_s: float = 0.0
    decode_forward_s: float = 0.0
    # on CUDA, from events around each decode step's device work: the device's own time per
    # step, and the gaps between consecutive decode steps in which it waited for the host
    decode_gpu_busy_s: float = 0.0
    decode_gpu_idle_s: float = 0.0
    overlapped_steps: int = 0  # decode steps queued while the previous one was still running

    @property
    def cache_hit_rate(self) -> float:
        return self.cached_tokens / self.prompt_tokens if self.prompt_tokens else 0.0


@dataclass
class InflightDecode:
    """A decode step queued on the device whose tokens the host has not processed yet."""

    reqs: list[Req]
    handle: ForwardHandle
    logprob_owners: list[tuple[Req, str]]
    row_of: dict[int, int]  # id(request) -> its row in this step


class Scheduler:
    def __init__(
        self,
        cfg: EngineConfig,
        runner: ModelRunner,
        decode_tokens: Callable[[list[int]], str],
        grammars: GrammarCache | None = None,
    ) -> None:
        self.cfg = cfg
        self.grammars = grammars  # None: constrained requests are refused
        self.runner = runner
        self.decode_tokens = decode_tokens
        self.device = runner.device
        self.kv_pool = runner.kv_pool
        self.req_pool = runner.req_pool
        self.tree = RadixCache(self.kv_pool.free, device=self.device, disable=cfg.disable_radix_cache)
        self.policy = SchedulePolicy(cfg.schedule_policy, self.tree)
        chunk = cfg.chunked_prefill_size or (
            GPU_DEFAULT_CHUNK if self.device.type == "cuda" else CPU_DEFAULT_CHUNK
        )
        self.chunk_size = chunk if chunk > 0 else 1 << 62
        self.waiting: list[Req] = []
        self.grammar_waiting: list[tuple[Req, object]] = []  # (request, future of its grammar)
        self.running: list[Req] = []
        self.chunked_req: Req | None = None
        self.init_new_token_ratio = min(0.7 * cfg.schedule_conservativeness, 1.0)
        self.min_new_token_ratio = self.init_new_token_ratio * 0.14
        self.new_token_ratio = self.init_new_token_ratio
        self.ratio_decay = (self.init_new_token_ratio - self.min_new_token_ratio) / 600
        self.stats = SchedulerStats()
        mode = cfg.overlap_schedule
        self.overlap = mode == "on" or (mode == "auto" and self.device.type == "cuda")
        self.inflight: InflightDecode | None = None
        self._last_decode_end = None  # end event of the previous decode step, if nothing ran since

    # ------------------------------------------------------------------ public
    def add_request(self, req: Req) -> None:
        params = req.sampling_params
        key = GrammarCache.key_of(params.regex, params.json_schema)
        if key is None or req.grammar is not None:
            self.waiting.append(req)
        elif self.grammars is None:
            refused: concurrent.futures.Future = concurrent.futures.Future()
            refused.set_exception(
                ValueError("this runtime has no constrained decoding (regex / json_schema)")
            )
            self.grammar_waiting.append((req, refused))
        else:  # queued once its grammar is compiled (a cached one is ready at once)
            self.grammar_waiting.append((req, self.grammars.get(key)))

    def ready_grammar_rids(self) -> list[str]:
        """Requests whose grammar is compiled (or failed, or that were aborted) by now."""
        return [req.rid for req, fut in self.grammar_waiting if fut.done() or req.to_abort]

    def _poll_grammars(self, ready: set[str] | None = None) -> list[Req]:
        """Move requests whose grammar is ready to the waiting queue; fail those whose
        grammar could not be built (an error naming the problem, status 400). `ready`: the
        rids to treat as ready (tensor parallel: the leader's view, so every rank admits the
        same requests in the same step; a rank still compiling one waits for it)."""
        failed, still = [], []
        for req, fut in self.grammar_waiting:
            if (req.rid not in ready) if ready is not None else (not fut.done() and not req.to_abort):
                still.append((req, fut))
                continue
            if req.to_abort:
                self._finish(req, {"type": "abort", "message": req.to_abort})
                failed.append(req)
            elif fut.exception() is not None:
                self._finish(req, {"type": "abort", "message": str(fut.exception()), "status_code": 400})
                failed.append(req)
            else:
                req.grammar = Grammar(fut.result())
                self.waiting.append(req)
        self.grammar_waiting = still
        return failed

    def abort_request(self, rid: str, message: str = "aborted by user") -> bool:
        found = False
        for req in self._live_reqs() + self.waiting + [r for r, _ in self.grammar_waiting]:
            if req.rid == rid and not req.finished:
                req.to_abort = message
                found = True
        return found

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.running or self.chunked_req or self.grammar_waiting or self.inflight)

    def step(self, grammar_ready: set[str] | None = None) -> list[Req]:
        """Run one batch (with overlap: queue one and process the one before). Returns the
        requests that gained output tokens or finished. `grammar_ready`: see _poll_grammars."""
        touched = self._poll_grammars(grammar_ready) if self.grammar_waiting else []
        if self.inflight is not None and (
            self.waiting or self.chunked_req or any(r.to_abort for r in self.running)
        ):
            touched += self._drain()  # admissions and aborts work on settled requests
        touched += self._apply_aborts()
        reqs = self._schedule_prefill() if self.inflight is None else []
        if reqs:
            touched += self._run_extend(reqs)
        elif self.running or self.inflight is not None:
            touched += self._overlapped_decode() if self.overlap else self._run_decode()
        return touched

    def _drain(self) -> list[Req]:
        """Wait for the decode step in flight and process its tokens."""
        inflight, self.inflight = self.inflight, None
        return self._complete_decode(inflight) if inflight is not None else []

    def flush_cache(self) -> bool:
        """Drop every cached prefix, and the compiled grammars with them (SGLang does the same;
        a later request recompiles). Refused (False) while requests are queued or running."""
        if self.has_work:
            return False
        if self.grammars is not None:
            self.grammars.clear()
        self.tree.reset()
        self.kv_pool.reset()
        self.req_pool.reset()
        return True

    def check_accounting(self, check_tree: bool = True) -> None:
        """free + evictable + locked + in use == total, and (check_tree) the tree's own invariants,
        which walk every node: ~0.1 s for a 20k-node tree."""
        live = self._live_reqs()
        in_use = sum(r.owned_kv_len for r in live)
        total = self.kv_pool.available + self.tree.evictable_size + self.tree.protected_size + in_use
        if total != self.kv_pool.num_slots:
            raise AssertionError(
                f"KV accounting broken: free {self.kv_pool.available} + evictable {self.tree.evictable_size} + "
                f"locked {self.tree.protected_size} + in use {in_use} != total {self.kv_pool.num_slots}"
            )
        if self.req_pool.available + len(live) != self.req_pool.num_rows:
            raise AssertionError("request rows leaked")
        if check_tree:
            self.tree.self_check()

    def usage(self) -> dict:
        return {
            "total_tokens": self.kv_pool.num_slots,
            "free_tokens": self.kv_pool.available,
            "evictable_tokens": self.tree.evictable_size,
            "locked_tokens": self.tree.protected_size,
            "in_use_tokens": sum(r.owned_kv_len for r in self._live_reqs()),
            "running": len(self.running) + (1 if self.chunked_req else 0),
            "waiting": len(self.waiting),
        }

    # ------------------------------------------------------------------ KV plumbing
    def _live_reqs(self) -> list[Req]:
        return self.running + ([self.chunked_req] if self.chunked_req else [])

    def _alloc_slots(self, n: int) -> torch.Tensor | None:
        if self.kv_pool.available < n:
            self.tree.evict(n - self.kv_pool.available)
        return self.kv_pool.alloc(n)

    def _row(self, req: Req) -> torch.Tensor:
        return self.req_pool.req_to_token[req.req_pool_idx]

    def _cache_req(self, req: Req, finished: bool) -> None:
        """Hand the request's computed KV to the tree. Finished (or retracted/aborted): free
        the row and drop the lock. Unfinished: re-point the row at the tree's slots and move
        the lock to the new deepest node, so the prefix stays protected."""
        assert req.kv_len <= req.seq_len, "a request's token in flight must be processed before caching it"
        row = self._row(req)
        tokens = req.fill_ids[: req.kv_len]
        slots = row[: req.kv_len].to(torch.int64)
        if self.tree.disable:
            if finished:
                self.kv_pool.free(slots)
        else:
            cached = self.tree.insert(tokens, slots)
            # slots the tree already had for [protected, cached) were computed twice: ours go back
            self.kv_pool.free(slots[req.cache_protected_len : cached])
        if finished:
            if req.last_node is not None:
                self.tree.dec_lock_ref(req.last_node)
            self.req_pool.free(req.req_pool_idx)
            req.req_pool_idx, req.last_node = None, None
            req.kv_len = req.cache_protected_len = 0
            return
        if self.tree.disable:
            return
        match = self.tree.match_prefix(tokens)
        row[: req.kv_len] = match.kv_indices.to(row.dtype)
        self.tree.inc_lock_ref(match.last_node)
        if req.last_node is not None:
            self.tree.dec_lock_ref(req.last_node)
        req.last_node = match.last_node
        req.cache_protected_len = req.kv_len

    def _finish(self, req: Req, reason: dict) -> None:
        req.finished_reason = reason
        self.stats.finished_requests += 1
        self.stats.aborted_requests += reason.get("type") == "abort"

    def _apply_aborts(self) -> list[Req]:
        done = []
        for req in [r for r in self.waiting if r.to_abort]:
            self.waiting.remove(req)
            self._finish(req, {"type": "abort", "message": req.to_abort})
            done.append(req)
        for req in [r for r in self._live_reqs() if r.to_abort]:
            self._cache_req(req, finished=True)
            if req is self.chunked_req:
                self.chunked_req = None
            else:
                self.running.remove(req)
            self._finish(req, {"type": "abort", "message": req.to_abort})
            done.append(req)
        return done

    # ------------------------------------------------------------------ prefill
    def _schedule_prefill(self) -> list[Req]:
        budget = PrefillBudget(self.cfg.max_prefill_tokens, self.chunk_size, self.new_token_ratio)
        batch: list[Req] = []
        reserved = sum(budget.decode_reserve(r) for r in self.running)

        if self.chunked_req is not None:
            req = self.chunked_req
            n = min(len(req.fill_ids) - req.kv_len, budget.rem_chunk_tokens)
            if not self._extend_into(req, n):
                return []  # not enough memory for the next chunk yet: decode frees some
            budget.take(n)
            batch.append(req)
            if req.is_chunked:
                return batch  # one chunked request at a time, and it used the whole chunk

        if not self.waiting or self.req_pool.available == 0:
            return batch
        dedup = InBatchPrefixFilter(self.policy.policy == "lpm")
        admitted: list[Req] = []
        for req in self.policy.order(self.waiting):
            if self.req_pool.available == 0 or budget.rem_chunk_tokens <= 0:
                break
            match = self.tree.match_prefix(req.fill_ids[: match_limit(req)])
            cached_len = len(match.kv_indices)
            extend_len = len(req.fill_ids) - cached_len
            if dedup.should_defer(req, cached_len):
                continue
            self.tree.inc_lock_ref(match.last_node)
            reserve = budget.decode_reserve(req)
            room = self.kv_pool.available + self.tree.evictable_size - reserved
            too_big = batch and extend_len > budget.rem_input_tokens
            if extend_len + reserve > room or too_big:
                self.tree.dec_lock_ref(match.last_node)
                break
            n = min(extend_len, budget.rem_chunk_tokens)
            row = self.req_pool.alloc()
            req.req_pool_idx, req.last_node = row, match.last_node
            req.kv_len = req.cache_protected_len = cached_len
            self.req_pool.req_to_token[row, :cached_len] = match.kv_indices.to(torch.int32)
            if not self._extend_into(req, n):  # cannot happen after the room check; undo cleanly
                self._cache_req(req, finished=True)
                break
            if req.cached_tokens < 0:
                req.cached_tokens = cached_len
                self.stats.prompt_tokens += req.prompt_len
                self.stats.cached_tokens += min(cached_len, req.prompt_len)
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

    def _extend_into(self, req: Req, n: int) -> bool:
        """Allocate n new KV slots for the request's next extend."""
        slots = self._alloc_slots(n)
        if slots is None:
            return False
        self._row(req)[req.kv_len : req.kv_len + n] = slots.to(torch.int32)
        req.extend_target = req.kv_len + n
        req.is_chunked = req.extend_target < len(req.fill_ids)
        return True

    def _wants_sample(self, req: Req) -> bool:
        return not req.is_chunked and len(req.output_ids) < req.sampling_params.max_new_tokens

    def _run_extend(self, reqs: list[Req]) -> list[Req]:
        input_ids, positions, out_loc = [], [], []
        logit_tokens: list[int] = []  # batch token index of each logits row
        sample_rows: list[int] = []
        lp_rows, lp_targets, lp_topk = [], [], []
        lp_owner: list[tuple[Req, str]] = []
        offset = 0
        for req in reqs:
            a, b = req.kv_len, req.extend_target
            fill = req.fill_ids
            input_ids += fill[a:b]
            positions += range(a, b)
            out_loc.append(self._row(req)[a:b])
            p_end = min(b, req.prompt_len - 1)
            for p in range(max(a, req.input_logprob_next), p_end):
                lp_rows.append(len(logit_tokens))
                logit_tokens.append(offset + p - a)
                lp_targets.append(fill[p + 1])
                lp_topk.append(req.top_logprobs_num)
                lp_owner.append((req, "input"))
            if self._wants_sample(req):
                sample_rows.append(len(logit_tokens))
                if req.return_logprob:
                    lp_rows.append(len(logit_tokens))
                    lp_targets.append(-1)
                    lp_topk.append(req.top_logprobs_num)
                    lp_owner.append((req, "output"))
                logit_tokens.append(offset + b - a - 1)
            else:
                sample_rows.append(-1)
            offset += b - a
        batch = self._make_batch(
            ForwardMode.EXTEND,
            reqs,
            input_ids,
            positions,
            torch.cat(out_loc),
            [r.kv_len for r in reqs],
            [r.extend_target - r.kv_len for r in reqs],
            logit_tokens,
            sample_rows,
            lp_rows,
            lp_targets,
            lp_topk,
        )
        result = self.runner.forward(batch)
        self._last_decode_end = None  # the next decode step's wait is not the host's fault
        self.stats.prefill_batches += 1
        self._store_logprobs(result, lp_owner)

        touched = []
        for req, token in zip(reqs, result.next_token_ids):
            req.kv_len = req.extend_target
            if req.is_chunked:
                self._cache_req(req, finished=False)
                continue
            if req is self.chunked_req:
                self.chunked_req = None
            if token >= 0:
                self._append_token(req, token)
            elif len(req.output_ids) >= req.sampling_params.max_new_tokens:
                self._finish(req, {"type": "length", "length": req.sampling_params.max_new_tokens})
            if req.finished:
                self._cache_req(req, finished=True)
            else:
                self._cache_req(req, finished=False)
                self.running.append(req)
            touched.append(req)
        return touched

    # ------------------------------------------------------------------ decode
    def _run_decode(self) -> list[Req]:
        """One decode step for every running request, start to finish."""
        self._ensure_decode_memory()
        reqs = list(self.running)
        drafts = self._drafts(reqs)
        if drafts is not None:
            return self._run_decode_with_drafts(reqs, drafts)
        return self._complete_decode(self._launch_decode(reqs, None))

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
        if not (
            fed_by_prev and all(self._can_overlap(r) for r in reqs) and self._reserve_decode_slots(len(reqs))
        ):
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

    def _reserve_decode_slots(self, n: int) -> bool:
        """Make n KV slots free by evicting cached prefixes only (retraction needs a drain)."""
        if self.kv_pool.available < n:
            self.tree.evict(n - self.kv_pool.available)
        return self.kv_pool.available >= n

    def _launch_decode(self, reqs: list[Req], prev: InflightDecode | None) -> InflightDecode:
        """Queue one decode step. With `prev` (a step in flight that fed every one of `reqs`)
        the input ids are prev's sampled ids, gathered on the device; each request's
        `kv_len` then already counts prev's token, whose id the host does not know yet."""
        slots = self._alloc_slots(len(reqs))
        assert slots is not None, "decode slots must exist after retraction"
        kv_lens = [r.kv_len for r in reqs]  # the new token's position = tokens already cached
        lp = [i for i, r in enumerate(reqs) if r.return_logprob]
        everything = list(range(len(reqs)))
        batch = self._make_batch(
            ForwardMode.DECODE,
            reqs,
            None if prev else [r.last_token_id for r in reqs],
            kv_lens,
            slots,
            kv_lens,
            [1] * len(reqs),
            everything,
            everything,
            lp,
            [-1] * len(lp),
            [reqs[i].top_logprobs_num for i in lp],
            prev=(prev.handle.sampled, [prev.row_of[id(r)] for r in reqs]) if prev else None,
        )
        # one scatter for the whole batch, with device-side indices (no host sync)
        self.req_pool.req_to_token[batch.req_pool_indices, batch.positions] = slots.to(torch.int32)
        for req in reqs:
            req.kv_len += 1  # its K/V is being written by this step
        start = time.perf_counter()
        handle = self.runner.launch(batch)
        self.stats.decode_forward_s += time.perf_counter() - start
        self.stats.decode_steps += 1
        self.new_token_ratio = max(self.new_token_ratio - self.ratio_decay, self.min_new_token_ratio)
        return InflightDecode(
            reqs, handle, [(reqs[i], "output") for i in lp], {id(r): i for i, r in enumerate(reqs)}
        )

    def _complete_decode(self, step: InflightDecode) -> list[Req]:
        """Process a decode step's tokens. Requests that finished while it was in flight
        (overlap fed them once more) drop their token: their K/V already went to the tree."""
        result = self._wait(step.handle)
        self._store_logprobs(result, step.logprob_owners)
        touched = []
        for req, token in zip(step.reqs, result.next_token_ids):
            if req.finished:
                continue
            self._append_token(req, token)
            touched.append(req)
            if req.finished:
                self.running.remove(req)
                self._cache_req(req, finished=True)
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

    # ------------------------------------------------------------------ jump-forward
    def _drafts(self, reqs: list[Req]) -> list[list[int]] | None:
        """Per request, the tokens its grammar forces next (jump-forward), or None when no
        request has any or there is no room for them."""
        if self.cfg.disable_jump_forward or not any(r.grammar is not None for r in reqs):
            return None
        drafts = []
        for req in reqs:
            draft: list[int] = []
            if req.grammar is not None:
                room = (
                    min(
                        req.sampling_params.max_new_tokens - len(req.output_ids),
                        self.runner.context_len - len(req.fill_ids),
                    )
                    - 1
                )
                draft = req.grammar.draft()[: max(min(room, req.draft_budget), 0)]
            drafts.append(draft)
        extra = sum(len(d) for d in drafts)
        if extra == 0:
            return None
        if self.kv_pool.available + self.tree.evictable_size < len(reqs) + extra:
            return None  # decode one token each this step; drafting can wait for memory
        return drafts

    def _run_decode_with_drafts(self, reqs: list[Req], drafts: list[list[int]]) -> list[Req]:
        """One decode step in which a request whose grammar forces text also feeds the
        drafted tokens of that text. Each fed token is its own decode row (same request row,
        its own position, attending to everything before it), so the step stays a batched
        decode. Every row samples as if the earlier drafted tokens were already output (same
        mask, seed and step as decoding one at a time), and a drafted token is kept only
        while it equals the sample of the row before it; the first that differs is replaced
        by that sample. Outputs are therefore identical with jump-forward on or off, and
        each kept draft token saves a decode step."""
        fed = [[req.fill_ids[-1]] + draft for req, draft in zip(reqs, drafts)]
        slots = self._alloc_slots(sum(len(f) for f in fed))
        assert slots is not None, "room for the drafts was checked"
        rows: list[Req] = []
        views: list[tuple[list[int], Grammar | None]] = []
        input_ids, positions = [], []
        start = 0
        for req, draft, tokens in zip(reqs, drafts, fed):
            n = len(tokens)
            self._row(req)[req.kv_len : req.kv_len + n] = slots[start : start + n].to(torch.int32)
            start += n
            state = req.grammar.state if req.grammar is not None else None
            for j in range(n):
                rows.append(req)
                views.append(
                    (req.output_ids + draft[:j], req.grammar.at(state) if req.grammar is not None else None)
                )
                if req.grammar is not None and j < len(draft):
                    state = req.grammar.compiled.next_state(state, draft[j])
            input_ids += tokens
            positions += range(req.kv_len, req.kv_len + n)
        lp = [i for i, r in enumerate(rows) if r.return_logprob]
        everything = list(range(len(rows)))
        batch = self._make_batch(
            ForwardMode.DECODE,
            rows,
            input_ids,
            positions,
            slots,
            positions,
            [1] * len(rows),
            everything,
            everything,
            lp,
            [-1] * len(lp),
            [rows[i].top_logprobs_num for i in lp],
            views=views,
        )
        result = self._wait(self.runner.launch(batch))
        self.stats.decode_steps += 1
        self.new_token_ratio = max(self.new_token_ratio - self.ratio_decay, self.min_new_token_ratio)
        lp_of = dict(zip(lp, zip(result.token_logprobs, result.top_logprobs)))
        row = 0
        for req, draft, tokens in zip(reqs, drafts, fed):
            sampled = result.next_token_ids[row : row + len(tokens)]
            accepted = 0
            while accepted < len(draft) and sampled[accepted] == draft[accepted]:
                accepted += 1
            if draft:  # rejected rows are wasted work: draft longer only while drafts hold
                req.draft_budget = (
                    min(2 * req.draft_budget, MAX_DRAFT_TOKENS)
                    if accepted == len(draft)
                    else max(1, accepted)
                )
            appended = 0
            for k, token in enumerate(sampled[: accepted + 1]):  # the kept drafts, then a sample
                if req.return_logprob:
                    value, top = lp_of[row + k]
                    req.output_token_logprobs.append((value, token))
                    req.output_top_logprobs.append(top)
                req.kv_len += 1  # the token fed at this row now has its K/V
                self._append_token(req, token)
                appended += 1
                if k < accepted:
                    req.jump_forward_tokens += 1
                    self.stats.jump_forward_tokens += 1
                if req.finished:
                    break
            # K/V written for fed tokens that were not kept: give the slots back
            unused = self._row(req)[req.kv_len : req.kv_len + len(tokens) - appended].to(torch.int64)
            if unused.numel():
                self.kv_pool.free(unused)
            if req.finished:
                self.running.remove(req)
                self._cache_req(req, finished=True)
            row += len(tokens)
        return reqs

    def _ensure_decode_memory(self) -> None:
        need = len(self.running)
        if self.kv_pool.available < need:
            self.tree.evict(need - self.kv_pool.available)
        retracted = []
        while self.kv_pool.available < len(self.running):
            victims = ([self.chunked_req] if self.chunked_req else []) + sorted(
                self.running, key=lambda r: (len(r.output_ids), -r.prompt_len)
            )
            if len(victims) <= 1:
                raise RuntimeError("KV pool cannot hold a single request; max_total_tokens is too small")
            victim = victims[0]
            self._cache_req(victim, finished=True)
            if victim is self.chunked_req:
                self.chunked_req = None
            else:
                self.running.remove(victim)
            victim.retraction_count += 1
            victim.is_chunked = False
            retracted.append(victim)
            want = len(self.running) * RETRACT_RESERVE_STEPS
            if self.kv_pool.available < want:
                self.tree.evict(want - self.kv_pool.available)
        if retracted:
            self.stats.retractions += len(retracted)
            self.waiting[:0] = retracted
            decoded = sum(len(r.output_ids) for r in self.running)
            max_new = sum(r.sampling_params.max_new_tokens for r in self.running)
            old = self.new_token_ratio
            self.new_token_ratio = min(
                1.0, (decoded + RETRACT_RESERVE_STEPS * len(self.running)) / (max_new + 1)
            )
            logger.info(
                "KV cache pool is full: retracted %d requests; new_token_ratio %.3f -> %.3f",
                len(retracted),
                old,
                self.new_token_ratio,
            )

    # ------------------------------------------------------------------ helpers
    def _make_batch(
        self,
        mode,
        reqs,
        input_ids,
        positions,
        out_loc,
        prefix_lens,
        extend_lens,
        logit_tokens,
        sample_rows,
        lp_rows,
        lp_targets,
        lp_topk,
        views: list[tuple[list[int], Grammar | None]] | None = None,
        prev: tuple[torch.Tensor, list[int]] | None = None,
    ) -> ForwardBatch:
        """`views[i]`: the output ids and grammar state request row i samples with (default:
        the request's own; jump-forward rows sample as if their draft were already output).
        `prev`: (sampled ids of the step in flight, the row of each request in it): input ids
        come from there on the device (`input_ids` is None), one token per request."""
        dev = self.device
        picked = [i for i, row in enumerate(sample_rows) if row >= 0]
        sampling = None
        if picked:
            reqs_s = [reqs[i] for i in picked]
            outs = [views[i][0] if views else reqs[i].output_ids for i in picked]
            grammars = [views[i][1] if views else reqs[i].grammar for i in picked]
            stop_ids = [sorted(r.stop_token_ids) for r in reqs_s]
            sampling = SamplingBatch.build(
                [r.sampling_params for r in reqs_s],
                [r.seed for r in reqs_s],
                [r.origin_input_ids for r in reqs_s],
                outs,
                stop_ids,
                self.runner.vocab_size,
                dev,
                pending=[1] * len(reqs_s) if prev else None,
            )
            sampling.vocab_mask = build_vocab_mask(
                grammars,
                [
                    ids if len(out) >= r.sampling_params.min_new_tokens else []
                    for r, out, ids in zip(reqs_s, outs, stop_ids)
                ],
                self.runner.vocab_size,
                dev,
            )
        # every integer column in one host-to-device copy, then views of it
        t, b = len(positions), len(reqs)
        first = list(input_ids) if prev is None else prev[1]
        packed = to_device(
            first
            + list(positions)
            + [r.req_pool_idx for r in reqs]
            + list(prefix_lens)
            + list(extend_lens)
            + list(logit_tokens),
            torch.int64,
            dev,
        )
        input_t, pos_t, rows_t, prefix, extend, logits_t = packed.split([t, t, b, b, b, len(logit_tokens)])
        if prev is not None:
            input_t = prev[0][input_t]
        return ForwardBatch(
            mode=mode,
            input_ids=input_t,
            positions=pos_t,
            out_cache_loc=out_loc.to(dev, torch.int64),
            req_pool_indices=rows_t,
            seq_lens=prefix + extend,
            prefix_lens=prefix,
            extend_lens=extend,
            prefix_lens_cpu=list(prefix_lens),
            extend_lens_cpu=list(extend_lens),
            logits_indices=logits_t,
            sample_rows=sample_rows,
            sampling=sampling,
            logprob_rows=lp_rows,
            logprob_targets=lp_targets,
            logprob_top_k=lp_topk,
        )

    def _store_logprobs(self, result: ForwardResult, owners: list[tuple[Req, str]]) -> None:
        for (req, kind), lp, top in zip(owners, result.token_logprobs, result.top_logprobs):
            if req.finished:  # finished while an overlapped step that fed it was in flight
                continue
            if kind == "input":
                token = req.origin_input_ids[req.input_logprob_next + 1]
                req.input_token_logprobs.append((lp, token))
                req.input_top_logprobs.append(top if req.top_logprobs_num else None)
                req.input_logprob_next += 1
            else:
                req.output_token_logprobs.append((lp, None))  # token filled in by _append_token
                req.output_top_logprobs.append(top)

    def _append_token(self, req: Req, token: int) -> None:
        req.output_ids.append(token)
        self.stats.generated_tokens += 1
        if req.return_logprob and req.output_token_logprobs and req.output_token_logprobs[-1][1] is None:
            req.output_token_logprobs[-1] = (req.output_token_logprobs[-1][0], token)
        params = req.sampling_params
        n_out = len(req.output_ids)
        grammar = req.grammar
        if grammar is not None and not (token in req.stop_token_ids and grammar.is_final):
            if not grammar.advance(token):  # cannot happen under the mask: a bug, reported
                self._finish(req, {"type": "abort", "message": f"token {token} breaks the grammar"})
                return
            if grammar.is_complete:
                self._finish(req, {"type": "stop", "matched": None})
                return
        if token in req.stop_token_ids and n_out >= params.min_new_tokens:
            self._finish(req, {"type": "stop", "matched": token})
        elif params.stop and n_out >= params.min_new_tokens and self._hit_stop_str(req):
            self._finish(req, {"type": "stop", "matched": req.stop_str_hit})
        elif n_out >= params.max_new_tokens or req.seq_len >= self.runner.context_len:
            self._finish(req, {"type": "length", "length": n_out})

    def _hit_stop_str(self, req: Req) -> bool:
        """Does the decoded tail hold a stop string that ends in the text of token
        min_new_tokens or later? (Earlier occurrences were generated before stops counted.)"""
        stops = req.sampling_params.stop_strs
        ids = req.output_ids
        # a token is at least one byte, and a character at most four
        start = max(len(ids) - (4 * max(len(s) for s in stops) + 4), 0)
        tail = self.decode_tokens(ids[start:])
        first_stop_token = req.sampling_params.min_new_tokens - 1
        floor = len(self.decode_tokens(ids[start:first_stop_token])) if first_stop_token > start else 0
        for s in stops:
            if tail.find(s, max(0, floor - len(s) + 1)) >= 0:
                req.stop_str_hit = s
                return True
        return False
