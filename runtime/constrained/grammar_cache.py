"""Compiled constraints, shared across requests and compiled off the scheduler thread.

`GrammarCache` keeps an LRU of futures keyed by (backend, constraint). Compilation runs on one
worker thread (outlines-core and llguidance both release the GIL while they build), so the
scheduler keeps stepping while a new grammar compiles; a request waits on its future. A
failure is cached like a success, so a repeat of a bad constraint fails at once.
"""

from __future__ import annotations

import collections
import concurrent.futures
import threading
import time
from dataclasses import dataclass

from radixlm.runtime.constrained.backend import (
    PARAM_OF_KIND,
    CompiledConstraint,
    Constraint,
    check_backend_setting,
    choose_backend,
)
from radixlm.runtime.constrained.grammar import CompiledGrammar
from radixlm.runtime.constrained.json_schema import json_schema_to_regex
from radixlm.runtime.constrained.vocabulary import TokenizerVocab

GRAMMAR_CACHE_SIZE = 256


@dataclass
class GrammarStats:
    hits: int = 0
    misses: int = 0
    compile_time_s: float = 0.0
    failures: int = 0


class GrammarCache:
    """Compiled constraints by (backend, constraint), LRU, compiled on one worker thread.
    `backend`: the engine's grammar_backend setting (auto | outlines | llguidance)."""

    def __init__(
        self,
        vocab: TokenizerVocab,
        capacity: int = GRAMMAR_CACHE_SIZE,
        whitespace_pattern: str | None = None,
        backend: str = "auto",
    ) -> None:
        check_backend_setting(backend)
        self.vocab = vocab
        self.whitespace_pattern = whitespace_pattern
        self.backend = backend
        self.capacity = capacity
        self._entries: collections.OrderedDict[tuple[str, Constraint], concurrent.futures.Future] = (
            collections.OrderedDict()
        )
        self._lock = threading.Lock()
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="radixlm-grammar")
        self.stats = GrammarStats()

    def get(self, constraint: Constraint | tuple[str, str]) -> concurrent.futures.Future:
        """A future of the CompiledConstraint (or of the ValueError that names the problem).
        `constraint`: a Constraint or a (kind, text) pair."""
        if not isinstance(constraint, Constraint):
            constraint = Constraint(*constraint)
        key = (choose_backend(self.backend, constraint), constraint)
        with self._lock:
            fut = self._entries.get(key)
            if fut is not None:
                self._entries.move_to_end(key)
                self.stats.hits += 1
                return fut
            self.stats.misses += 1
            fut = self._pool.submit(self._compile, key)
            self._entries[key] = fut
            # an evicted future stays valid for whoever holds it; only later lookups recompile
            while len(self._entries) > self.capacity:
                self._entries.popitem(last=False)
            return fut

    def _compile(self, key: tuple[str, Constraint]) -> CompiledConstraint:
        start = time.perf_counter()
        backend, constraint = key
        try:
            from radixlm.runtime.constrained.llguidance_backend import LLGuidanceCompiled

            if backend == "llguidance":
                return LLGuidanceCompiled(constraint, self.vocab, self.whitespace_pattern)
            try:
                return self._compile_outlines(constraint)
            except ValueError as outlines_error:
                if self.backend != "auto":
                    raise
                # auto: a constraint outlines-core translated but could not build an automaton
                # for (a schema's regex it cannot close over this vocabulary) goes to llguidance;
                # if llguidance refuses it too, outlines-core's reason is the one reported
                try:
                    return LLGuidanceCompiled(constraint, self.vocab, self.whitespace_pattern)
                except ValueError:
                    raise outlines_error from None
        except ValueError:
            self.stats.failures += 1
            raise
        finally:
            self.stats.compile_time_s += time.perf_counter() - start

    def _compile_outlines(self, constraint: Constraint) -> CompiledGrammar:
        from outlines_core import Index

        kind, pattern = constraint.kind, constraint.text
        if kind not in ("regex", "json"):
            raise ValueError(f"{PARAM_OF_KIND[kind]} needs the llguidance grammar backend")
        regex = json_schema_to_regex(pattern, self.whitespace_pattern) if kind == "json" else pattern
        regex = ascii_shorthands(regex)
        try:
            index = Index(regex, self.vocab.vocabulary)
        except Exception as exc:
            what = "json_schema" if kind == "json" else f"regex {pattern[:200]!r}"
            raise ValueError(f"cannot compile {what}: {_shortened(str(exc))}") from None
        return CompiledGrammar(constraint, regex, index, self.vocab)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def _shortened(message: str, limit: int = 300) -> str:
    """outlines-core's messages quote the whole regex, megabytes for a large schema."""
    return message if len(message) <= limit else f"{message[: limit // 2]} ... {message[-limit // 2 :]}"


# outlines-core compiles with Rust's regex, where \d, \w and \s are Unicode classes of the
# newest Unicode; Python's re knows an older Unicode and JSON Schema's (ECMA) patterns mean
# ASCII. Generating from the ASCII class is the one choice whose outputs match under all three.
_ASCII_CLASS_BODY = {"d": "0-9", "w": "0-9A-Za-z_", "s": "\\t\\n\\x0b\\x0c\\r "}


def ascii_shorthands(regex: str) -> str:
    """The regex with each \\d, \\w and \\s replaced by its ASCII class ([0-9], ...), inside
    and outside brackets. Escaped backslashes are respected; \\D, \\W and \\S, and any
    shorthand inside a negated class, are left as they are (there an ASCII class would widen
    what is allowed to characters the Unicode class excludes)."""
    out: list[str] = []
    in_class = negated = False
    i = 0
    while i < len(regex):
        ch = regex[i]
        if ch == "\\" and i + 1 < len(regex):
            nxt = regex[i + 1]
            body = None if in_class and negated else _ASCII_CLASS_BODY.get(nxt)
            out.append(body if body and in_class else f"[{body}]" if body else ch + nxt)
            i += 2
            continue
        if ch == "[" and not in_class:
            in_class = True
            out.append(ch)
            i += 1
            # a "]" first in the class (after an optional "^") is a literal, not its end
            negated = regex[i : i + 1] == "^"
            if negated:
                out.append("^")
                i += 1
            if regex[i : i + 1] == "]":
                out.append("]")
                i += 1
            continue
        if ch == "]" and in_class:
            in_class = False
        out.append(ch)
        i += 1
    return "".join(out)
