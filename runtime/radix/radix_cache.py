"""The radix tree that maps token-id prefixes to the KV slots holding their keys and values.

The tree knows nothing of requests or of the allocator: it stores runs of token ids with
one KV slot per token, hands slots back through `free_slots` when it evicts, and counts
how many of its tokens are evictable (no lock) and protected (locked by a user).

Invariants (checked by `self_check`):
  * every non-root node has a non-empty key and `len(value) == len(key)`;
  * a child is stored under the first token of its key;
  * `node.lock_ref >= sum(child.lock_ref)` (a lock on a node is held by all its ancestors);
  * evictable_size + protected_size == total tokens stored, split by `lock_ref == 0`;
  * no KV slot appears twice.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch


class TreeNode:
    __slots__ = ("children", "parent", "key", "value", "lock_ref", "last_access")

    def __init__(
        self, parent: TreeNode | None = None, key: list[int] | None = None, value: torch.Tensor | None = None
    ) -> None:
        self.children: dict[int, TreeNode] = {}
        self.parent = parent
        self.key: list[int] = key if key is not None else []
        self.value: torch.Tensor | None = value
        self.lock_ref = 0
        self.last_access = 0

    def __lt__(self, other: TreeNode) -> bool:  # heap order for LRU eviction
        return self.last_access < other.last_access


@dataclass
class MatchResult:
    kv_indices: torch.Tensor  # int64 slots of the matched prefix, in order
    last_node: TreeNode  # deepest node of the match; lock it to protect the prefix


def _common_prefix_len(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class RadixCache:
    def __init__(
        self,
        free_slots: Callable[[torch.Tensor], None],
        device: torch.device | str = "cpu",
        disable: bool = False,
    ) -> None:
        self.free_slots = free_slots
        self.device = torch.device(device)
        self.disable = disable
        self._clock = itertools.count(1)
        self.reset()

    def reset(self) -> None:
        """Forget everything without freeing slots (the caller resets the allocator)."""
        self.root = TreeNode(key=[], value=torch.empty(0, dtype=torch.int64, device=self.device))
        self.root.lock_ref = 1  # the root is never evicted
        self.evictable_size = 0
        self.protected_size = 0

    @property
    def total_size(self) -> int:
        return self.evictable_size + self.protected_size

    # ---------------------------------------------------------------- lookup
    def match_prefix(self, key: Sequence[int]) -> MatchResult:
        """Longest cached prefix of `key`. Splits a node if the match ends inside it, so the
        returned `last_node` covers exactly the matched tokens."""
        node, values = self.root, []
        if self.disable:
            return MatchResult(self.root.value, self.root)
        now = next(self._clock)
        node.last_access = now
        pos = 0
        while pos < len(key):
            child = node.children.get(key[pos])
            if child is None:
                break
            n = _common_prefix_len(child.key, key[pos:])
            if n < len(child.key):
                child = self._split(child, n)
            child.last_access = now
            values.append(child.value)
            node = child
            pos += n
        kv = torch.cat(values) if values else self.root.value
        return MatchResult(kv, node)

    # ---------------------------------------------------------------- insert
    def insert(self, key: Sequence[int], value: torch.Tensor) -> int:
        """Store `key -> value`. Returns how many leading tokens were already cached; the
        caller owns (and must free) its own slots `value[:returned]`, which the tree did not take."""
        if self.disable:
            return 0
        assert len(key) == len(value), "one KV slot per token"
        node, pos = self.root, 0
        now = next(self._clock)
        key = list(key)
        while pos < len(key):
            child = node.children.get(key[pos])
            if child is None:
                leaf = TreeNode(node, key[pos:], value[pos:].clone())
                leaf.last_access = now
                node.children[key[pos]] = leaf
                self.evictable_size += len(leaf.key)
                return pos
            n = _common_prefix_len(child.key, key[pos:])
            if n < len(child.key):
                child = self._split(child, n)
            child.last_access = now
            node = child
            pos += n
        return pos

    def _split(self, child: TreeNode, n: int) -> TreeNode:
        """Cut `child` after n tokens; the new upper node inherits its lock count."""
        assert 0 < n < len(child.key)
        upper = TreeNode(child.parent, child.key[:n], child.value[:n])
        upper.lock_ref = child.lock_ref
        upper.last_access = child.last_access
        upper.children[child.key[n]] = child
        child.parent.children[child.key[0]] = upper
        child.parent = upper
        child.key = child.key[n:]
        child.value = child.value[n:]
        return upper

    # ---------------------------------------------------------------- locks
    def inc_lock_ref(self, node: TreeNode) -> None:
        while node is not self.root:
            if node.lock_ref == 0:
                self.evictable_size -= len(node.key)
                self.protected_size += len(node.key)
            node.lock_ref += 1
            node = node.parent

    def dec_lock_ref(self, node: TreeNode) -> None:
        while node is not self.root:
            assert node.lock_ref > 0, "unlock of an unlocked node"
            if node.lock_ref == 1:
                self.evictable_size += len(node.key)
                self.protected_size -= len(node.key)
            node.lock_ref -= 1
            node = node.parent

    # ---------------------------------------------------------------- eviction
    def evict(self, num_tokens: int) -> int:
        """Free at least num_tokens slots from unlocked leaves, least recently used first.
        Returns the number freed (less if not enough is evictable)."""
        if num_tokens <= 0 or self.evictable_size == 0:
            return 0
        heap = [n for n in self._nodes() if not n.children and n.lock_ref == 0 and n is not self.root]
        heapq.heapify(heap)
        freed, to_free = 0, []
        while heap and freed < num_tokens:
            leaf = heapq.heappop(heap)
            to_free.append(leaf.value)
            freed += len(leaf.key)
            self.evictable_size -= len(leaf.key)
            parent = leaf.parent
            del parent.children[leaf.key[0]]
            leaf.parent = None
            if parent is not self.root and not parent.children and parent.lock_ref == 0:
                heapq.heappush(heap, parent)
        if to_free:
            self.free_slots(torch.cat(to_free))
        return freed

    # ---------------------------------------------------------------- checks
    def _nodes(self):
        stack = [self.root]
        while stack:
            node = stack.pop()
            yield node
            stack.extend(node.children.values())

    def all_slots(self) -> torch.Tensor:
        vals = [n.value for n in self._nodes() if n is not self.root]
        return torch.cat(vals) if vals else self.root.value

    def self_check(self) -> None:
        evictable = protected = 0
        for node in self._nodes():
            if node is self.root:
                continue
            if not node.key or node.value is None or len(node.value) != len(node.key):
                raise AssertionError("radix node with an empty key or a value of the wrong length")
            if node.parent.children.get(node.key[0]) is not node:
                raise AssertionError("radix node not stored under its first token")
            if node.lock_ref < sum(c.lock_ref for c in node.children.values()):
                raise AssertionError("radix node has fewer locks than its children")
            if node.lock_ref == 0:
                evictable += len(node.key)
            else:
                protected += len(node.key)
        if (evictable, protected) != (self.evictable_size, self.protected_size):
            raise AssertionError(
                f"radix size counters drifted: counted evictable={evictable} protected={protected}, "
                f"recorded {self.evictable_size}/{self.protected_size}"
            )
        slots = self.all_slots()
        if slots.numel() != torch.unique(slots).numel():
            raise AssertionError("a KV slot is stored twice in the radix tree")
