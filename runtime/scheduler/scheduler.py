"""The scheduler: continuous batching over a radix-cached KV pool.

Each `step()` runs one batch: a prefill (extend) batch when waiting requests can be
admitted, else one decode step for every running request. Prefill admits requests as
extends over their cached prefix under token budgets, chunks long prompts (one chunked
request at a time), and inserts freshly computed KV into the radix tree so concurrent
requests share it at once. Nothing is ever dropped.

Retraction: when decode runs out of KV slots, the running request with the fewest output
tokens (ties: the longest prompt) is retracted: its KV goes to the tree, where it stays
reusable until evicted, and it is re-queued at the front, keeping its outputs (so when it
returns it is not chosen before newer arrivals). Every decode step adds a token to each
running request and a retraction removes none, so the total only grows and every request
finishes. Admission and its bounded-wait rule: prefill_admission.py.

Overlap (on by default on CUDA; decode_overlap.py): in steady decode the device runs step N+1
while the host processes step N's tokens, with outputs identical to overlap off.

The scheduler knows nothing of attention math or sockets: it builds a `ForwardBatch`
(batch_builder.py), gets a `ForwardResult` back, and reports the requests that progressed.
Its pieces: this loop (decode, retraction, aborts), decode_overlap.py, prefill_admission.py,
jump_forward.py, cache_bridge.py (radix tree + KV pools), output_rules.py (stop rules) and
grammar_queue.py (requests waiting for a grammar to compile).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from radixlm.runtime.config import EngineConfig
from radixlm.runtime.constrained.grammar_cache import GrammarCache
from radixlm.runtime.model_executor.model_runner import ModelRunner
from radixlm.runtime.radix.radix_cache import RadixCache
from radixlm.runtime.scheduler.cache_bridge import KVCacheBridge
from radixlm.runtime.scheduler.decode_overlap import InflightDecode, OverlappedDecode
from radixlm.runtime.scheduler.draft_proposers import DraftProposer
from radixlm.runtime.scheduler.grammar_queue import GrammarQueue
from radixlm.runtime.scheduler.jump_forward import JumpForward
from radixlm.runtime.scheduler.output_rules import OutputRules
from radixlm.runtime.scheduler.policy import SchedulePolicy
from radixlm.runtime.scheduler.prefill_admission import PrefillAdmission
from radixlm.runtime.scheduler.request import Req

logger = logging.getLogger(__name__)

CPU_DEFAULT_CHUNK = 2048
GPU_DEFAULT_CHUNK = 8192
RETRACT_RESERVE_STEPS = 20  # decode steps of headroom to free per request left after a retraction


@dataclass
class SchedulerStats:
    prompt_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens served from the cache, of which
    host_cached_tokens: int = 0  # ... came back from the host tier
    generated_tokens: int = 0
    prefill_batches: int = 0
    decode_steps: int = 0
    retractions: int = 0
    finished_requests: int = 0
    aborted_requests: int = 0  # of the finished: aborted (by a client, a grammar failure, shutdown)
    jump_forward_tokens: int = 0
    spec_proposed_tokens: int = 0  # speculative drafts fed, and those that held
    spec_accepted_tokens: int = 0
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


class Scheduler(PrefillAdmission, JumpForward, OverlappedDecode):
    def __init__(
        self,
        cfg: EngineConfig,
        runner: ModelRunner,
        decode_tokens: Callable[[list[int]], str],
        grammars: GrammarCache | None = None,
    ) -> None:
        self.cfg = cfg
        self.runner = runner
        self.device = runner.device
        self.cache = KVCacheBridge(
            runner.kv_pool,
            runner.req_pool,
            runner.device,
            cfg.disable_radix_cache,
            host=runner.kv_transfer,
            write_through=cfg.hicache_write_policy == "write_through",
        )
        self.grammar_queue = GrammarQueue(grammars)
        self.rules = OutputRules(decode_tokens, runner.context_len)
        self.policy = SchedulePolicy(cfg.schedule_policy, self.cache.tree)
        self.proposer = (
            DraftProposer(cfg.speculative_algorithm, self.cache.tree) if cfg.speculative_algorithm else None
        )
        chunk = cfg.chunked_prefill_size or (
            GPU_DEFAULT_CHUNK if self.device.type == "cuda" else CPU_DEFAULT_CHUNK
        )
        self.chunk_size = chunk if chunk > 0 else 1 << 62
        self.waiting: list[Req] = []
        self.running: list[Req] = []
        self.chunked_req: Req | None = None
        # the share of their remaining max_new_tokens that running requests are expected to
        # decode, reserved at admission: decays while decode goes well, rises on retraction
        self.init_new_token_ratio = min(0.7 * cfg.schedule_conservativeness, 1.0)
        self.min_new_token_ratio = self.init_new_token_ratio * 0.14
        self.new_token_ratio = self.init_new_token_ratio
        self.ratio_decay = (self.init_new_token_ratio - self.min_new_token_ratio) / 600
        self.stats = SchedulerStats()
        mode = cfg.overlap_schedule
        self.overlap = mode == "on" or (mode == "auto" and self.device.type == "cuda")
        self.inflight: InflightDecode | None = None
        self._last_decode_end = None  # end event of the previous decode step, if nothing ran since

    @property
    def tree(self) -> RadixCache:
        return self.cache.tree

    @property
    def grammars(self) -> GrammarCache | None:
        return self.grammar_queue.grammars

    # ------------------------------------------------------------------ public
    def add_request(self, req: Req) -> None:
        if self.grammar_queue.needs_grammar(req):
            self.grammar_queue.add(req)  # queued for admission once its grammar is compiled
        else:
            self.waiting.append(req)

    def ready_grammar_rids(self) -> list[str]:
        return self.grammar_queue.ready_rids()

    def abort_request(self, rid: str, message: str = "aborted by user") -> bool:
        found = False
        for req in self._live_reqs() + self.waiting + self.grammar_queue.requests():
            if req.rid == rid and not req.finished:
                req.to_abort = message
                found = True
        return found

    @property
    def has_work(self) -> bool:
        return bool(
            self.waiting
            or self.running
            or self.chunked_req
            or self.grammar_queue
            or self.inflight
            or self.cache.loads
        )

    def step(self, grammar_ready: set[str] | None = None, loads_ready: set[int] | None = None) -> list[Req]:
        """Run one batch (with overlap: queue one and process the one before). Returns the
        requests that gained output tokens or finished. `grammar_ready`: see GrammarQueue.poll;
        `loads_ready`: see KVCacheBridge.poll_loads."""
        if self.cache.loads:
            self.cache.poll_loads(loads_ready)
        touched = self._poll_grammars(grammar_ready) if self.grammar_queue else []
        if self.inflight is not None and (
            self.waiting or self.chunked_req or any(r.to_abort for r in self.running)
        ):
            touched += self._drain()  # admissions and aborts work on settled requests
        touched += self._apply_aborts()
        reqs = self._schedule_prefill() if self.inflight is None else []
        if reqs:
            touched += self._run_extend(reqs)
        elif self.running or self.inflight is not None:
            speculate = self._speculating()
            if self.overlap and not speculate:
                touched += self._overlapped_decode()
            else:  # drafts need the settled tokens: no step may be in flight
                touched += self._drain()
                touched += self._run_decode(speculate) if self.running else []
        return touched

    def flush_cache(self) -> bool:
        """Drop every cached prefix, and the compiled grammars with them (SGLang does the same;
        a later request recompiles). Refused (False) while requests are queued or running."""
        if self.has_work:
            return False
        if self.grammars is not None:
            self.grammars.clear()
        self.cache.reset()
        return True

    def check_accounting(self, check_tree: bool = True) -> None:
        """free + evictable + locked + in use == total (cache_bridge.py), and (check_tree) the
        tree's own invariants."""
        self.cache.check(self._live_reqs(), check_tree)

    def usage(self) -> dict:
        return {
            **self.cache.usage(self._live_reqs()),
            "running": len(self.running) + (1 if self.chunked_req else 0),
            "waiting": len(self.waiting),
        }

    # ------------------------------------------------------------------ request life
    def _live_reqs(self) -> list[Req]:
        return self.running + ([self.chunked_req] if self.chunked_req else [])

    def _poll_grammars(self, ready: set[str] | None) -> list[Req]:
        admitted, failed = self.grammar_queue.poll(ready)
        self.waiting += admitted
        for req, reason in failed:
            self._finish(req, reason)
        return [req for req, _ in failed]

    def _finish(self, req: Req, reason: dict) -> None:
        req.finished_reason = reason
        self.stats.finished_requests += 1
        self.stats.aborted_requests += reason.get("type") == "abort"

    def _append_token(self, req: Req, token: int) -> None:
        self.stats.generated_tokens += 1
        reason = self.rules.append_token(req, token)
        if reason is not None:
            self._finish(req, reason)

    def _drop_live(self, req: Req) -> None:
        """Take a live request off the running list (or the chunked slot), its KV handed to
        the tree and its row freed."""
        self.cache.cache_req(req, finished=True)
        if req is self.chunked_req:
            self.chunked_req = None
        else:
            self.running.remove(req)

    def _apply_aborts(self) -> list[Req]:
        done = []
        for req in [r for r in self.waiting if r.to_abort]:
            self.waiting.remove(req)
            if req.host_load is not None:  # freed once its copy has landed
                self.cache.release_load(req)
            self._finish(req, {"type": "abort", "message": req.to_abort})
            done.append(req)
        for req in [r for r in self._live_reqs() if r.to_abort]:
            self._drop_live(req)
            self._finish(req, {"type": "abort", "message": req.to_abort})
            done.append(req)
        return done

    # ------------------------------------------------------------------ decode
    def _run_decode(self, speculate: bool = False) -> list[Req]:
        """One decode step for every running request, start to finish (with `speculate`,
        the proposer's drafts where the batch is small enough)."""
        self._ensure_decode_memory()
        reqs = list(self.running)
        speculate = speculate and len(reqs) <= self.cfg.speculative_max_batch
        drafts = self._drafts(reqs, speculate)
        if drafts is not None:
            return self._run_decode_with_drafts(reqs, drafts)
        return self._complete_decode(self._launch_decode(reqs, None))

    def _decay_token_ratio(self) -> None:
        self.new_token_ratio = max(self.new_token_ratio - self.ratio_decay, self.min_new_token_ratio)

    # ------------------------------------------------------------------ retraction
    def _ensure_decode_memory(self) -> None:
        """Make one KV slot free per running request, retracting requests if eviction alone
        cannot (see the module docstring for whom)."""
        retracted = []
        while not self.cache.make_room(len(self.running)):
            victims = ([self.chunked_req] if self.chunked_req else []) + sorted(
                self.running, key=lambda r: (len(r.output_ids), -r.prompt_len)
            )
            if len(victims) <= 1:
                if self.cache.give_up_loads(self.waiting):  # loaded prefixes of waiting requests
                    continue
                raise RuntimeError("KV pool cannot hold a single request; max_total_tokens is too small")
            victim = victims[0]
            self._drop_live(victim)
            victim.retraction_count += 1
            victim.is_chunked = False
            retracted.append(victim)
            self.cache.make_room(len(self.running) * RETRACT_RESERVE_STEPS)
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
