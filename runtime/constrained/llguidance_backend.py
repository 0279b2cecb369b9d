"""The llguidance backend: JSON schema, Lark, GBNF/EBNF and regex constraints through
llguidance's `LLMatcher` (an Earley parser over a lexer on the token trie).

The matcher sees this engine's own vocabulary: the same token-to-bytes table outlines-core
gets (vocabulary.py), so both backends allow the same tokens for the same text; special tokens
and the ids past the tokenizer's end are marked special and never allowed. EOS bits are
cleared from every mask: as with outlines-core, a final state lets the request's own stop
tokens through (`build_vocab_mask`), so `ignore_eos` and `stop_token_ids` mean the same on
both backends.

Compiling builds one template matcher on the grammar worker thread; each request gets a deep
copy of it (microseconds). A mask is computed per step into 32-bit words (one bit per token,
1 = allowed) and unpacked on the device.
"""

from __future__ import annotations

import json
import os
import threading
import weakref
from collections.abc import Sequence
from typing import Any

import torch

from radixlm.runtime.constrained.backend import (
    PARAM_OF_KIND,
    CompiledConstraint,
    Constraint,
    GrammarMatcher,
    MaskView,
)
from radixlm.runtime.constrained.grammar import BEFORE_REASONING, IN_REASONING, MAX_JUMP_CHARS
from radixlm.runtime.constrained.json_schema import DATA_KEYWORDS
from radixlm.runtime.constrained.one_of import overlapping_one_of
from radixlm.runtime.constrained.structural_tag import structural_tag_lark
from radixlm.runtime.constrained.vocabulary import TokenizerVocab, whole_characters

DEFAULT_WHITESPACE = r"[ ]?"  # as the outlines backend: at most one space between JSON tokens
_TOKENIZERS: weakref.WeakKeyDictionary[TokenizerVocab, Any] = weakref.WeakKeyDictionary()
_TOKENIZERS_LOCK = threading.Lock()
_EXECUTOR: Any = None
# a step's masks go to llguidance's thread pool only where it has cores to spread over: on two,
# its hand-offs cost more than the masks (64 early-state masks: 0.2 ms one after another,
# 0.5-4 ms through the pool on a loaded 2-core VM)
_PARALLEL = (os.cpu_count() or 1) >= 4
_ALL_ALLOWED = torch.tensor(-1, dtype=torch.int32)


def llguidance_grammar(constraint: Constraint, whitespace_pattern: str | None = None) -> str:
    """The constraint as llguidance grammar text, checked for errors (no vocabulary needed).
    Raises ValueError naming the problem (with line and column for a grammar).

    A JSON schema's `format` that llguidance does not know (`uri-reference`, pydantic's
    `path`...) is dropped: JSON Schema makes formats annotations that a validator ignores
    when it does not know them, so every output still validates. A keyword it cannot enforce
    (`uniqueItems`, `not`, `if`/`then`...) refuses the schema by name."""
    from llguidance import LLMatcher, grammar_from

    name = PARAM_OF_KIND[constraint.kind]
    # a schema the JSON compiler refuses is "unsupported", as outlines-core's are
    refused_as = "unsupported" if constraint.kind == "json" else "invalid"
    schema = closed_objects(json.loads(constraint.text)) if constraint.kind == "json" else None
    overlapping = overlapping_one_of(schema) if schema is not None else []
    if overlapping:
        raise ValueError(
            f"unsupported {name} feature(s), which the output could not be held to: oneOf whose "
            f"branches may overlap (exactly one must match) at {', '.join(overlapping[:3])}"
        )
    unknown_formats: set[str] = set()
    while True:
        try:
            if schema is not None:
                ws = DEFAULT_WHITESPACE if whitespace_pattern is None else whitespace_pattern
                grammar = LLMatcher.grammar_from_json_schema(
                    _without_formats(schema, unknown_formats),
                    overrides={"whitespace_pattern": ws, "lenient": False},
                )
            elif constraint.kind == "regex":
                grammar = LLMatcher.grammar_from_regex(constraint.text)
            elif constraint.kind == "ebnf":
                grammar = grammar_from("gbnf", constraint.text)
            elif constraint.kind == "structural_tag":
                grammar = grammar_from("lark", structural_tag_lark(constraint.text, whitespace_pattern))
            else:  # Lark; a GBNF text (`::=` rules) is recognised too, as vLLM's guided_grammar
                grammar = grammar_from("grammar", constraint.text)
        except ValueError as exc:
            raise ValueError(f"{refused_as} {name}: {_first_lines(str(exc))}") from None
        is_error, messages = LLMatcher.validate_grammar_with_warnings(grammar)
        formats = {m.split(":", 1)[1].strip() for m in messages if m.startswith("Unknown format:")}
        if schema is None or not formats or formats <= unknown_formats:
            break
        unknown_formats |= formats  # drop them and compile again
    if is_error and ("Unimplemented" in messages[0] or "not supported" in messages[0]):
        is_error = False  # a keyword it cannot enforce, not a broken schema: refused below
        messages = [messages[0].replace("Enable 'coerce_one_of' option to", "(llguidance could")]
    if is_error:
        raise ValueError(f"{refused_as} {name}: {_first_lines(messages[0])}")
    if messages:  # what it would silently not enforce
        raise ValueError(
            f"unsupported {name} feature(s), which the output could not be held to: "
            f"{'; '.join(_first_lines(m) for m in messages[:5])}"
        )
    return grammar


def _without_formats(schema: Any, formats: set[str]) -> Any:
    if not formats:
        return schema
    if isinstance(schema, list):
        return [_without_formats(item, formats) for item in schema]
    if not isinstance(schema, dict):
        return schema
    return {
        key: value if key in DATA_KEYWORDS else _without_formats(value, formats)
        for key, value in schema.items()
        if not (key == "format" and isinstance(value, str) and value in formats)
    }


def closed_objects(schema: Any, in_all_of: bool = False) -> Any:
    """The schema with `additionalProperties: false` on every object that lists properties
    and says nothing about others: what outlines-core does, what xgrammar's strict mode and
    OpenAI's structured outputs do, and what users mean (a random-weight or weak model would
    otherwise wander into made-up keys). Every output stays valid for the original schema.
    Branches of an allOf are left open: each would ban the properties the others add."""
    if isinstance(schema, list):
        return [closed_objects(item, in_all_of) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {}
    for key, value in schema.items():
        if key in DATA_KEYWORDS:
            out[key] = value
        elif key == "properties" and isinstance(value, dict):
            out[key] = {name: closed_objects(sub) for name, sub in value.items()}
        else:
            out[key] = closed_objects(value, in_all_of=key == "allOf")
    open_keys = ("additionalProperties", "patternProperties", "unevaluatedProperties")
    if isinstance(out.get("properties"), dict) and not in_all_of and not any(k in out for k in open_keys):
        out["additionalProperties"] = False
    return out


def _first_lines(message: str, lines: int = 3) -> str:
    return " | ".join(line.rstrip() for line in message.strip().splitlines()[:lines])


def llguidance_tokenizer(vocab: TokenizerVocab) -> Any:
    """The LLTokenizer over this vocabulary, built once per TokenizerVocab."""
    with _TOKENIZERS_LOCK:
        found = _TOKENIZERS.get(vocab)
        if found is not None:
            return found
        from llguidance import LLTokenizer, TokenizerWrapper

        class _Tokens:  # what TokenizerWrapper reads
            eos_token_id = vocab.anchor_eos
            bos_token_id = getattr(vocab.tokenizer, "bos_token_id", None)
            # special tokens (and ids past the tokenizer) as llguidance spells them: never allowed
            tokens = [
                b"\xff<[eos]>" if t in vocab.eos_ids else vocab.token_bytes.get(t, b"\xff<[special %d]>" % t)
                for t in range(vocab.vocab_size)
            ]
            special_token_ids = [
                t for t in range(vocab.vocab_size) if t not in vocab.token_bytes or t in vocab.eos_ids
            ]

            def __call__(self, text: str) -> list[int]:
                return vocab.encode(text)

        built = LLTokenizer(TokenizerWrapper(_Tokens()), n_vocab=vocab.vocab_size)
        _TOKENIZERS[vocab] = built
        return built


class LLGuidanceCompiled(CompiledConstraint):
    backend = "llguidance"

    def __init__(self, constraint: Constraint, vocab: TokenizerVocab, whitespace_pattern: str | None) -> None:
        from llguidance import LLMatcher

        self.constraint = constraint
        self.vocab = vocab
        self.grammar = llguidance_grammar(constraint, whitespace_pattern)
        self.template = LLMatcher(llguidance_tokenizer(vocab), self.grammar, log_level=0)
        if self.template.is_error():
            name = PARAM_OF_KIND[constraint.kind]
            raise ValueError(f"cannot compile {name}: {_first_lines(self.template.get_error())}")
        words = (vocab.vocab_size + 31) // 32
        # EOS is the stop rules' business (see the module docstring): its bits are cleared
        self._eos_clear = torch.full((words,), -1, dtype=torch.int32)
        for t in vocab.eos_ids | {vocab.anchor_eos}:
            if t < vocab.vocab_size:
                self._eos_clear[t // 32] &= ~_bit(t)

    def new_matcher(self, reasoning_end: int | None, reasoning_start: int | None) -> LLGuidanceMatcher:
        return LLGuidanceMatcher(self, reasoning_end, reasoning_start)


class _Words(MaskView):
    """A computed mask (32-bit words, 1 = allowed) and whether the state was final."""

    def __init__(self, words: torch.Tensor | None, final: bool, vocab_size: int) -> None:
        self.words = words  # None: nothing banned (free text while reasoning)
        self._final = final
        self.vocab_size = vocab_size

    @property
    def is_final(self) -> bool:
        return self._final

    def mask_row(self, device: torch.device) -> torch.Tensor:
        return _Words.mask_rows([self], device)[0]

    @classmethod
    def mask_rows(cls, views: Sequence[MaskView], device: torch.device) -> torch.Tensor:
        words = _host_words(len(views), views[0].vocab_size, device)
        for row, view in zip(words, views):
            row.copy_(view.words if view.words is not None else _ALL_ALLOWED)
        return _unpack(words, views[0].vocab_size, device)


class LLGuidanceMatcher(GrammarMatcher):
    """One request's LLMatcher, behind a reasoning gate when the request has one (the gate's
    states are grammar.py's IN_REASONING / BEFORE_REASONING; None once the grammar applies)."""

    def __init__(self, compiled: LLGuidanceCompiled, reasoning_end: int | None, reasoning_start: int | None):
        self.compiled = compiled
        self.matcher = compiled.template.deep_copy()
        self.end_id = reasoning_end
        self.start_id = reasoning_start
        self.gate: int | None = None
        if reasoning_end is not None:
            self.gate = IN_REASONING if reasoning_start is None else BEFORE_REASONING
        self._history: list[int | None | str] = []  # per advance: the gate before it, or "m"

    # -- state
    @property
    def error(self) -> str | None:
        # llguidance never raises for a grammar limit hit mid-output: it enters an error state
        # (its masks then ban everything), which must end the request, not sample garbage
        return _first_lines(self.matcher.get_error()) if self.matcher.is_error() else None

    @property
    def is_final(self) -> bool:
        if self.gate == IN_REASONING:
            return False
        return self.matcher.is_accepting()

    @property
    def is_complete(self) -> bool:
        return self.gate is None and self.matcher.is_stopped()

    def advance(self, token: int) -> bool:
        if self.gate == IN_REASONING:
            self._history.append(self.gate)
            if token == self.end_id:
                self.gate = None
            return True
        if self.gate == BEFORE_REASONING:
            if token == self.start_id:
                self._history.append(self.gate)
                self.gate = IN_REASONING
                return True
            self.gate = None  # the output does not think: the grammar applies from here
            if not self.matcher.consume_token(token):
                return False
            self._history.append(BEFORE_REASONING)
            return True
        if not self.matcher.consume_token(token):
            return False
        self._history.append("m")
        return True

    def rollback(self, count: int) -> None:
        for _ in range(count):
            entry = self._history.pop()
            if entry == "m":
                self.matcher.rollback(1)
            elif entry == BEFORE_REASONING and self.gate is None:
                self.matcher.rollback(1)  # that token was the grammar's first
                self.gate = BEFORE_REASONING
            else:
                self.gate = entry

    # -- masks and drafts
    def snapshot(self) -> _Words:
        vocab_size = self.compiled.vocab.vocab_size
        if self.gate == IN_REASONING:
            return _Words(None, False, vocab_size)
        words = _host_words(1, vocab_size, torch.device("cpu"))
        LLGuidanceMatcher._fill_words([self], words)
        return _Words(words[0], self.matcher.is_accepting(), vocab_size)

    def mask_row(self, device: torch.device) -> torch.Tensor:
        return LLGuidanceMatcher.mask_rows([self], device)[0]

    @classmethod
    def mask_rows(cls, views: Sequence[MaskView], device: torch.device) -> torch.Tensor:
        """The step's masks: every matcher's computed into one host buffer, copied to the
        device once and unpacked there."""
        vocab_size = views[0].compiled.vocab.vocab_size
        words = _host_words(len(views), vocab_size, device)
        cls._fill_words(views, words)
        return _unpack(words, vocab_size, device)

    @staticmethod
    def _fill_words(views: Sequence[LLGuidanceMatcher], words: torch.Tensor) -> None:
        """Row i of `words` [len(views), W]: view i's allowed tokens, EOS cleared, its
        reasoning gate applied. Computed on llguidance's thread pool (the GIL released) where
        there are several and cores to spread them over."""
        parsing = [(v.matcher, i) for i, v in enumerate(views) if v.gate != IN_REASONING]
        if len(parsing) > 1 and _PARALLEL:
            _executor().unsafe_compute_mask_ptr(parsing, words.data_ptr(), words.shape[1] * 4, len(views))
        else:
            for matcher, i in parsing:
                matcher.unsafe_compute_mask_ptr(words[i].data_ptr(), words.shape[1] * 4)
        clears = {id(v.compiled._eos_clear): v.compiled._eos_clear for v in views}
        if len(clears) == 1:  # one vocabulary (always, in one engine): one vector operation
            words &= next(iter(clears.values()))
        else:
            for row, v in zip(words, views):
                row &= v.compiled._eos_clear
        for i, v in enumerate(views):
            if v.gate == IN_REASONING:
                words[i] = -1  # free text while thinking
            elif v.gate == BEFORE_REASONING:
                words[i, v.start_id // 32] |= _bit(v.start_id)

    def draft(self) -> list[int]:
        """The forced bytes in the tokenizer's natural tokenization, as far as the grammar
        takes them (drafts are verified against samples, so a short draft costs only speed)."""
        if self.gate is not None:
            return []
        forced = self.matcher.compute_ff_bytes()[:MAX_JUMP_CHARS]
        text = whole_characters(forced)
        if not text:
            return []
        tokens = self.compiled.vocab.encode(text)
        return tokens[: self.matcher.validate_tokens(tokens)]


def _executor() -> Any:
    """llguidance's thread pool for a batch's masks (its default size: 80% of the cores, at
    most 32), made on first use."""
    global _EXECUTOR
    with _TOKENIZERS_LOCK:
        if _EXECUTOR is None:
            from llguidance import LLExecutor

            _EXECUTOR = LLExecutor()
        return _EXECUTOR


def _host_words(rows: int, vocab_size: int, device: torch.device) -> torch.Tensor:
    """[rows, words] int32 host buffer, pinned when it goes to a GPU (so its copy does not
    wait for the forward already queued; PyTorch's pinned allocator reuses freed buffers)."""
    return torch.empty((rows, (vocab_size + 31) // 32), dtype=torch.int32, pin_memory=device.type == "cuda")


def _unpack(words: torch.Tensor, vocab_size: int, device: torch.device) -> torch.Tensor:
    """32-bit allow-words [B, W] on the host -> [B, V] bool on `device`, True = banned."""
    if device.type == "cpu":  # numpy's unpackbits: 13x torch's shifts for [64, 128k] on a CPU
        import numpy as np

        banned = np.unpackbits((~words).numpy().view(np.uint8), axis=1, bitorder="little")
        return torch.from_numpy(banned[:, :vocab_size].view(np.bool_))
    on_device = words.to(device, non_blocking=True)
    shifts = torch.arange(32, dtype=torch.int32, device=device)  # made there: no copy
    bits = (on_device.unsqueeze(-1) >> shifts) & 1
    return bits.flatten(1)[:, :vocab_size] == 0


def _bit(token: int) -> int:
    """Token `token`'s bit in its int32 word (bit 31 is the sign bit)."""
    bit = token % 32
    return -(1 << 31) if bit == 31 else 1 << bit
