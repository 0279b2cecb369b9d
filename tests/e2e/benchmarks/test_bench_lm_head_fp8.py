"""Smoke test of benchmarks/bench_lm_head_fp8.py: a few greedy tokens of two prompts on the demo
model (text prompts), and one on a tiny model folder without a tokenizer (random ids). The JSON is
complete, the engines report their heads, and the numbers are consistent with each other. The
fp32 floor (prefill against decode, no fp8) stays below the fp8 head's differences."""

from __future__ import annotations

import json
import shutil

from bench_scripts import run_bench_script

from radixlm.testing import build_tiny_model

SUMMARY = (
    "prompts",
    "positions",
    "tf_top1_agreement",
    "tf_top1_disagreements",
    "tf_abs_dlogprob",
    "diverged_prompts",
    "first_divergence",
    "decode_common_positions",
    "decode_abs_dlogprob",
    "floor_abs_dlogprob",
    "floor_top1_agreement",
)


def _check(data: dict, prompts: int, tokens: int) -> None:
    for key in ("run_info", "command", "card", "settings", "engines", "prompts", "summary"):
        assert key in data, key
    assert "bench_lm_head_fp8.py" in data["command"] and data["run_info"]["machine"]["device_name"]
    ref, fp8 = data["engines"]["reference"], data["engines"]["fp8_head"]
    assert ref["lm_head_quantization"] is None and fp8["lm_head_quantization"] == "fp8"
    assert ref["device"] == fp8["device"] == "cpu" and ref["dtype"] == fp8["dtype"] == "float32"
    summary = data["summary"]
    for key in SUMMARY:
        assert key in summary, key
    assert summary["prompts"] == len(data["prompts"]) == prompts and summary["positions"] == prompts * tokens
    for row in data["prompts"]:
        assert row["positions"] == tokens and 0 <= row["tf_top1_agreement"] <= 1
        tf = row["tf_abs_dlogprob"]
        assert 0 < tf["mean"] <= tf["max"], tf  # the fp8 head ran: its logprobs differ
        diverge = row["diverges_at"]
        assert diverge is None or 0 <= diverge < tokens
        assert row["decode_common_positions"] == (tokens if diverge is None else diverge)
        assert (row["ref_gap_at_divergence"] is None) == (diverge is None)
        assert row["floor_abs_dlogprob"]["max"] < min(1e-4, tf["max"])  # fp32: summation order only
    assert summary["diverged_prompts"] == sum(r["diverges_at"] is not None for r in data["prompts"])


def test_bench_lm_head_fp8_smoke_on_the_demo_model(tmp_path):
    out = tmp_path / "lm-head.json"
    args = {
        "--model": "demo",
        "--device": "cpu",
        "--dtype": "float32",
        "--max-new-tokens": 12,
        "--num-prompts": 2,
        "--json": out,
    }
    proc = run_bench_script("bench_lm_head_fp8.py", args, timeout=300)
    assert "| prompt | positions | TF top-1 agree |" in proc.stdout and "| all | 24 |" in proc.stdout
    data = json.loads(out.read_text())
    assert data["prompt_source"] == "text"
    _check(data, 2, 12)


def test_bench_lm_head_fp8_random_ids_without_a_tokenizer(tmp_path):
    src = build_tiny_model("llama-tied")
    folder = tmp_path / "no-tokenizer"
    shutil.copytree(src, folder, ignore=shutil.ignore_patterns("tokenizer*", "special_tokens_map.json"))
    out = tmp_path / "lm-head.json"
    base = {"--model": folder, "--device": "cpu", "--dtype": "float32", "--max-new-tokens": 6}
    args = {**base, "--num-prompts": 1, "--random-prompt-len": 10, "--tokenizer": src, "--json": out}
    run_bench_script("bench_lm_head_fp8.py", args, timeout=300)
    data = json.loads(out.read_text())
    assert data["prompt_source"] == "random ids" and data["prompt_lens"] == [10]
    _check(data, 1, 6)
