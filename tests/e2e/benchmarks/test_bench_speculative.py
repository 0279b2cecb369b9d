"""Smoke test of benchmarks/bench_speculative.py: one family, two examples, a few tokens, every
variant on the demo model. The outputs agree with speculation off, the JSON is complete, the
counters add up, and a regenerated request's drafts are accepted. No timing assertions."""

from __future__ import annotations

import json

from bench_scripts import run_bench_script

VARIANTS = ("off", "ngram", "lookahead")
FIELDS = [
    "requests",
    "output_tokens",
    "decode_steps",
    "spec_proposed_tokens",
    "spec_accepted_tokens",
    "acceptance_rate",
    "accepted_per_step",
    "tokens_per_step",
    "wall_s",
    "output_tok_per_s",
    "outputs_hash",
    "identical_to_off",
    "steps_saved_vs_off",
]


def test_bench_speculative_smoke(tmp_path):
    out = tmp_path / "speculative.json"
    args = {
        "--families": "regenerate",
        "--count": 2,
        "--max-new-tokens": 16,
        "--warmup": 0,
        "--cpu-threads": 1,
        "--json": out,
    }
    proc = run_bench_script("bench_speculative.py", args, timeout=240)
    assert "| family | variant |" in proc.stdout and "| regenerate | lookahead |" in proc.stdout

    data = json.loads(out.read_text())
    for key in (
        "command",
        "date",
        "git_commit",
        "git_dirty",
        "machine",
        "device",
        "dtype",
        "settings",
        "runs",
    ):
        assert key in data, key
    assert "bench_speculative.py" in data["command"] and data["machine"]["device_name"]
    assert data["device"] == "cpu" and data["dtype"] == "float32"
    assert data["outputs_identical"] == dict.fromkeys(VARIANTS, True)
    assert set(data["runs"]) == set(VARIANTS)
    for variant, fams in data["runs"].items():
        assert set(fams) == {"regenerate", "all"}
        for name, m in fams.items():
            for field in FIELDS:
                assert field in m, (variant, name, field)
            assert m["requests"] == 4  # two prompts, each sent twice
            assert m["identical_to_off"] is True
            assert 0 < m["output_tokens"] <= 4 * 16
            assert 0 < m["decode_steps"] <= m["output_tokens"] - m["requests"]
            assert 0 <= m["spec_accepted_tokens"] <= m["spec_proposed_tokens"]
        assert fams["all"]["outputs_hash"] == data["runs"]["off"]["all"]["outputs_hash"]
    off, lookahead = data["runs"]["off"]["all"], data["runs"]["lookahead"]["all"]
    assert off["spec_proposed_tokens"] == 0 and off["acceptance_rate"] is None
    assert off["decode_steps"] == off["output_tokens"] - off["requests"]  # no drafts: one token a step
    # the repeated requests find their first sending's output in the tree
    assert lookahead["spec_accepted_tokens"] > 0 and lookahead["decode_steps"] < off["decode_steps"]
    assert lookahead["steps_saved_vs_off"] > 0
