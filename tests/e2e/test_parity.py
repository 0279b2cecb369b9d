"""Greedy outputs equal Hugging Face transformers token for token, on every architecture:
single requests, a batch of 16 mixed-length prompts, with a shared cached prefix, with
chunked prefill, and with a KV pool so small that requests are retracted and resumed."""

from __future__ import annotations

import random
import zlib

import pytest
from helpers import ARCHES, assert_greedy_matches_hf, get_engine, hf_greedy

NEW_TOKENS = 12


def random_prompts(count: int, lo: int, hi: int, seed: int, vocab: int = 8192) -> list[list[int]]:
    rng = random.Random(seed)
    # ids >= 4 skip the special tokens, so no prompt contains an EOS
    return [[rng.randrange(4, vocab) for _ in range(rng.randint(lo, hi))] for _ in range(count)]


@pytest.fixture(scope="module", params=ARCHES)
def arch(request):
    """Module-scoped so pytest groups the tests by architecture (engines are reused)."""
    return request.param


def greedy(n: int = NEW_TOKENS) -> dict:
    return {"max_new_tokens": n, "temperature": 0, "ignore_eos": True}


def test_single_request_matches_hf(arch):
    engine = get_engine(arch)
    prompt = "The quick brown fox jumps over the lazy dog. def main():\n    return 0"
    ids = engine.tokenizer(prompt).input_ids
    out = engine.generate(prompt, greedy(24))
    assert out["output_ids"] == hf_greedy(arch, ids, 24)
    assert out["meta_info"]["prompt_tokens"] == len(ids)
    assert out["meta_info"]["completion_tokens"] == 24
    assert out["meta_info"]["finish_reason"] == {"type": "length", "length": 24}


def test_batch_of_16_mixed_lengths_matches_hf(arch):
    engine = get_engine(arch)
    prompts = random_prompts(16, 3, 90, seed=zlib.crc32(arch.encode()) % 1000)
    outs = engine.generate(input_ids=prompts, sampling_params=greedy())
    assert len(outs) == 16
    for ids, out in zip(prompts, outs):
        assert_greedy_matches_hf(arch, ids, out["output_ids"])


def test_shared_prefix_in_cache_matches_hf(arch):
    engine = get_engine(arch)
    prefix = random_prompts(1, 100, 100, seed=7)[0]
    suffixes = random_prompts(16, 1, 40, seed=8)
    engine.generate(input_ids=prefix, sampling_params={"max_new_tokens": 0})  # warm the cache
    prompts = [prefix + s for s in suffixes]
    outs = engine.generate(input_ids=prompts, sampling_params=greedy())
    for ids, out in zip(prompts, outs):
        assert out["meta_info"]["cached_tokens"] >= 100
        assert_greedy_matches_hf(arch, ids, out["output_ids"])


def test_tiny_kv_pool_retracts_and_resumes(arch):
    # 16 requests of up to ~60 + 24 tokens against a 300-token pool: decode must retract
    engine = get_engine(arch, max_total_tokens=300)
    prompts = random_prompts(16, 20, 60, seed=11)
    before = engine.get_server_info()["retractions"]
    outs = engine.generate(input_ids=prompts, sampling_params=greedy(24))
    assert engine.get_server_info()["retractions"] > before, "the pool was meant to force retractions"
    assert any(o["meta_info"]["retractions"] > 0 for o in outs)
    for ids, out in zip(prompts, outs):
        assert_greedy_matches_hf(arch, ids, out["output_ids"])


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_chunked_prefill_matches_hf(arch):
    engine = get_engine(arch, chunked_prefill_size=16)
    prompts = random_prompts(4, 40, 120, seed=5)
    outs = engine.generate(input_ids=prompts, sampling_params=greedy())
    for ids, out in zip(prompts, outs):
        assert_greedy_matches_hf(arch, ids, out["output_ids"])


def test_fcfs_and_disabled_cache_give_the_same_tokens():
    prompts = random_prompts(8, 10, 50, seed=3)
    prefix = prompts[0][:8]
    prompts = [prefix + p for p in prompts]
    expected = [hf_greedy("llama", p, NEW_TOKENS) for p in prompts]
    for options in ({"schedule_policy": "fcfs"}, {"disable_radix_cache": True}):
        outs = get_engine("llama", **options).generate(input_ids=prompts, sampling_params=greedy())
        assert [o["output_ids"] for o in outs] == expected
        if options.get("disable_radix_cache"):
            assert all(o["meta_info"]["cached_tokens"] == 0 for o in outs)


def test_eos_stops_like_hf():
    engine = get_engine("llama")
    prompts = random_prompts(24, 5, 30, seed=21)
    outs = engine.generate(input_ids=prompts, sampling_params={"max_new_tokens": 40, "temperature": 0})
    for ids, out in zip(prompts, outs):
        ref = hf_greedy("llama", ids, 40, stop_at_eos=True)
        assert out["output_ids"] == ref
