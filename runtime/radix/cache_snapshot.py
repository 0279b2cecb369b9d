"""A bounded picture of the radix tree for people to look at (`/cache`, `Engine.cache_snapshot`).

The scheduler takes it between steps, so its cost comes out of decode: it never walks the
whole tree. It grows a subtree from the root best-first, by hits (the default), by recency, or
by tokens, and stops at `max_nodes`. Hits and recency are monotone down the tree (a request
that reuses a node reuses its ancestors; a match touches every node on its path), so for those
orders the nodes shown are exactly the top `max_nodes` of the tree. Children left out are
summarised on their parent (how many, and their own tokens), and the tree's totals come from
the counters the tree keeps anyway.

The snapshot holds token ids, not text: the caller's process, which has the tokenizer, turns
them into text (`decode_snapshot`, in `TokenizerManager.cache_snapshot`), so the scheduler
does no decoding.
"""

from __future__ import annotations

import heapq
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from radixlm.runtime.radix.radix_cache import RadixCache
    from radixlm.runtime.radix.tree_node import TreeNode

SNAPSHOT_ORDERS = ("hits", "recent", "tokens")
PREVIEW_CHARS = 48
CONTEXT_TOKENS = 4  # enough for a UTF-8 character split over byte tokens
MAX_SNAPSHOT_NODES = 2000  # a page draws a few hundred nodes legibly; this bounds the cost


@dataclass(frozen=True)
class SnapshotLimits:
    max_nodes: int = 200  # nodes shown, the root included
    max_text_tokens: int = 256  # token ids sent per node for its text (the rest is cut)
    order: str = "hits"  # which nodes are shown first: hits | recent | tokens

    def __post_init__(self) -> None:
        if not _is_int(self.max_nodes) or not 1 <= self.max_nodes <= MAX_SNAPSHOT_NODES:
            raise ValueError(
                f"max_nodes must be an integer from 1 to {MAX_SNAPSHOT_NODES}, got {self.max_nodes!r}"
            )
        if not _is_int(self.max_text_tokens) or not 0 <= self.max_text_tokens <= 4096:
            raise ValueError(
                f"max_text_tokens must be an integer from 0 to 4096, got {self.max_text_tokens!r}"
            )
        if self.order not in SNAPSHOT_ORDERS:
            raise ValueError(f"order must be one of {', '.join(SNAPSHOT_ORDERS)}, got {self.order!r}")

    @classmethod
    def from_args(cls, args: dict[str, Any]) -> SnapshotLimits:
        """Limits from a control request's arguments; unknown names are refused."""
        unknown = set(args) - {"max_nodes", "max_text_tokens", "order"}
        if unknown:
            raise ValueError(f"unknown cache snapshot argument(s): {', '.join(sorted(unknown))}")
        return cls(**args)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # True is not a node count


def _priority(node: TreeNode, order: str) -> tuple:
    """Heap key: smaller is shown first. Ties go to the more recently used node."""
    if order == "hits":
        return (-node.hits, -node.last_access)
    if order == "recent":
        return (-node.last_access,)
    return (-len(node.key), -node.last_access)


def _tier(node: TreeNode) -> str:
    if node.load is not None and node.loading:
        return "loading"  # on its way back from the host
    if node.value is not None and node.host_value is not None:
        return "both"
    return "device" if node.value is not None else "host"


def snapshot_tree(tree: RadixCache, limits: SnapshotLimits) -> dict[str, Any]:
    """The top `limits.max_nodes` nodes of `tree` (the root first, each after its parent),
    with their token ids, counters and residency, and the tree's totals."""
    started = time.perf_counter()
    now = time.monotonic()
    root = tree.root
    frontier: list[tuple[tuple, int, TreeNode, int]] = [((), 0, root, 0)]
    nodes: list[dict[str, Any]] = []
    shown: dict[int, dict[str, Any]] = {}
    seq = 1  # heap tiebreak: nodes never compare
    while frontier and len(nodes) < limits.max_nodes:
        _, _, node, start = heapq.heappop(frontier)
        entry = {
            "id": node.node_id,
            "parent": None if node is root else node.parent.node_id,
            "start": start,  # tokens before this node on its path from the root
            "tokens": len(node.key),
            "ids": node.key[: limits.max_text_tokens],
            # the tokens just before it on its path: a character whose bytes straddle the
            # boundary is decoded whole, in the node where it ends (decode_snapshot)
            "context_ids": [] if node is root else node.parent.key[-CONTEXT_TOKENS:],
            "leaf": not node.children,
            "hits": node.hits,
            "idle_s": round(max(0.0, now - node.last_access), 3) if node.last_access else None,
            "locks": node.lock_ref if node is not root else 0,
            "tier": "root" if node is root else _tier(node),
            "evictable": node is not root and node.lock_ref == 0,
            "omitted_children": 0,
            "omitted_tokens": 0,
        }
        nodes.append(entry)
        shown[node.node_id] = entry
        for child in node.children.values():
            heapq.heappush(frontier, (_priority(child, limits.order), seq, child, start + len(node.key)))
            seq += 1
    # what is left in the frontier was not shown: count it on its parent
    omitted = len(frontier)
    for _, _, node, _ in frontier:
        parent = shown[node.parent.node_id]
        parent["omitted_children"] += 1
        parent["omitted_tokens"] += len(node.key)
    host = tree.host is not None
    return {
        "nodes": nodes,
        "order": limits.order,
        "omitted_nodes": omitted,  # children of shown nodes; their subtrees are not walked
        "admissions": root.hits,  # requests admitted (each reuses a prefix, maybe empty)
        "device_tokens": tree.total_size,
        "device_evictable_tokens": tree.evictable_size,
        "device_locked_tokens": tree.protected_size,
        "host_tokens": tree.host_total_size if host else None,
        "host_evictable_tokens": tree.host_evictable_size if host else None,
        "snapshot_ms": round((time.perf_counter() - started) * 1000, 3),
    }


def decode_snapshot(data: dict[str, Any], tokenizer: Any) -> dict[str, Any]:
    """Each node's token ids as `text` (cut at the snapshot's `max_text_tokens`) and a one-line
    `preview`; the ids themselves are dropped.

    A node boundary can fall inside a character (a byte-level vocabulary splits a multi-byte
    UTF-8 character over tokens, and two prompts can part inside it). Decoded alone, both halves
    would show U+FFFD. So a node is decoded after the tokens before it, keeping what follows the
    text they decode to (the completed character lands in the node where it ends), and a node
    with children drops the U+FFFD its cut-off bytes decode to at its end."""
    for replica in data["replicas"]:
        for node in replica["nodes"]:
            ids, context = node.pop("ids"), node.pop("context_ids")
            leaf = node.pop("leaf")
            text = _decode_after(tokenizer, context, ids) if ids else ""
            if not leaf and len(ids) == node["tokens"]:
                text = text.rstrip("\ufffd")
            node["text"] = text
            node["text_truncated"] = len(ids) < node["tokens"]
            flat = " ".join(text.split())
            node["preview"] = flat[:PREVIEW_CHARS] + ("…" if len(flat) > PREVIEW_CHARS else "")
    return data


def _decode_after(tokenizer: Any, context: list[int], ids: list[int]) -> str:
    """The text `ids` add after `context`: decode(context + ids) past its common prefix with
    decode(context)."""
    if not context:
        return tokenizer.decode(ids, skip_special_tokens=False)
    before = tokenizer.decode(context, skip_special_tokens=False)
    whole = tokenizer.decode(context + ids, skip_special_tokens=False)
    common = 0
    for x, y in zip(before, whole):
        if x != y:
            break
        common += 1
    return whole[common:]
