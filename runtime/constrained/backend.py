"""The grammar-backend layer: what the scheduler and the sampler know of a constraint.

A request carries at most one constraint, a `Constraint` (kind, text): a regex, a JSON schema
(canonical JSON text), an EBNF/GBNF grammar (`ebnf`, SGLang's name) or a Lark grammar
(`grammar`). A backend compiles it (off the scheduler thread, cached: grammar_cache.py) into a
`CompiledConstraint`, shared by every request with the same constraint, which makes each
request its own `GrammarMatcher`. The scheduler, jump-forward, the output rules and the mask
builder use only the matcher's interface below.

Backends: "outlines" (outlines-core: a token automaton built once over the whole vocabulary,
whose per-state masks are then cached; regex and the JSON it can enforce) and "llguidance"
(an Earley parser with a lexer over the token trie: a mask is computed per step in tens of
microseconds, compiling takes about a millisecond; JSON schema with numeric bounds, recursive
`$ref`, formats, Lark and GBNF grammars, regex). "auto" picks per constraint (`choose_backend`).
"""

from __future__ import annotations

import abc
import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

BACKENDS = ("auto", "outlines", "llguidance")
CONSTRAINT_KINDS = ("regex", "json", "ebnf", "lark", "structural_tag")
# the sampling-parameter name of each kind, for messages
PARAM_OF_KIND = {
    "regex": "regex",
    "json": "json_schema",
    "ebnf": "ebnf",
    "lark": "grammar",
    "structural_tag": "structural_tag",
}
MAX_GRAMMAR_CHARS = 1 << 20  # larger constraint texts are refused before compiling


@dataclass(frozen=True)
class Constraint:
    kind: str  # one of CONSTRAINT_KINDS
    text: str  # the regex, the schema's or the structural tag's canonical JSON text, or the grammar


class GrammarMatcher(abc.ABC):
    """One request's position in its constraint."""

    @property
    @abc.abstractmethod
    def is_final(self) -> bool:
        """The output so far is complete: the request's stop tokens may end it here."""

    @property
    @abc.abstractmethod
    def is_complete(self) -> bool:
        """Final with nowhere to go: the output is done."""

    @abc.abstractmethod
    def advance(self, token: int) -> bool:
        """Take a sampled token; False if the constraint rejects it (the state is then unusable)."""

    @abc.abstractmethod
    def rollback(self, count: int) -> None:
        """Undo the last `count` advances (jump-forward's drafted rows are scored this way)."""

    @abc.abstractmethod
    def draft(self) -> list[int]:
        """Tokens the constraint forces next (possibly none): jump-forward's proposal."""

    @abc.abstractmethod
    def mask_row(self, device: torch.device) -> torch.Tensor:
        """[V] bool on `device`, True where the next token is banned. EOS is banned here;
        `build_vocab_mask` lets the request's stop tokens through in a final state."""

    def views(self, draft: list[int]) -> list[MaskView]:
        """What each of jump-forward's fed rows samples with: the mask here, then after each
        draft token (the matcher is left where it was)."""
        out: list[MaskView] = []
        taken = 0
        try:
            for j in range(len(draft) + 1):
                out.append(self.snapshot())
                if j == len(draft):
                    break
                if not self.advance(draft[j]):
                    raise RuntimeError(f"draft token {draft[j]} is rejected by the grammar that drafted it")
                taken += 1
        finally:
            self.rollback(taken)
        return out

    @property
    def error(self) -> str | None:
        """Why the matcher can go no further (a parser limit hit while computing a mask), else
        None. The output rules abort the request with it."""
        return None

    @abc.abstractmethod
    def snapshot(self) -> MaskView:
        """The mask and finality here, kept when the matcher moves on."""


class MaskView(abc.ABC):
    """A matcher's mask at one position (what `build_vocab_mask` reads)."""

    @property
    @abc.abstractmethod
    def is_final(self) -> bool: ...

    @abc.abstractmethod
    def mask_row(self, device: torch.device) -> torch.Tensor: ...

    @classmethod
    def mask_rows(cls, views: Sequence[MaskView], device: torch.device) -> torch.Tensor:
        """[len(views), >= V] bool for a step's views of this class: where a backend batches
        its work (one parallel fill, one host-to-device copy). A new tensor (the caller edits
        it); never waits for the device: it runs while the step's forward is on the GPU."""
        return torch.stack([v.mask_row(device) for v in views])


class CompiledConstraint(abc.ABC):
    """A compiled constraint, shared by every request with it."""

    constraint: Constraint
    backend: str

    @abc.abstractmethod
    def new_matcher(self, reasoning_end: int | None, reasoning_start: int | None) -> GrammarMatcher:
        """A matcher at the start. With `reasoning_end` (a think-end token id), the constraint
        applies only after that token; see grammar.ReasoningGate."""


def constraint_of(params: Any) -> Constraint | None:
    """The request's constraint from its sampling parameters (at most one is set: validated)."""
    if params.json_schema is not None:
        return Constraint("json", params.json_schema)
    if params.regex is not None:
        return Constraint("regex", params.regex)
    if params.ebnf is not None:
        return Constraint("ebnf", params.ebnf)
    if params.grammar is not None:
        return Constraint("lark", params.grammar)
    if params.structural_tag is not None:
        return Constraint("structural_tag", params.structural_tag)
    return None


def check_backend_setting(setting: str) -> None:
    if setting not in BACKENDS:
        raise ValueError(f"grammar_backend must be one of {', '.join(BACKENDS)}, got {setting!r}")


@functools.lru_cache(maxsize=512)
def choose_backend(setting: str, constraint: Constraint) -> str:
    """The backend a constraint compiles with under the `grammar_backend` setting.

    auto: a regex goes to outlines-core; a JSON schema, an EBNF or a Lark grammar to
    llguidance, except a schema that only outlines-core takes. Measured on the 324-schema
    corpus (benchmarks/bench_grammar_backends.py; 2-core CPU, tiny and Llama-3-sized
    vocabularies; results in benchmarks/results/grammar-backends-cpu-2026-12-06.json):
    llguidance accepts 252 schemas to outlines-core's 137 and compiles one in about 2 ms at
    the median (p99 27 ms, either vocabulary); outlines-core's median is 21 ms on the tiny
    vocabulary and 1.3 s on the large one, but its tail runs from 2 s (p90) to minutes, small
    schemas included (12 of 137 did not finish in 30 s, a 3.6k-character send_email tool
    among them), and a request waits for its grammar. outlines-core's masks are cached per
    state (1-2 us a step once seen) where llguidance computes each (75 us at the median on
    the tiny vocabulary, 243 us on the large): the price of the choice, paid per step. As
    vLLM uses llguidance for what xgrammar refuses."""
    check_backend_setting(setting)
    if setting != "auto":
        return setting
    if constraint.kind == "regex":
        return "outlines"
    if constraint.kind == "json":
        from radixlm.runtime.constrained.json_schema import json_schema_to_regex
        from radixlm.runtime.constrained.llguidance_backend import llguidance_grammar

        try:
            llguidance_grammar(constraint)
        except ValueError:
            try:
                json_schema_to_regex(constraint.text)
            except (ValueError, TypeError):
                return "llguidance"  # neither takes it: refused with llguidance's reason
            return "outlines"  # only outlines-core takes it
    return "llguidance"


@functools.lru_cache(maxsize=512)
def check_constraint(constraint: Constraint, backend_setting: str, whitespace_pattern: str | None) -> None:
    """Refuse, naming the problem, a constraint its backend cannot compile or enforce. Cheap
    (no vocabulary; a repeat is a cache hit): run with the request, before anything is queued."""
    text = constraint.text
    name = PARAM_OF_KIND[constraint.kind]
    if not isinstance(text, str) or not text:
        raise ValueError(f"{name} must be a non-empty string, got {text!r}")
    if len(text) > MAX_GRAMMAR_CHARS:
        raise ValueError(f"{name} is too large: {len(text)} characters, the limit is {MAX_GRAMMAR_CHARS}")
    backend = choose_backend(backend_setting, constraint)
    if backend == "outlines":
        from radixlm.runtime.constrained import json_schema

        if constraint.kind == "regex":
            json_schema.check_regex_syntax(text)
        elif constraint.kind == "json":
            json_schema.json_schema_to_regex(json_schema.normalize_json_schema(text), whitespace_pattern)
        else:
            raise ValueError(
                f"{name} needs the llguidance grammar backend (this engine runs grammar_backend="
                f"{backend_setting!r}, whose outlines-core takes only regex and json_schema)"
            )
        return
    from radixlm.runtime.constrained.llguidance_backend import llguidance_grammar

    llguidance_grammar(constraint, whitespace_pattern)  # raises ValueError naming the problem
