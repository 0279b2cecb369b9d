"""Smoke test of benchmarks/bench_json.py: it runs, writes complete JSON, outputs are identical
with jump-forward on and off and all validate, and the mask micro-benchmark reports. No timing
assertions."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[3] / "benchmarks" / "bench_json.py"
RUN_FIELDS = [
    "num_requests",
    "wall_s",
    "output_tokens",
    "output_tokens_per_s",
    "decode_steps",
    "jump_forward_tokens",
    "jump_forward_fraction",
    "finish_reasons",
    "repeats",
    "wall_s_all",
    "identical_across_repeats",
]


def test_bench_json_smoke(tmp_path):
    out = tmp_path / "bench.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--num-requests",
            "2",
            "--repeats",
            "1",
            "--mask-steps",
            "10",
            "--device",
            "cpu",
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "| mode" in proc.stdout and "| device" in proc.stdout  # the two tables

    data = json.loads(out.read_text())
    for key in ("command", "date", "git_commit", "machine", "settings", "results", "mask", "problems"):
        assert key in data, key
    assert data["machine"]["device_name"] and data["machine"]["torch"] and data["machine"]["nproc"]
    assert data["problems"] == []
    assert set(data["results"]) == {"greedy", "temperature"}
    for mode, result in data["results"].items():
        assert result["identical_on_off"] is True, (mode, result)
        assert "speedup_jf" in result and "decode_steps_saved" in result
        for config in ("jf_on", "jf_off", "unconstrained"):
            run = result[config]
            for field in RUN_FIELDS:
                assert field in run, (mode, config, field)
            assert run["num_requests"] == 2 and run["output_tokens"] > 0, (mode, config, run)
        for config in ("jf_on", "jf_off"):
            run = result[config]
            assert run["valid"] == 2 and run["invalid"] == 0, (mode, config, run["first_invalid"])
            assert run["finish_reasons"] == {"stop": 2}, (mode, config, run["finish_reasons"])
        on, off = result["jf_on"], result["jf_off"]
        assert on["output_tokens"] == off["output_tokens"]
        assert off["jump_forward_tokens"] == 0 and on["jump_forward_tokens"] > 0
        assert on["jump_forward_tokens"] == on["jump_forward_tokens_meta"]
        assert on["decode_steps"] < off["decode_steps"]
        assert result["unconstrained"]["max_new_tokens"] >= 1

    mask = data["mask"]
    assert mask["vocab_size"] > 0
    assert {(m["device"], m["batch"]) for m in mask["results"]} == {("cpu", 1), ("cpu", 8), ("cpu", 32)}
    assert all(m["warm_us_per_step"] > 0 and m["first_pass_us_per_step"] > 0 for m in mask["results"])
