"""Scheduling policy: the order in which waiting requests are considered, and the
token budgets that decide how many of them join one prefill batch."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from radixlm.runtime.radix.radix_cache import RadixCache
from radixlm.runtime.radix.tree_node import MatchResult
from radixlm.runtime.scheduler.request import Req

# LPM matches every waiting request against the tree each round; past this queue length
# that costs more than it saves, so the round falls back to FCFS (as SGLang does).
LPM_MAX_QUEUE = 128
# A request whose uncached prefix is shared (>= this many tokens) with a request already
# admitted this round waits one round: it will then hit the cache instead of recomputing.
IN_BATCH_PREFIX_THRESHOLD = 32
# Bounded wait under LPM: a request passed over in this many admission rounds (rounds that
# admitted others while it waited) goes ahead of every request that has not waited as long,
# so a stream of cache-hitting arrivals cannot keep a cold request out forever.
MAX_PASSED_OVER = 16
# Decode-token reserve per request is estimated from at most this many future tokens.
CLIP_MAX_NEW_TOKENS = 4096


def match_limit(req: Req) -> int:
    """How much of a request's tokens may come from the cache: never all of them (the last
    token must be computed to produce logits), and not the prompt positions whose
    logprobs the request still needs."""
    limit = len(req.fill_ids) - 1
    if req.needs_input_logprobs:
        limit = min(limit, req.input_logprob_next)
    return max(limit, 0)


def _hit_len(match: MatchResult) -> int:
    """Tokens of a match that need no compute: on the device, or loadable from the host."""
    return len(match.kv_indices) + match.host_len


class SchedulePolicy:
    def __init__(self, policy: str, tree: RadixCache) -> None:
        self.policy = "fcfs" if tree.disable else policy
        self.tree = tree

    def order(self, waiting: list[Req]) -> list[Req]:
        """Waiting requests in the order admission should try them."""
        if self.policy == "fcfs" or len(waiting) > LPM_MAX_QUEUE:
            return list(waiting)
        hits = {id(r): _hit_len(self.tree.match_prefix(r.fill_ids[: match_limit(r)])) for r in waiting}
        # retracted requests keep their place at the front, then requests that have waited
        # long enough in arrival order, then the rest by cached prefix; the sort is stable
        return sorted(
            waiting,
            key=lambda r: (
                r.retraction_count == 0,
                r.passed_over < MAX_PASSED_OVER,
                -hits[id(r)] if r.passed_over < MAX_PASSED_OVER else 0,
            ),
        )


class InBatchPrefixFilter:
    """Defers requests that share a long uncached prefix with one admitted this round."""

    def __init__(self, enabled: bool) -> None:
        self.sim = RadixCache(lambda slots: None) if enabled else None

    def should_defer(self, req: Req, cached_len: int) -> bool:
        if self.sim is None:
            return False
        tokens = req.fill_ids
        shared = len(self.sim.match_prefix(tokens).kv_indices)
        if shared - cached_len >= IN_BATCH_PREFIX_THRESHOLD:
            return True
        self.sim.insert(tokens, torch.zeros(len(tokens), dtype=torch.int64))
        return False


@dataclass
class PrefillBudget:
    """Token budgets of one prefill round."""

    rem_input_tokens: int  # max_prefill_tokens: new tokens per batch (the first request may exceed it)
    rem_chunk_tokens: int  # chunked_prefill_size: tokens of one batch before chunking
    new_token_ratio: float  # fraction of max_new_tokens expected to be decoded

    def decode_reserve(self, req: Req) -> int:
        left = max(req.sampling_params.max_new_tokens - len(req.output_ids), 0)
        return int(min(left, CLIP_MAX_NEW_TOKENS) * self.new_token_ratio)

    def take(self, n: int) -> None:
        self.rem_input_tokens -= n
        self.rem_chunk_tokens -= n
