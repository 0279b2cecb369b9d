"""The cache report's rules without a runtime: where a prompt diverged given its token spans
(a BOS with none included), rows whose counts or tokenisation are missing, n > 1 and forked
records, the tokenize operation's BOS handling through the TokenizerManager the server uses,
and the OpenAI backend's cached-token count. The report on real programs: test_cache_report.py."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from tokenizers import processors

from radixlm.lang.backend.base import BaseBackend
from radixlm.lang.cache_report import MARK, CallRecord, build_rows, divergence_char, format_table
from radixlm.runtime.config import EngineConfig
from radixlm.runtime.managers.tokenizer_manager import TokenizerManager
from radixlm.runtime.tokenizer import load_tokenizer
from radixlm.testing import build_tiny_model


def test_tokenize_counts_a_bos_as_prepare_does_and_gives_it_no_span():
    """The tiny tokenizer adds no BOS: here one that does, through the same TokenizerManager
    calls the server makes."""
    path = str(build_tiny_model("llama"))
    tokenizer = load_tokenizer(path)
    bos, bos_id = tokenizer.eos_token, tokenizer.convert_tokens_to_ids(tokenizer.eos_token)
    tokenizer.backend_tokenizer.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(single=f"{bos} $A", special_tokens=[(bos, bos_id)]),
        ]
    )
    info = {"context_len": 2048, "vocab_size": len(tokenizer)}
    tm = TokenizerManager(EngineConfig.from_kwargs(path), None, tokenizer, info, {})
    text = "Question: what is 2 plus 2?"
    out = tm.tokenize(text)
    assert out["input_ids"] == tm.prepare(text, None, {}).input_ids
    assert (
        out["input_ids"]
        == tm.prepare_many([{"prompt": text, "input_ids": None, "sampling_params": {}}])[0].input_ids
    )
    assert out["input_ids"][0] == bos_id and out["offsets"][0] == (0, 0)
    # only the BOS cached: the prompt diverged at its first character; one more token: after it
    assert divergence_char(out["offsets"], 1) == 0
    assert divergence_char(out["offsets"], 2) == out["offsets"][2][0] > 0
    for bad, error in [(5, TypeError), ("a\ud800", ValueError)]:
        with pytest.raises(error, match="text"):
            tm.tokenize(bad)
    tm.tokenizer = SimpleNamespace(is_fast=False)
    with pytest.raises(ValueError, match="no character offsets"):
        tm.tokenize(text)


class _Text:
    def __init__(self, text: str) -> None:
        self.text_ = text


class _Tokenizing(BaseBackend):
    """Tokenises one character per token after a BOS with no span, and counts its calls."""

    def __init__(self) -> None:
        self.calls = 0

    def tokenize(self, text: str) -> dict:
        self.calls += 1
        return {
            "input_ids": list(range(len(text) + 1)),
            "offsets": [(0, 0)] + [(i, i + 1) for i in range(len(text))],
        }


def test_divergence_after_a_bos_and_rows_without_counts_or_tokenizer():
    # token k's start; a token with no span (a BOS) starts where the one before it ended
    assert divergence_char([(0, 0), (0, 3), (3, 5)], 0) == 0
    assert divergence_char([(0, 0), (0, 3), (3, 5)], 2) == 3
    assert divergence_char([(0, 3), (0, 0)], 1) == 3
    assert divergence_char([(0, 3), (3, 5)], 2) is None

    source = _Text("abcdefgh and more")
    backend = _Tokenizing()
    records = [
        CallRecord("gen", "a", source, 8, {"prompt_tokens": 9, "cached_tokens": 4}),
        CallRecord("gen", None, source, 8, [{"prompt_tokens": 9, "cached_tokens": 8}] * 2),  # n = 2
        CallRecord("select", "s", source, 8, {"prompt_tokens": 9}),  # no cached count
        CallRecord("gen", "a", source, 8, {"prompt_tokens": 9, "cached_tokens": 1}, fork=(1, 0)),
    ]
    a, unnamed, uncounted, forked = build_rows(records, backend)
    assert (a.diverged_at_char, a.context) == (3, "abc" + MARK + "defgh")  # token 4 is "d"
    assert (unnamed.call, unnamed.diverged_at_char, unnamed.context) == ("<gen #2>", None, "")
    assert (uncounted.cached_tokens, uncounted.hit_rate, uncounted.context) == (None, None, None)
    assert (forked.diverged_at_char, forked.label) == (0, "a (fork 1.0)")
    assert backend.calls == 1  # one prompt, tokenised once, and only for rows that need it
    assert "?" in format_table([uncounted]).splitlines()[2]

    # a backend that cannot tokenise: counts, but no divergence point
    (plain,) = build_rows(records[:1], BaseBackend())
    assert (plain.cached_tokens, plain.diverged_at_char, plain.context) == (4, None, None)
    with pytest.raises(NotImplementedError, match="cannot tokenise"):
        BaseBackend().tokenize("x")


def test_openai_usage_gives_cached_tokens_where_the_server_reports_them():
    openai_backend = pytest.importorskip("radixlm.lang.backend.openai")
    details = SimpleNamespace(cached_tokens=128)
    assert openai_backend._cached_tokens(SimpleNamespace(prompt_tokens_details=details)) == {
        "cached_tokens": 128
    }
    assert openai_backend._cached_tokens(SimpleNamespace(prompt_tokens_details=None)) == {}
    assert openai_backend._cached_tokens(SimpleNamespace()) == {}
