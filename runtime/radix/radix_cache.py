"""The radix tree that maps token-id prefixes to the KV slots holding their keys and values,
on the device and (with the host tier) in host memory.

The tree knows nothing of requests or of the device allocator: it stores runs of token ids
with one KV slot per token, hands device slots back through `free_slots` when it evicts,
and counts how many of its tokens are evictable (no lock) and protected (locked) per tier.

Residency. Each node's KV lives on the device (`value`: device slots), on the host
(`host_value`: host slots), or both. Without a host tier every node is on the device, and
eviction removes it. With one (`host`, a KVTransfer over the host pool), device eviction
demotes a node: its KV is copied to the host pool first unless a copy is there already
(write-back), and the node stays in the tree, host-only. A later match that runs into
host-only nodes reports them (`MatchResult.host_nodes`) so the caller can load them back
(`begin_load`); while that copy is in flight the nodes carry its `load` and count as not
yet on the device. The host pool is evicted LRU in turn: a host-only leaf is removed, a
node on both tiers just drops its host copy.

Invariants (checked by `self_check`, radix_check.py):
  * every non-root node has a non-empty key, lives on at least one tier, and each of its
    slot tensors has `len(key)` entries;
  * device residency is prefix-closed: a node on the device has its parent on the device,
    so a match's device part is a prefix and everything after it is host-only or loading;
  * a loading node is on both tiers and locked (so neither copy can be evicted under it);
  * a child is stored under the first token of its key;
  * `node.lock_ref >= sum(child.lock_ref)` (a lock on a node is held by all its ancestors);
  * `node.hits >= child.hits` for every child (a request reusing a node reused its ancestors);
  * per tier, evictable + protected == tokens stored there, split by `lock_ref == 0`;
  * no device slot and no host slot appears twice.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch

from radixlm.runtime.radix.radix_check import check_tree
from radixlm.runtime.radix.tree_node import MatchResult, TreeNode

if TYPE_CHECKING:
    from radixlm.runtime.radix.kv_transfer import KVTransfer


def _common_prefix_len(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def _cat(parts: list[torch.Tensor], like: torch.Tensor) -> torch.Tensor:
    return torch.cat(parts) if parts else like[:0]


class RadixCache:
    def __init__(
        self,
        free_slots: Callable[[torch.Tensor], None],
        device: torch.device | str = "cpu",
        disable: bool = False,
        host: KVTransfer | None = None,
    ) -> None:
        self.free_slots = free_slots
        self.device = torch.device(device)
        self.disable = disable
        self.host = None if disable else host
        self._last_tick = 0.0
        self.reset()

    def reset(self) -> None:
        """Forget everything without freeing slots (the caller resets the allocators)."""
        self.root = TreeNode(key=[], value=torch.empty(0, dtype=torch.int64, device=self.device))
        self.root.lock_ref = 1  # the root is never evicted
        self.evictable_size = 0
        self.protected_size = 0
        self.host_evictable_size = 0
        self.host_protected_size = 0

    @property
    def total_size(self) -> int:
        return self.evictable_size + self.protected_size

    @property
    def host_total_size(self) -> int:
        return self.host_evictable_size + self.host_protected_size

    # ---------------------------------------------------------------- residency bookkeeping
    def _place(self, node: TreeNode, slots: torch.Tensor | None, *, host: bool) -> None:
        """Put a node on a tier (its slots there) or take it off that tier (None), keeping
        the tier's evictable or protected count."""
        had = (node.host_value if host else node.value) is not None
        delta = ((slots is not None) - had) * len(node.key)
        counter = ("host_" if host else "") + ("protected_size" if node.lock_ref else "evictable_size")
        setattr(self, counter, getattr(self, counter) + delta)
        if host:
            node.host_value = slots
        else:
            node.value = slots

    def _tick(self) -> float:
        """Now, strictly after every earlier tick (LRU order has no ties)."""
        self._last_tick = max(time.monotonic(), self._last_tick + 1e-9)
        return self._last_tick

    # ---------------------------------------------------------------- lookup
    def match_prefix(self, key: Sequence[int]) -> MatchResult:
        """Longest cached prefix of `key`: its device part (slots, deepest node) and the
        host-only nodes that continue it. Splits a node where the match ends inside it, so
        the nodes returned cover exactly the matched tokens."""
        if self.disable:
            return MatchResult(self.root.value, self.root)
        now = self._tick()
        self.root.last_access = now
        node = last = self.root
        values: list[torch.Tensor] = []
        result = MatchResult(self.root.value, self.root)
        pos = 0
        while pos < len(key):
            child = node.children.get(key[pos])
            if child is None:
                break
            n = _common_prefix_len(child.key, key[pos:])
            if n < len(child.key):
                child = self._split(child, n)
            child.last_access = now
            if child.loading:
                result.blocked_by = child.load
                break
            if child.value is None:
                result.host_nodes.append(child)
            else:  # prefix-closed: no device node after a host-only one
                values.append(child.value)
                last = child
            node = child
            pos += n
        result.kv_indices = _cat(values, self.root.value)
        result.last_node = last
        return result

    # ---------------------------------------------------------------- insert
    def insert(self, key: Sequence[int], value: torch.Tensor) -> int:
        """Store `key -> value`. Returns how many leading tokens the device already held; the
        caller owns (and must free) its own slots `value[:returned]`, which the tree did not
        take. Host-only nodes on the way take the caller's slots (they are back on the device)."""
        if self.disable:
            return 0
        assert len(key) == len(value), "one KV slot per token"
        node, pos, cached = self.root, 0, 0
        now = self._tick()
        key = list(key)
        while pos < len(key):
            child = node.children.get(key[pos])
            if child is None:
                leaf = TreeNode(node, key[pos:])
                leaf.last_access = now
                node.children[key[pos]] = leaf
                self._place(leaf, value[pos:].clone(), host=False)
                return cached
            n = _common_prefix_len(child.key, key[pos:])
            if n < len(child.key):
                child = self._split(child, n)
            child.last_access = now
            if child.value is None:
                self._place(child, value[pos : pos + n].clone(), host=False)
            elif cached == pos:  # on the device (or being loaded there) already
                cached = pos + n
            node = child
            pos += n
        return cached

    def _split(self, child: TreeNode, n: int) -> TreeNode:
        """Cut `child` after n tokens; the new upper node inherits its lock count and load."""
        assert 0 < n < len(child.key)
        upper = TreeNode(child.parent, child.key[:n], None if child.value is None else child.value[:n])
        if child.host_value is not None:
            upper.host_value = child.host_value[:n]
            child.host_value = child.host_value[n:]
        upper.lock_ref = child.lock_ref
        upper.last_access = child.last_access
        upper.hits = child.hits
        upper.load = child.load
        upper.children[child.key[n]] = child
        child.parent.children[child.key[0]] = upper
        child.parent = upper
        child.key = child.key[n:]
        if child.value is not None:
            child.value = child.value[n:]
        return upper

    def record_hit(self, node: TreeNode) -> None:
        """A request was admitted reusing the prefix that ends at `node`."""
        while node is not self.root:
            node.hits += 1
            node = node.parent
        self.root.hits += 1

    # ---------------------------------------------------------------- locks
    def inc_lock_ref(self, node: TreeNode) -> None:
        while node is not self.root:
            if node.lock_ref == 0:
                self._shift_lock(node, locked=True)
            node.lock_ref += 1
            node = node.parent

    def dec_lock_ref(self, node: TreeNode) -> None:
        while node is not self.root:
            assert node.lock_ref > 0, "unlock of an unlocked node"
            if node.lock_ref == 1:
                self._shift_lock(node, locked=False)
            node.lock_ref -= 1
            node = node.parent

    def _shift_lock(self, node: TreeNode, locked: bool) -> None:
        """A node's tokens move between evictable and protected on each tier it lives on."""
        n = len(node.key) if locked else -len(node.key)
        if node.value is not None:
            self.evictable_size -= n
            self.protected_size += n
        if node.host_value is not None:
            self.host_evictable_size -= n
            self.host_protected_size += n

    # ---------------------------------------------------------------- device eviction
    def evict(self, num_tokens: int) -> int:
        """Free at least num_tokens device slots from unlocked nodes with nothing below them on
        the device, least recently used first. With a host tier the nodes stay, host-only
        (their KV written to the host pool first if it is not there); a node that finds no
        host room goes, with the host-only nodes below it. Returns the number freed."""
        if num_tokens <= 0 or self.evictable_size == 0:
            return 0
        heap = [n for n in self._nodes() if self._device_leaf(n)]
        heapq.heapify(heap)
        freed, to_free = 0, []
        backups: list[tuple[torch.Tensor, torch.Tensor]] = []
        while heap and freed < num_tokens:
            node = heapq.heappop(heap)
            if self.host is not None and node.host_value is None:
                self._copy_to_host(node, backups)
            to_free.append(node.value)
            freed += len(node.key)
            self._place(node, None, host=False)
            parent = node.parent
            if node.host_value is None:
                self._remove_subtree(node)
            if self._device_leaf(parent):
                heapq.heappush(heap, parent)
        self._send_backups(backups)  # queued before the slots are freed: nothing overwrites them first
        if to_free:
            self.free_slots(torch.cat(to_free))
        return freed

    def _device_leaf(self, node: TreeNode) -> bool:
        return (
            node is not self.root
            and node.value is not None
            and node.lock_ref == 0
            and not any(c.value is not None for c in node.children.values())
        )

    def _remove_subtree(self, node: TreeNode) -> None:
        """Take an unlocked node off the device-less part of the tree with everything below
        it (host-only, unlocked), handing their host slots back."""
        del node.parent.children[node.key[0]]
        node.parent = None
        stack, host_slots = [node], []
        while stack:
            n = stack.pop()
            assert n.value is None and n.lock_ref == 0, "removing a node still on the device or locked"
            if n.host_value is not None:
                host_slots.append(n.host_value)
                self._place(n, None, host=True)
            stack.extend(n.children.values())
        if host_slots:
            self.host.host_pool.free(torch.cat(host_slots))

    # ---------------------------------------------------------------- host tier
    def _copy_to_host(self, node: TreeNode, backups: list[tuple[torch.Tensor, torch.Tensor]]) -> bool:
        """Give a device node host slots (evicting on the host if needed) and queue the copy
        of its KV into them on `backups`; False if the host pool has no room."""
        host_slots = self._alloc_host(len(node.key))
        if host_slots is None:
            return False
        backups.append((node.value, host_slots))
        self._place(node, host_slots, host=True)
        return True

    def _send_backups(self, backups: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """One device -> host copy for every (device slots, host slots) queued."""
        if backups:
            self.host.backup(torch.cat([b[0] for b in backups]), torch.cat([b[1] for b in backups]))

    def _alloc_host(self, n: int) -> torch.Tensor | None:
        pool = self.host.host_pool
        if pool.available < n:
            self.evict_host(n - pool.available)
        return pool.alloc(n)

    def evict_host(self, num_tokens: int) -> int:
        """Free at least num_tokens host slots, least recently used first: an unlocked
        host-only leaf is removed; an unlocked node also on the device drops its host copy.
        Returns the number freed."""
        if num_tokens <= 0 or self.host_evictable_size == 0:
            return 0
        heap = [n for n in self._nodes() if self._host_evictable(n)]
        heapq.heapify(heap)
        freed, to_free = 0, []
        while heap and freed < num_tokens:
            node = heapq.heappop(heap)
            to_free.append(node.host_value)
            freed += len(node.key)
            self._place(node, None, host=True)
            if node.value is None:  # a host-only leaf: nothing of it is left
                parent = node.parent
                del parent.children[node.key[0]]
                node.parent = None
                if self._host_evictable(parent) and parent.value is None:
                    heapq.heappush(heap, parent)
        self.host.host_pool.free(torch.cat(to_free))
        return freed

    def _host_evictable(self, node: TreeNode) -> bool:
        return (
            node is not self.root
            and node.host_value is not None
            and node.lock_ref == 0
            and (node.value is not None or not node.children)
        )

    def backup_path(self, node: TreeNode) -> int:
        """Write-through: copy to the host pool every node from `node` up to the root that is
        on the device only (stopping where the host pool has no room). Returns tokens copied."""
        if self.host is None:
            return 0
        backups: list[tuple[torch.Tensor, torch.Tensor]] = []
        while node is not self.root and node.host_value is None and self._copy_to_host(node, backups):
            node = node.parent
        self._send_backups(backups)
        return sum(len(b[1]) for b in backups)

    def begin_load(self, host_nodes: list[TreeNode], device_slots: torch.Tensor, load: Any) -> torch.Tensor:
        """Give host-only nodes (locked by the caller) the device slots their KV is being
        copied into, marked with `load` until it is done. Returns their host slots, in order."""
        off = 0
        for node in host_nodes:
            assert node.value is None and node.lock_ref > 0, "a load targets locked host-only nodes"
            self._place(node, device_slots[off : off + len(node.key)], host=False)
            node.load = load
            off += len(node.key)
        return torch.cat([n.host_value for n in host_nodes])

    # ---------------------------------------------------------------- checks
    def _nodes(self):
        stack = [self.root]
        while stack:
            node = stack.pop()
            yield node
            stack.extend(node.children.values())

    def all_slots(self) -> torch.Tensor:
        vals = [n.value for n in self._nodes() if n is not self.root and n.value is not None]
        return _cat(vals, self.root.value)

    def all_host_slots(self) -> torch.Tensor:
        vals = [n.host_value for n in self._nodes() if n.host_value is not None]
        return torch.cat(vals) if vals else torch.empty(0, dtype=torch.int64)

    def self_check(self) -> None:
        """Raise AssertionError where an invariant above does not hold (radix_check.py)."""
        check_tree(self)
