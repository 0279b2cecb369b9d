"""The scheduler's side of KV memory: the radix tree over the KV pool and the request rows.

Every KV slot is in exactly one of four states, and the scheduler checks after each request
that they add up (`check`):

    free (in the pool) + evictable (tree, unlocked) + locked (tree, under a running request)
        + in use (computed by a running request, not yet handed to the tree) == total

A running request locks the deepest tree node of the prefix it reuses (`last_node`), so that
prefix cannot be evicted under it; `cache_req` hands its newly computed KV to the tree and
moves the lock, or (finished) drops it and frees the request's row.
"""

from __future__ import annotations

import torch

from radixlm.runtime.radix.memory_pool import KVPool, ReqToTokenPool
from radixlm.runtime.radix.radix_cache import MatchResult, RadixCache
from radixlm.runtime.scheduler.request import Req


class KVCacheBridge:
    def __init__(
        self, kv_pool: KVPool, req_pool: ReqToTokenPool, device: torch.device, disable_radix: bool
    ) -> None:
        self.kv_pool = kv_pool
        self.req_pool = req_pool
        self.tree = RadixCache(kv_pool.free, device=device, disable=disable_radix)

    # ------------------------------------------------------------------ slots
    def make_room(self, n: int) -> bool:
        """Evict unlocked cached prefixes until n slots are free; False if even that is not enough."""
        if self.kv_pool.available < n:
            self.tree.evict(n - self.kv_pool.available)
        return self.kv_pool.available >= n

    def alloc_slots(self, n: int) -> torch.Tensor | None:
        self.make_room(n)
        return self.kv_pool.alloc(n)

    @property
    def reclaimable(self) -> int:
        """Slots free now or after evicting every unlocked prefix."""
        return self.kv_pool.available + self.tree.evictable_size

    def row(self, req: Req) -> torch.Tensor:
        """The request's row of the request-to-token table: KV slot of each of its tokens."""
        return self.req_pool.req_to_token[req.req_pool_idx]

    # ------------------------------------------------------------------ admission
    def match(self, tokens: list[int]) -> MatchResult:
        """The longest cached prefix of tokens (its KV slots and deepest node)."""
        return self.tree.match_prefix(tokens)

    def lock(self, match: MatchResult) -> None:
        """Protect a matched prefix from eviction until `unlock`, or until the request that
        takes it (assign_row) is cached."""
        self.tree.inc_lock_ref(match.last_node)

    def unlock(self, match: MatchResult) -> None:
        self.tree.dec_lock_ref(match.last_node)

    def assign_row(self, req: Req, match: MatchResult) -> None:
        """Give an admitted request its row, pointing at the cached prefix it reuses (whose
        lock it now holds)."""
        cached_len = len(match.kv_indices)
        row = self.req_pool.alloc()
        req.req_pool_idx, req.last_node = row, match.last_node
        req.kv_len = req.cache_protected_len = cached_len
        self.req_pool.req_to_token[row, :cached_len] = match.kv_indices.to(torch.int32)

    def extend_into(self, req: Req, n: int) -> bool:
        """Allocate n new KV slots for the request's next extend (its next n prompt tokens)."""
        slots = self.alloc_slots(n)
        if slots is None:
            return False
        self.row(req)[req.kv_len : req.kv_len + n] = slots.to(torch.int32)
        req.extend_target = req.kv_len + n
        req.is_chunked = req.extend_target < len(req.fill_ids)
        return True

    # ------------------------------------------------------------------ handing KV to the tree
    def cache_req(self, req: Req, finished: bool) -> None:
        """Hand the request's computed KV to the tree. Finished (or retracted/aborted): free
        the row and drop the lock. Unfinished: re-point the row at the tree's slots and move
        the lock to the new deepest node, so the prefix stays protected."""
        assert req.kv_len <= req.seq_len, "a request's token in flight must be processed before caching it"
        row = self.row(req)
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

    def release_unkept(self, req: Req, count: int) -> None:
        """Free the `count` slots just past the request's kv_len: K/V written for tokens it
        fed but did not keep (rejected jump-forward drafts)."""
        unused = self.row(req)[req.kv_len : req.kv_len + count].to(torch.int64)
        if unused.numel():
            self.kv_pool.free(unused)

    # ------------------------------------------------------------------ accounting
    def check(self, live: list[Req], check_tree: bool = True) -> None:
        """The four states add up to the pool, every request row is free or live, and
        (check_tree) the tree's own invariants hold (walks every node: ~0.1 s at 20k nodes)."""
        in_use = sum(r.owned_kv_len for r in live)
        total = self.kv_pool.available + self.tree.evictable_size + self.tree.protected_size + in_use
        if total != self.kv_pool.num_slots:
            raise AssertionError(
                f"KV accounting broken: free {self.kv_pool.available} + evictable "
                f"{self.tree.evictable_size} + locked {self.tree.protected_size} + in use {in_use} "
                f"!= total {self.kv_pool.num_slots}"
            )
        if self.req_pool.available + len(live) != self.req_pool.num_rows:
            raise AssertionError("request rows leaked")
        if check_tree:
            self.tree.self_check()

    def usage(self, live: list[Req]) -> dict[str, int]:
        return {
            "total_tokens": self.kv_pool.num_slots,
            "free_tokens": self.kv_pool.available,
            "evictable_tokens": self.tree.evictable_size,
            "locked_tokens": self.tree.protected_size,
            "in_use_tokens": sum(r.owned_kv_len for r in live),
        }

    def reset(self) -> None:
        """Drop every cached prefix (only with no request live)."""
        self.tree.reset()
        self.kv_pool.reset()
        self.req_pool.reset()
