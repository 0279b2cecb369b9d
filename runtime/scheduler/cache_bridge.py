"""The scheduler's side of KV memory: the radix tree over the KV pools and the request rows.

Every device KV slot is in exactly one of four states, and the scheduler checks after each
request that they add up (`check`):

    free (in the pool) + evictable (tree, unlocked) + locked (tree, under a running request
        or a load) + in use (computed by a running request, not yet handed to the tree) == total

and, with the host tier, every host slot in one of three: free + evictable + locked == total.

A running request locks the deepest tree node of the prefix it reuses (`last_node`), so that
prefix cannot be evicted under it; `cache_req` hands its newly computed KV to the tree and
moves the lock, or (finished) drops it and frees the request's row.

Loads (the host tier): a waiting request whose match continues into host-only nodes gets a
`HostLoad`: device slots for those nodes, locked, and a copy from the host pool in flight
(`start_load`). `poll_loads` sees copies land; the request is admitted like any other once
its load is done, and then releases the load's lock (`release_load`), having taken its own.
A load whose request was aborted keeps its lock until the copy has landed, so no slot is
reused while the copy still writes it.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

import torch

from radixlm.runtime.radix.kv_transfer import KVTransfer, LoadTicket
from radixlm.runtime.radix.memory_pool import KVPool, ReqToTokenPool
from radixlm.runtime.radix.radix_cache import RadixCache
from radixlm.runtime.radix.tree_node import MatchResult, TreeNode
from radixlm.runtime.scheduler.request import Req


@dataclass(eq=False)
class HostLoad:
    """Host-only prefix nodes coming back to the device for a waiting request."""

    load_id: int  # the same on every tensor-parallel rank (they start loads in the same order)
    node: TreeNode  # the deepest loaded node, locked while the load is held
    num_tokens: int
    need: int = 0  # device slots its request still needs once loaded (the rest of its extend, decode)
    ticket: LoadTicket | None = None
    done: bool = False
    released: bool = False  # its request no longer holds it: unlock once done


@dataclass
class HostCacheStats:
    loads: int = 0
    loaded_tokens: int = 0
    load_latency_s: float = 0.0  # summed: from the load's start to the scheduler seeing it land
    max_load_latency_s: float = 0.0
    # the latest loads' (a bounded window: server_info's median)
    latencies: deque[float] = field(default_factory=lambda: deque(maxlen=1024))


class KVCacheBridge:
    def __init__(
        self,
        kv_pool: KVPool,
        req_pool: ReqToTokenPool,
        device: torch.device,
        disable_radix: bool,
        host: KVTransfer | None = None,
        write_through: bool = False,
    ) -> None:
        self.kv_pool = kv_pool
        self.req_pool = req_pool
        self.tree = RadixCache(kv_pool.free, device=device, disable=disable_radix, host=host)
        self.host = self.tree.host  # None without a host tier (or with the radix cache off)
        self.write_through = write_through and self.host is not None
        self.loads: dict[int, HostLoad] = {}  # in flight, by id
        self._load_ids = 0
        self.host_stats = HostCacheStats()

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
        self.tree.record_hit(match.last_node)
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

    # ------------------------------------------------------------------ loads from the host tier
    def start_load(self, match: MatchResult) -> HostLoad | None:
        """Bring a match's host-only nodes back to the device: lock them, give them device
        slots (evicting if needed) and start the copy. None if the device has no room."""
        node = match.host_nodes[-1]
        self.tree.inc_lock_ref(node)  # also protects the device prefix above it from the eviction below
        slots = self.alloc_slots(match.host_len)
        if slots is None:
            self.tree.dec_lock_ref(node)
            return None
        load = HostLoad(self._load_ids, node, match.host_len)
        self._load_ids += 1
        host_slots = self.tree.begin_load(match.host_nodes, slots, load)
        load.ticket = self.host.load(host_slots, slots)
        self.loads[load.load_id] = load
        return load

    def ready_load_ids(self) -> list[int]:
        return [i for i, load in self.loads.items() if load.ticket.ready()]

    def poll_loads(self, ready: set[int] | None = None) -> None:
        """Mark the loads whose copy has landed as done. `ready`: with tensor parallelism,
        the ids the leader saw land; this rank waits for those copies (and only those)."""
        for load in list(self.loads.values()):
            if ready is None and load.ticket.ready():
                self._finish_load(load)
            elif ready is not None and load.load_id in ready:
                load.ticket.wait()
                self._finish_load(load)

    def wait_load(self, load: HostLoad) -> None:
        if not load.done:
            load.ticket.wait()
            self._finish_load(load)

    def _finish_load(self, load: HostLoad) -> None:
        load.done = True
        del self.loads[load.load_id]
        st = self.host_stats
        latency = time.perf_counter() - load.ticket.started
        st.loads += 1
        st.loaded_tokens += load.num_tokens
        st.load_latency_s += latency
        st.max_load_latency_s = max(st.max_load_latency_s, latency)
        st.latencies.append(latency)
        if load.released:
            self.tree.dec_lock_ref(load.node)

    def release_load(self, req: Req) -> None:
        """The request that asked for its load is admitted (with its own lock), gone, or
        giving the prefix up: drop the load's lock now, or once its copy has landed."""
        load, req.host_load = req.host_load, None
        assert not load.released, "a host load released twice"
        load.released = True
        if load.done:
            self.tree.dec_lock_ref(load.node)

    def give_up_loads(self, waiting: list[Req]) -> bool:
        """Unlock the prefixes loaded for waiting requests (waiting for copies still in
        flight), so a lone running request can use their memory; those requests will match
        again when admitted. False if no request held a load."""
        holders = [r for r in waiting if r.host_load is not None]
        for req in holders:
            self.wait_load(req.host_load)
            self.release_load(req)
        return bool(holders)

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
            if self.write_through and req.kv_len:
                self.tree.backup_path(self.tree.match_prefix(tokens).last_node)
            if req.last_node is not None:
                self.tree.dec_lock_ref(req.last_node)
            self.req_pool.free(req.req_pool_idx)
            req.req_pool_idx, req.last_node = None, None
            req.kv_len = req.cache_protected_len = 0
            return
        if self.tree.disable:
            return
        match = self.tree.match_prefix(tokens)
        while len(match.kv_indices) < req.kv_len and match.blocked_by is not None:
            # rare: this request's own tokens ran into a prefix being loaded for another; its
            # row must point at slots that hold their KV, so wait for that copy
            self.wait_load(match.blocked_by)
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
        if self.host is not None:
            pool, tree = self.host.host_pool, self.tree
            if pool.available + tree.host_evictable_size + tree.host_protected_size != pool.num_slots:
                raise AssertionError(
                    f"host KV accounting broken: free {pool.available} + evictable "
                    f"{tree.host_evictable_size} + locked {tree.host_protected_size} "
                    f"!= total {pool.num_slots}"
                )
        if check_tree:
            self.tree.self_check()

    def usage(self, live: list[Req]) -> dict[str, int]:
        usage = {
            "total_tokens": self.kv_pool.num_slots,
            "free_tokens": self.kv_pool.available,
            "evictable_tokens": self.tree.evictable_size,
            "locked_tokens": self.tree.protected_size,
            "in_use_tokens": sum(r.owned_kv_len for r in live),
        }
        if self.host is not None:
            usage.update(
                host_total_tokens=self.host.host_pool.num_slots,
                host_free_tokens=self.host.host_pool.available,
                host_evictable_tokens=self.tree.host_evictable_size,
                host_locked_tokens=self.tree.host_protected_size,
                host_loads_in_flight=len(self.loads),
            )
        return usage

    def reset(self) -> None:
        """Drop every cached prefix (only with no request live and no load in flight)."""
        assert not self.loads, "reset with host loads in flight"
        self.tree.reset()
        self.kv_pool.reset()
        self.req_pool.reset()
        if self.host is not None:
            self.host.host_pool.reset()
