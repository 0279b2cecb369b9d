"""Draft tokens without a draft model: what speculative decoding feeds for verification.

A proposer guesses the next few tokens of a request from text that already exists; the
scheduler feeds them as drafted decode rows (jump_forward.py), where each row samples exactly
as one-at-a-time decoding would, and keeps a draft only while it equals that sample. Outputs
are therefore the same with speculation on or off; a good guess saves decode steps and a bad
one costs only the extra rows.

* `ngram` (prompt lookup): the longest of the request's last 4, 3 or 2 tokens that occurred
  earlier in its own prompt or output proposes what followed that occurrence (its latest one).
  Extraction, quoting, code edits and JSON re-stating the input hit often.
* `lookahead`: the radix tree's continuation of the request's own context: what an earlier
  request (another branch, an earlier turn, a regeneration) produced after exactly these
  tokens, read from the tree's keys, then the n-gram guess where the tree has none.

Both run on the host in O(new tokens) per step: the n-gram index grows with the request, and
the tree walk starts at the request's locked prefix node.
"""

from __future__ import annotations

from radixlm.runtime.radix.radix_cache import RadixCache
from radixlm.runtime.radix.tree_node import TreeNode
from radixlm.runtime.scheduler.request import Req

NGRAM_SIZES = (4, 3, 2)  # longest first: a longer match predicts better


class NgramIndex:
    """Where each n-gram of a token sequence last ended, for the positions indexed so far."""

    def __init__(self) -> None:
        self.last_end: dict[tuple[int, ...], int] = {}
        self.indexed = 0  # positions [0, indexed) are in the map as n-gram ends

    def propose(self, tokens: list[int], max_tokens: int) -> list[int]:
        """The tokens that followed the latest earlier occurrence of the sequence's suffix."""
        end = len(tokens) - 1  # the suffix ends here; only earlier ends may match it
        for i in range(self.indexed, end):
            for n in NGRAM_SIZES:
                if i + 1 >= n:
                    self.last_end[tuple(tokens[i + 1 - n : i + 1])] = i
        self.indexed = max(self.indexed, end)
        for n in NGRAM_SIZES:
            if end + 1 < n:
                continue
            j = self.last_end.get(tuple(tokens[end + 1 - n :]))
            if j is not None:
                # copy what followed; past the end of the text the copy continues from
                # itself, so a loop of period end - j fills the whole draft
                period = end - j
                return [tokens[j + 1 + i % period] for i in range(max_tokens)]
        return []


def tree_continuation(tree: RadixCache, start: TreeNode, tokens: list[int], max_tokens: int) -> list[int]:
    """Read-only: walk `tokens` down from `start` (a node whose path is the tokens before
    them) and return up to max_tokens of what the tree holds after them, following the most
    recently used child at each branch. Touches no LRU clock and splits nothing."""
    node, offset = start, len(start.key)  # offset: tokens of `node.key` matched so far
    pos = 0
    while pos < len(tokens):
        if offset < len(node.key):
            if node.key[offset] != tokens[pos]:
                return []
            offset += 1
            pos += 1
            continue
        child = node.children.get(tokens[pos])
        if child is None:
            return []
        node, offset = child, 0
    out: list[int] = []
    while len(out) < max_tokens:
        if offset < len(node.key):
            take = node.key[offset : offset + max_tokens - len(out)]
            out += take
            offset += len(take)
            continue
        if not node.children:
            break
        node = max(node.children.values(), key=lambda c: c.last_access)
        offset = 0
    return out


class DraftProposer:
    """Proposes drafts for one algorithm; keeps per-request state on the request."""

    def __init__(self, algorithm: str, tree: RadixCache) -> None:
        assert algorithm in ("ngram", "lookahead")
        self.algorithm = algorithm
        self.tree = tree

    def propose(self, req: Req, max_tokens: int) -> list[int]:
        if max_tokens <= 0:
            return []
        tokens = req.fill_ids
        if self.algorithm == "lookahead" and req.last_node is not None and not self.tree.disable:
            draft = tree_continuation(self.tree, req.last_node, tokens[req.cache_protected_len :], max_tokens)
            if draft:
                return draft
        if req.ngram_index is None:
            req.ngram_index = NgramIndex()
        return req.ngram_index.propose(tokens, max_tokens)
