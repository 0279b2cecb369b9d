"""Grammar-constrained decoding: a regex or JSON schema becomes a token-level automaton
(outlines-core `Index`) that says, in each state, which token ids may come next.

Pieces, each usable alone:
- `token_bytes_table` / `build_vocabulary`: the raw bytes of every ordinary token (byte-level
  BPE strings mapped back through the GPT-2 byte table, SentencePiece `▁` and `<0xNN>` byte
  fallbacks decoded), added/special tokens and EOS left out, as outlines-core needs them.
- `json_schema_to_regex`, `normalize_json_schema`: a schema given as JSON text, a dict, a
  pydantic model class or a msgspec Struct type, as a regex.
- `GrammarCache`: compiled grammars in an LRU keyed by (kind, pattern); compilation runs on a
  worker thread (outlines-core releases the GIL), so the scheduler keeps stepping while a new
  grammar compiles. A failure is cached too, so a repeat fails at once.
- `Grammar`: one request's position in its automaton: allowed tokens, advance, final or not,
  and the text every continuation must start with (for jump-forward).
- `build_vocab_mask`: the banned-token mask of a whole batch, built with one scatter from
  per-state token-id tensors cached on the device.

EOS is never part of an automaton's vocabulary: a grammar in a final state lets the request's
own stop tokens through, and a final state with no continuation ends the request.
"""

from __future__ import annotations

import collections
import concurrent.futures
import json
import re
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

# JSON-schema whitespace between tokens: what outlines-core uses by default (at most one space)
DEFAULT_WHITESPACE = r"[ ]?"
GRAMMAR_CACHE_SIZE = 256
MASK_ROW_CACHE_BYTES = 64 << 20  # per compiled grammar and device: banned-token rows kept ready
MAX_JUMP_CHARS = 256


# ---------------------------------------------------------------------------- vocabulary
def _gpt2_unicode_to_byte() -> dict[str, int]:
    """Byte-level BPE writes each byte as a printable character; this is the way back."""
    keep = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars = keep[:]
    extra = 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(keep, chars)}


_UNICODE_TO_BYTE = _gpt2_unicode_to_byte()
_BYTE_FALLBACK = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


def _is_byte_level(tokenizer: Any) -> bool:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return False
    cfg = json.loads(backend.to_str())

    def has_byte_level(node: Any) -> bool:
        if not isinstance(node, dict):
            return False
        if node.get("type") == "ByteLevel":
            return True
        return any(has_byte_level(n) for n in node.get("decoders", []) + node.get("pretokenizers", []))

    return has_byte_level(cfg.get("decoder")) or has_byte_level(cfg.get("pre_tokenizer"))


def token_bytes_table(tokenizer: Any) -> dict[int, bytes]:
    """token id -> the bytes it stands for, for every ordinary token (special/added ones left out)."""
    added = set(getattr(tokenizer, "added_tokens_decoder", {}) or {})
    added |= set(getattr(tokenizer, "all_special_ids", []) or [])
    byte_level = _is_byte_level(tokenizer)
    table: dict[int, bytes] = {}
    for token, tid in tokenizer.get_vocab().items():
        if tid in added:
            continue
        if byte_level:
            try:
                table[tid] = bytes(_UNICODE_TO_BYTE[ch] for ch in token)
            except KeyError:  # not a byte-level string (a stray added token): leave it out
                continue
        else:
            fallback = _BYTE_FALLBACK.match(token)
            table[tid] = (
                bytes([int(fallback.group(1), 16)]) if fallback else token.replace("\u2581", " ").encode()
            )
    return table


class TokenizerVocab:
    """What the grammar machinery needs from a tokenizer, built once per tokenizer."""

    def __init__(self, tokenizer: Any, vocab_size: int, eos_ids: Sequence[int]) -> None:
        from outlines_core import Vocabulary

        self.vocab_size = vocab_size  # the model's logits width (may exceed the tokenizer's)
        self.tokenizer = tokenizer
        self.token_bytes = token_bytes_table(tokenizer)
        self.eos_ids = frozenset(eos_ids)
        anchor_eos = min(self.eos_ids) if self.eos_ids else (tokenizer.eos_token_id or 0)
        mapping: dict[bytes, list[int]] = {}
        for tid, raw in self.token_bytes.items():
            if tid not in self.eos_ids and tid != anchor_eos and tid < vocab_size and raw:
                mapping.setdefault(raw, []).append(tid)
        self.anchor_eos = anchor_eos
        self.vocabulary = Vocabulary(anchor_eos, mapping)

    def encode(self, text: str) -> list[int]:
        """The tokenizer's own (natural) tokenization of a piece of text, no special tokens."""
        return list(self.tokenizer(text, add_special_tokens=False).input_ids)


# ---------------------------------------------------------------------------- schemas
def normalize_json_schema(schema: Any) -> str:
    """A JSON schema as canonical JSON text, from JSON text, a dict/bool, a pydantic model
    class or a msgspec Struct type. Raises ValueError/TypeError naming the problem."""
    if isinstance(schema, str):
        try:
            value = json.loads(schema)
        except json.JSONDecodeError as exc:
            raise ValueError(f"json_schema is not valid JSON: {exc}") from None
    elif isinstance(schema, (dict, bool)):
        value = schema
    elif isinstance(schema, type) and hasattr(schema, "model_json_schema"):  # pydantic v2 model
        value = schema.model_json_schema()
    elif isinstance(schema, type) and _is_msgspec_struct(schema):
        import msgspec

        value = msgspec.json.schema(schema)
    else:
        raise TypeError(
            f"json_schema must be JSON text, a dict, a pydantic model class or a msgspec Struct type, "
            f"got {type(schema).__name__}"
        )
    if not isinstance(value, (dict, bool)):
        raise ValueError(f"json_schema must be a JSON object (or true/false), got {type(value).__name__}")
    return json.dumps(value, separators=(",", ":"))  # key order kept: it orders the output


def _is_msgspec_struct(cls: type) -> bool:
    try:
        import msgspec
    except ImportError:
        return False
    return issubclass(cls, msgspec.Struct)


# Keywords the regex translation would silently drop; an output could then break them, so a
# schema using one is refused instead (naming it and where it is).
UNENFORCED_KEYWORDS = frozenset(
    {
        "minimum",
        "maximum",
        "exclusiveMinimum",
        "exclusiveMaximum",
        "multipleOf",
        "uniqueItems",
        "minProperties",
        "maxProperties",
        "patternProperties",
        "propertyNames",
        "dependentRequired",
        "dependentSchemas",
        "dependencies",
        "contains",
        "minContains",
        "maxContains",
        "if",
        "then",
        "else",
        "not",
        "unevaluatedProperties",
        "unevaluatedItems",
        # outlines-core extensions whose regexes accept invalid JSON numbers ("12.", "1e+")
        "maxDigitsFraction",
        "maxDigitsExponent",
    }
)
_SCHEMA_MAPS = ("properties", "$defs", "definitions")  # name -> schema
_SCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")  # [schema, ...]
_SCHEMA_ONE = ("items", "additionalProperties", "additionalItems")  # a schema (or bool)


def unenforced_features(schema: Any, path: str = "") -> list[str]:
    """`keyword at /json/pointer` for every keyword of UNENFORCED_KEYWORDS in the schema."""
    if not isinstance(schema, dict):
        return []
    found = [f"{k} at {path or '/'}" for k in schema if k in UNENFORCED_KEYWORDS]
    # outlines-core keeps only one string constraint: a pattern next to a length, or a format
    # next to either, would be dropped
    lengths = [k for k in ("minLength", "maxLength") if k in schema]
    if "pattern" in schema and lengths:
        found.append(f"pattern together with {'/'.join(lengths)} at {path or '/'}")
    if "format" in schema and (lengths or "pattern" in schema):
        found.append(f"format together with {'/'.join(lengths) or 'pattern'} at {path or '/'}")
    props = schema.get("properties")
    if isinstance(props, dict):  # outlines-core writes property names into the regex unescaped
        found += [
            f"a property name with a quote, backslash or control character ({name!r}) at {path or '/'}"
            for name in props
            if any(c in name for c in '"\\') or any(ord(c) < 0x20 for c in name)
        ]
    for key in _SCHEMA_MAPS:
        for name, sub in (schema.get(key) or {}).items() if isinstance(schema.get(key), dict) else []:
            found += unenforced_features(sub, f"{path}/{key}/{name}")
    for key in _SCHEMA_LISTS:
        for i, sub in enumerate(schema.get(key) or []) if isinstance(schema.get(key), list) else []:
            found += unenforced_features(sub, f"{path}/{key}/{i}")
    for key in _SCHEMA_ONE:
        found += unenforced_features(schema.get(key), f"{path}/{key}")
    return found


def json_schema_to_regex(schema_json: str, whitespace_pattern: str | None = None) -> str:
    """The regex that matches exactly the JSON texts the schema allows (outlines-core's
    translation). Raises ValueError naming what is not supported."""
    from outlines_core.json_schema import build_regex_from_schema

    unenforced = unenforced_features(json.loads(schema_json))
    if unenforced:
        raise ValueError(
            f"unsupported json_schema feature(s), which the output could not be held to: "
            f"{', '.join(unenforced[:5])}"
        )
    try:
        return build_regex_from_schema(
            schema_json, DEFAULT_WHITESPACE if whitespace_pattern is None else whitespace_pattern
        )
    except Exception as exc:  # outlines-core raises assorted types for unsupported features
        raise ValueError(f"unsupported json_schema: {exc}") from None


def check_regex_syntax(pattern: str) -> None:
    """Cheap early check (Python's syntax is close to, not the same as, the automaton's; the
    compile step catches the rest)."""
    if not isinstance(pattern, str) or not pattern:
        raise ValueError(f"regex must be a non-empty string, got {pattern!r}")
    try:
        re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"invalid regex {pattern!r}: {exc}") from None


# ---------------------------------------------------------------------------- compiled grammars
class CompiledGrammar:
    """An automaton over token ids, shared by every request with the same pattern. Per-state
    results are memoised; only the scheduler thread touches them."""

    def __init__(self, key: tuple[str, str], regex: str, index: Any, vocab: TokenizerVocab) -> None:
        self.key = key
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
            t = torch.tensor(self.allowed(state), dtype=torch.int64, device=device)
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
        text = ""
        for cut in range(len(forced), max(len(forced) - 4, -1), -1):  # drop a torn UTF-8 tail
            try:
                text = forced[:cut].decode("utf-8")
                break
            except UnicodeDecodeError:
                continue
        tokens: list[int] = []
        cur: int | None = state
        for t in self.vocab.encode(text) if text else []:
            cur = self.next_state(cur, t)
            if cur is None:
                break
            tokens.append(t)
        self._drafts[state] = tokens
        return tokens


class Grammar:
    """One request's progress through a compiled grammar."""

    def __init__(self, compiled: CompiledGrammar) -> None:
        self.compiled = compiled
        self.state = compiled.initial_state

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
        self.state = nxt
        return True

    def accepts(self, tokens: Sequence[int]) -> int | None:
        """The state after `tokens` from the current one, or None if any is refused."""
        state = self.state
        for t in tokens:
            state = self.compiled.next_state(state, t)
            if state is None:
                return None
        return state

    def draft(self) -> list[int]:
        """Tokens the grammar forces from here (see CompiledGrammar.draft)."""
        return self.compiled.draft(self.state)

    def at(self, state: int) -> Grammar:
        """A view of the same grammar in another state (for drafted positions)."""
        view = Grammar(self.compiled)
        view.state = state
        return view


@dataclass
class GrammarStats:
    hits: int = 0
    misses: int = 0
    compile_time_s: float = 0.0
    failures: int = 0


class GrammarCache:
    """Compiled grammars by (kind, pattern), LRU, compiled on one worker thread."""

    def __init__(
        self, vocab: TokenizerVocab, capacity: int = GRAMMAR_CACHE_SIZE, whitespace_pattern: str | None = None
    ) -> None:
        self.vocab = vocab
        self.whitespace_pattern = whitespace_pattern
        self.capacity = capacity
        self._entries: collections.OrderedDict[tuple[str, str], concurrent.futures.Future] = (
            collections.OrderedDict()
        )
        self._lock = threading.Lock()
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="radixlm-grammar")
        self.stats = GrammarStats()

    @staticmethod
    def key_of(regex: str | None, json_schema: str | None) -> tuple[str, str] | None:
        if json_schema is not None:
            return ("json", json_schema)
        if regex is not None:
            return ("regex", regex)
        return None

    def get(self, key: tuple[str, str]) -> concurrent.futures.Future:
        """A future of the CompiledGrammar (or of the ValueError that names the problem)."""
        with self._lock:
            fut = self._entries.get(key)
            if fut is not None:
                self._entries.move_to_end(key)
                self.stats.hits += 1
                return fut
            self.stats.misses += 1
            fut = self._pool.submit(self._compile, key)
            self._entries[key] = fut
            while len(self._entries) > self.capacity:
                self._entries.popitem(last=False)
            return fut

    def _compile(self, key: tuple[str, str]) -> CompiledGrammar:
        from outlines_core import Index

        start = time.perf_counter()
        kind, pattern = key
        try:
            regex = json_schema_to_regex(pattern, self.whitespace_pattern) if kind == "json" else pattern
            try:
                index = Index(regex, self.vocab.vocabulary)
            except Exception as exc:
                what = "json_schema" if kind == "json" else f"regex {pattern!r}"
                raise ValueError(f"cannot compile {what}: {exc}") from None
            return CompiledGrammar(key, regex, index, self.vocab)
        except ValueError:
            self.stats.failures += 1
            raise
        finally:
            self.stats.compile_time_s += time.perf_counter() - start

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


# ---------------------------------------------------------------------------- masks
def build_vocab_mask(
    grammars: Sequence[Grammar | None],
    stop_ids: Sequence[Sequence[int]],
    vocab_size: int,
    device: torch.device,
) -> torch.Tensor | None:
    """[B, V] bool, True where a token is banned, or None when no row is constrained.
    Row i bans everything its grammar does not allow; a grammar in a final state also lets
    `stop_ids[i]` through. One stack of per-state rows cached on the device (no loop over
    the vocabulary, no per-step host-to-device copy once the states have been seen)."""
    if all(g is None for g in grammars):
        return None
    free = torch.zeros(vocab_size, dtype=torch.bool, device=device)
    mask = torch.stack(
        [g.compiled.mask_row(g.state, device)[:vocab_size] if g is not None else free for g in grammars]
    )
    for i, g in enumerate(grammars):
        if g is not None and stop_ids[i] and g.is_final:
            mask[i, list(stop_ids[i])] = False
    return mask
