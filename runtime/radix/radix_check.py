"""The radix tree's invariants, checked node by node (`RadixCache.self_check`; the scheduler's
accounting check runs it after requests in tests and on `server_info`). The invariants
themselves are listed in radix_cache.py's docstring."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from radixlm.runtime.radix.radix_cache import RadixCache
    from radixlm.runtime.radix.tree_node import TreeNode


def check_tree(tree: RadixCache) -> None:
    """Raise AssertionError naming the first invariant `tree` breaks."""
    sizes = [0, 0, 0, 0]  # device evictable, protected; host evictable, protected
    for node in tree._nodes():
        if node is tree.root:
            continue
        _check_node(tree, node)
        locked = 1 if node.lock_ref else 0
        if node.value is not None:
            sizes[locked] += len(node.key)
        if node.host_value is not None:
            sizes[2 + locked] += len(node.key)
    recorded = [tree.evictable_size, tree.protected_size, tree.host_evictable_size, tree.host_protected_size]
    if sizes != recorded:
        raise AssertionError(
            f"radix size counters drifted: counted (device evictable, protected, host evictable, "
            f"protected) = {sizes}, recorded {recorded}"
        )
    for slots, tier in ((tree.all_slots(), "device"), (tree.all_host_slots(), "host")):
        if slots.numel() != torch.unique(slots).numel():
            raise AssertionError(f"a {tier} KV slot is stored twice in the radix tree")


def _check_node(tree: RadixCache, node: TreeNode) -> None:
    if not node.key or (node.value is None and node.host_value is None):
        raise AssertionError("radix node with an empty key or on neither tier")
    for slots in (node.value, node.host_value):
        if slots is not None and len(slots) != len(node.key):
            raise AssertionError("radix node whose slots do not match its key's length")
    if node.parent.children.get(node.key[0]) is not node:
        raise AssertionError("radix node not stored under its first token")
    if node.lock_ref < sum(c.lock_ref for c in node.children.values()):
        raise AssertionError("radix node has fewer locks than its children")
    if any(c.hits > node.hits for c in node.children.values()):
        raise AssertionError("radix node has fewer hits than one of its children")
    if node.value is not None and node.parent is not tree.root and node.parent.value is None:
        raise AssertionError("radix node on the device under a host-only parent")
    if node.loading and (node.host_value is None or not node.lock_ref):
        raise AssertionError("a loading radix node must keep its host copy and be locked")
