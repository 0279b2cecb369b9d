"""Smoke test of benchmarks/bench_programs.py: it runs, writes complete JSON, and the radix
cache shows up in the hit rates. No timing assertions."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_programs.py"
FIELDS = ["num_programs", "errors", "wall_s", "programs_per_s", "generated_tokens", "gen_tokens_per_s",
          "prompt_tokens", "cached_tokens", "cache_hit_rate"]


def test_bench_programs_smoke(tmp_path):
    out = tmp_path / "bench.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--num-programs", "4", "--max-tokens", "2", "--repeats", "1",
         "--workloads", "few-shot,select", "--device", "cpu", "--json", str(out)],
        capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "few-shot" in proc.stdout and "| workload" in proc.stdout  # the table

    data = json.loads(out.read_text())
    for key in ("command", "date", "machine", "settings", "results"):
        assert key in data, key
    assert data["machine"]["device_name"] and data["machine"]["torch"]
    assert set(data["results"]) == {"few-shot", "select"}
    for name, result in data["results"].items():
        assert "speedup" in result
        for config in ("cache_on", "cache_off"):
            run = result[config]
            for field in FIELDS:
                assert field in run, (name, config, field)
            assert run["num_programs"] == 4 and run["errors"] == 0, (name, config, run)
            assert run["prompt_tokens"] > 0, (name, config)
    few = data["results"]["few-shot"]
    assert few["cache_on"]["generated_tokens"] > 0
    assert few["cache_off"]["cached_tokens"] == 0
    assert few["cache_off"]["cache_hit_rate"] < 0.01
    assert few["cache_on"]["cache_hit_rate"] > few["cache_off"]["cache_hit_rate"] + 0.3
    # select: the shared header is reused too
    assert data["results"]["select"]["cache_on"]["cache_hit_rate"] > 0.3
