"""Compiled grammars and one request's position in one.

A `CompiledGrammar` is the token-level automaton (an outlines-core `Index`) of one pattern,
shared by every request with that pattern; it memoises per-state results: the allowed token
ids, their banned-token mask rows on each device, and the text every continuation must start
with (jump-forward's forced bytes and draft tokens). A `Grammar` is one request's state in it.
`build_vocab_mask` stacks a batch's cached rows into the step's mask.

EOS is never part of an automaton's vocabulary: a grammar in a final state lets the request's
own stop tokens through, and a final state with no continuation ends the request.

A `ReasoningGate` holds a constraint back while a reasoning model thinks: the text before the
think-end token is free, and the automaton applies from its initial state after it.
"""

from __future__ import annotations

import collections
from collections.abc import Sequence
from typing import Any

import torch

from radixlm.runtime.constrained.backend import CompiledConstraint, Constraint, GrammarMatcher, MaskView
from radixlm.runtime.constrained.vocabulary import TokenizerVocab, whole_characters
from radixlm.runtime.model_executor.device_copy import to_device

MASK_ROW_CACHE_BYTES = 64 << 20  # per compiled grammar and device: banned-token rows kept ready
MAX_JUMP_CHARS = 256


class CompiledGrammar(CompiledConstraint):
    """An automaton over token ids (the outlines backend), shared by every request with the
    same constraint. Per-state results are memoised; only the scheduler thread touches them."""

    backend = "outlines"

    def __init__(self, key: Constraint, regex: str, index: Any, vocab: TokenizerVocab) -> None:
        self.key = key
        self.constraint = key
        self.regex = regex
        self.index = index
        self.vocab = vocab
        self._allowed: dict[int, list[int]] = {}
        self._allowed_dev: dict[tuple[int, str], torch.Tensor] = {}
        self._mask_rows: collections.OrderedDict[tuple[int, str], torch.Tensor] = collections.OrderedDict()
        self._forced: dict[int, bytes] = {}
        self._drafts: dict[int, list[int]] = {}

    @property
    def initial_state(self) -> int:
        return self.index.get_initial_state()

    def new_matcher(self, reasoning_end: int | None, reasoning_start: int | None) -> Grammar:
        if reasoning_end is None:
            return Grammar(self)
        return Grammar(ReasoningGate(self, reasoning_end, reasoning_start))

    def allowed(self, state: int) -> list[int]:
        """Token ids the automaton accepts from `state`, EOS excluded."""
        ids = self._allowed.get(state)
        if ids is None:
            eos = self.vocab.anchor_eos
            ids = sorted(t for t in (self.index.get_allowed_tokens(state) or []) if t != eos)
            self._allowed[state] = ids
        return ids

    def allowed_tensor(self, state: int, device: torch.device) -> torch.Tensor:
        key = (state, str(device))
        t = self._allowed_dev.get(key)
        if t is None:
            t = to_device(self.allowed(state), torch.int64, device)  # no host stall (see build_vocab_mask)
            self._allowed_dev[key] = t
        return t

    def mask_row(self, state: int, device: torch.device) -> torch.Tensor:
        """[V] bool on `device`, True where `state` bans the token (EOS included), kept in a
        byte-bounded LRU so a step's mask is one stack of ready rows."""
        key = (state, str(device))
        row = self._mask_rows.get(key)
        if row is not None:
            self._mask_rows.move_to_end(key)
            return row
        row = torch.ones(self.vocab.vocab_size, dtype=torch.bool, device=device)
        row[self.allowed_tensor(state, device)] = False
        self._mask_rows[key] = row
        while (
            len(self._mask_rows) * self.vocab.vocab_size > MASK_ROW_CACHE_BYTES and len(self._mask_rows) > 1
        ):
            self._mask_rows.popitem(last=False)
        return row

    def is_final(self, state: int) -> bool:
        return bool(self.index.is_final_state(state))

    def next_state(self, state: int, token: int) -> int | None:
        return self.index.get_next_state(state, token)

    def forced_bytes(self, state: int) -> bytes:
        """The bytes every accepted continuation from `state` starts with: while all allowed
        tokens begin with the same byte (and the state is not final), that byte is forced;
        the single-byte token for it leads to the next state."""
        found = self._forced.get(state)
        if found is not None:
            return found
        out = b""
        cur: int | None = state
        table = self.vocab.token_bytes
        while cur is not None and len(out) < MAX_JUMP_CHARS and not self.is_final(cur):
            allowed = self.allowed(cur)
            first = {table[t][:1] for t in allowed}
            if len(first) != 1:
                break
            byte = first.pop()
            step = next((t for t in allowed if table[t] == byte), None)
            if step is None:
                break
            out += byte
            cur = self.next_state(cur, step)
        self._forced[state] = out
        return out

    def draft(self, state: int) -> list[int]:
        """The forced text from `state` in the tokenizer's natural tokenization (the longest
        prefix the automaton accepts): the tokens jump-forward proposes for verification."""
        found = self._drafts.get(state)
        if found is not None:
            return found
        forced = self.forced_bytes(state)
        text = whole_characters(forced)
        tokens: list[int] = []
        cur: int | None = state
        for t in self.vocab.encode(text) if text else []:
            cur = self.next_state(cur, t)
            if cur is None:
                break
            tokens.append(t)
        self._drafts[state] = tokens
        return tokens


# The gate's own states, beside the automaton's (outlines-core numbers those from 0).
IN_REASONING = -1
BEFORE_REASONING = -2


class ReasoningGate:
    """A compiled grammar that applies only after the reasoning ends, with the interface of
    `CompiledGrammar` (so `Grammar`, `build_vocab_mask`, jump-forward and the output rules use
    it unchanged). One per request: it only adds two states and delegates the automaton's
    states (and their shared caches) to `inner`.

    IN_REASONING: every token is allowed, stop tokens included (a model may stop while it
    thinks), nothing is forced (no jump-forward) and the state is never final; `end_id` moves
    to the automaton's initial state. BEFORE_REASONING (with `start_id`: the model chooses
    whether to think, as Qwen3 does): `start_id` opens the reasoning, any other token is the
    automaton's first."""

    def __init__(self, inner: CompiledGrammar, end_id: int, start_id: int | None = None) -> None:
        self.inner = inner
        self.end_id = end_id
        self.start_id = start_id
        self.key = inner.key
        self.regex = inner.regex
        self.vocab = inner.vocab
        self._rows: dict[tuple[int, str], torch.Tensor] = {}

    @property
    def initial_state(self) -> int:
        return IN_REASONING if self.start_id is None else BEFORE_REASONING

    def allowed(self, state: int) -> list[int]:
        if state == IN_REASONING:
            return list(range(self.vocab.vocab_size))
        if state == BEFORE_REASONING:
            return sorted({*self.inner.allowed(self.inner.initial_state), self.start_id})
        return self.inner.allowed(state)

    def mask_row(self, state: int, device: torch.device) -> torch.Tensor:
        if state >= 0:
            return self.inner.mask_row(state, device)
        key = (state, str(device))
        row = self._rows.get(key)
        if row is None:
            if state == IN_REASONING:
                row = torch.zeros(self.vocab.vocab_size, dtype=torch.bool, device=device)
            else:
                row = self.inner.mask_row(self.inner.initial_state, device).clone()
                row[self.start_id] = False
            self._rows[key] = row
        return row

    def is_final(self, state: int) -> bool:
        if state == IN_REASONING:
            return False
        return self.inner.is_final(self.inner.initial_state if state == BEFORE_REASONING else state)

    def next_state(self, state: int, token: int) -> int | None:
        if state == IN_REASONING:
            return self.inner.initial_state if token == self.end_id else IN_REASONING
        if state == BEFORE_REASONING:
            if token == self.start_id:
                return IN_REASONING
            state = self.inner.initial_state
        return self.inner.next_state(state, token)

    def forced_bytes(self, state: int) -> bytes:
        return self.inner.forced_bytes(state) if state >= 0 else b""

    def draft(self, state: int) -> list[int]:
        # before the reasoning has ended nothing is forced: the model may think on
        return self.inner.draft(state) if state >= 0 else []


class Grammar(GrammarMatcher, MaskView):
    """One request's progress through a compiled grammar (or a reasoning gate around one): the
    outlines backend's matcher. A state is an integer, so a view at another state is free."""

    def __init__(self, compiled: CompiledGrammar | ReasoningGate) -> None:
        self.compiled = compiled
        self.state = compiled.initial_state
        self._history: list[int] = []  # the state before each advance, for rollback

    def allowed(self) -> list[int]:
        return self.compiled.allowed(self.state)

    @property
    def is_final(self) -> bool:
        return self.compiled.is_final(self.state)

    @property
    def is_complete(self) -> bool:
        """Final with nowhere to go: the output is done."""
        return self.is_final and not self.allowed()

    def advance(self, token: int) -> bool:
        nxt = self.compiled.next_state(self.state, token)
        if nxt is None:
            return False
        self._history.append(self.state)
        self.state = nxt
        return True

    def rollback(self, count: int) -> None:
        for _ in range(count):
            self.state = self._history.pop()

    def mask_row(self, device: torch.device) -> torch.Tensor:
        return self.compiled.mask_row(self.state, device)

    def snapshot(self) -> Grammar:
        return self.at(self.state)

    def views(self, draft: list[int]) -> list[MaskView]:
        # states are plain integers: walk them without touching this request's history
        out: list[MaskView] = []
        state: int | None = self.state
        for j in range(len(draft) + 1):
            out.append(self.at(state))
            if j == len(draft):
                break
            state = self.compiled.next_state(state, draft[j])
            if state is None:
                raise RuntimeError(f"draft token {draft[j]} is rejected by the grammar that drafted it")
        return out

    def draft(self) -> list[int]:
        """Tokens the grammar forces from here (see CompiledGrammar.draft)."""
        return self.compiled.draft(self.state)

    def at(self, state: int) -> Grammar:
        """A view of the same grammar in another state (for drafted positions)."""
        view = Grammar(self.compiled)
        view.state = state
        return view


def build_vocab_mask(
    grammars: Sequence[MaskView | None],
    stop_ids: Sequence[Sequence[int]],
    vocab_size: int,
    device: torch.device,
) -> torch.Tensor | None:
    """[B, V] bool, True where a token is banned, or None when no row is constrained.
    Row i bans everything its grammar does not allow; a grammar in a final state also lets
    `stop_ids[i]` through. Rows come per view class (`MaskView.mask_rows`: outlines-core's
    cached per-state device rows, llguidance's parallel fill and one copy) and nothing here
    waits for the device, so the sampler builds the mask while the step's forward runs
    (`SamplingBatch.mask_builder`)."""
    if all(g is None for g in grammars):
        return None
    by_class: dict[type, list[int]] = {}
    for i, g in enumerate(grammars):
        if g is not None:
            by_class.setdefault(type(g), []).append(i)
    if len(by_class) == 1 and len(next(iter(by_class.values()))) == len(grammars):
        cls = type(grammars[0])
        mask = cls.mask_rows(grammars, device)[:, :vocab_size]  # a new tensor: ours to edit
    else:
        mask = torch.zeros((len(grammars), vocab_size), dtype=torch.bool, device=device)
        for cls, rows in by_class.items():
            block = cls.mask_rows([grammars[i] for i in rows], device)[:, :vocab_size]
            mask[to_device(rows, torch.int64, device)] = block
    final = [i for i, g in enumerate(grammars) if g is not None and stop_ids[i] and g.is_final]
    unban = [(i, t) for i in final for t in stop_ids[i]]
    if unban:
        at = to_device([[i for i, _ in unban], [t for _, t in unban]], torch.int64, device)
        mask[at[0], at[1]] = False
    return mask
