"""A tokenizer's vocabulary as outlines-core needs it: the raw bytes of every ordinary token.

Byte-level BPE strings are mapped back through the GPT-2 byte table; SentencePiece `▁` and
`<0xNN>` byte fallbacks are decoded. Special tokens are left out (they decode to nothing), and
EOS never enters an automaton's vocabulary (a grammar in a final state lets the request's own
stop tokens through). Added tokens that are not special (Qwen's `<tool_call>`, `<think>`) stand
for their text, as they decode: a grammar that spells the text may use them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any


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
    """token id -> the bytes it stands for: every ordinary token, and every added token that is
    not special (its text); special tokens are left out."""
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    added_text: dict[int, bytes] = {}
    for tid, added in (getattr(tokenizer, "added_tokens_decoder", {}) or {}).items():
        if getattr(added, "special", True) or tid in special:
            special.add(tid)
        else:
            added_text[tid] = str(getattr(added, "content", added)).encode()
    byte_level = _is_byte_level(tokenizer)
    table: dict[int, bytes] = dict(added_text)
    for token, tid in tokenizer.get_vocab().items():
        if tid in special or tid in added_text:
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
        # outlines-core's Vocabulary needs one EOS id of its own; it is kept out of the mapping
        # and CompiledGrammar.allowed drops it, so EOS is let through by the stop ids alone
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


def whole_characters(data: bytes) -> str:
    """The UTF-8 text of `data` without a torn character at its end (forced bytes may stop
    inside one); "" if nothing decodes."""
    for cut in range(len(data), max(len(data) - 4, -1), -1):
        try:
            return data[:cut].decode("utf-8")
        except UnicodeDecodeError:
            continue
    return ""
