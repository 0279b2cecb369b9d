"""The radix tree's node, and what a prefix match returns. A node holds a run of token ids and
their KV slots on the device, the host, or both; the tree's invariants are radix_cache.py's."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

import torch


class TreeNode:
    __slots__ = (
        "children", "parent", "key", "value", "host_value",
        "lock_ref", "last_access", "load", "hits", "node_id",
    )  # fmt: skip
    _ids = itertools.count(1)  # node ids stay fixed for a node's life, so a live view can follow one

    def __init__(
        self, parent: TreeNode | None = None, key: list[int] | None = None, value: torch.Tensor | None = None
    ) -> None:
        self.children: dict[int, TreeNode] = {}
        self.parent = parent
        self.key: list[int] = key if key is not None else []
        self.value: torch.Tensor | None = value  # device slots, or None (host-only)
        self.host_value: torch.Tensor | None = None  # host slots, or None (device-only)
        self.lock_ref = 0
        self.last_access = 0.0  # time.monotonic() of the last match or insert through the node
        self.load: Any = None  # the host -> device copy filling `value`, until it is done
        # requests admitted with this node in their reused prefix; an ancestor has at least
        # its descendants' hits, so the most-hit nodes form a subtree at the root
        self.hits = 0
        self.node_id = next(TreeNode._ids)

    def __lt__(self, other: TreeNode) -> bool:  # heap order for LRU eviction
        return self.last_access < other.last_access

    @property
    def loading(self) -> bool:
        """A copy from the host is filling this node's device slots and has not landed."""
        if self.load is not None and self.load.done:
            self.load = None
        return self.load is not None


@dataclass
class MatchResult:
    kv_indices: torch.Tensor  # int64 device slots of the matched prefix on the device, in order
    last_node: TreeNode  # deepest node of that device prefix; lock it to protect the prefix
    # the host-only nodes that continue the match past the device prefix, in order
    host_nodes: list[TreeNode] = field(default_factory=list)
    # the load in flight the match ran into (its prefix is coming back to the device)
    blocked_by: Any = None

    @property
    def host_len(self) -> int:
        return sum(len(n.key) for n in self.host_nodes)
