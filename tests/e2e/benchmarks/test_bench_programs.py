"""Smoke tests of benchmarks/programs/run.py (the SGLang-paper program workloads and their
ablations) and of its old entry point benchmarks/bench_programs.py: they run, write complete
JSON, and the radix cache shows up in the hit rates. No timing assertions."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[3] / "benchmarks"
FIELDS = [
    "num_programs",
    "errors",
    "wall_s",
    "programs_per_s",
    "latency_mean_s",
    "latency_p90_s",
    "generated_tokens",
    "prompt_tokens",
    "cached_tokens",
    "cache_hit_rate",
]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}


def _run(args: list[str]) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=300, env=ENV)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def test_programs_run_ablations_smoke(tmp_path):
    out = tmp_path / "bench.json"
    proc = _run(
        [
            str(BENCH / "programs" / "run.py"),
            "--num-programs",
            "4",
            "--max-tokens",
            "2",
            "--repeats",
            "1",
            "--workloads",
            "few-shot,judge",
            "--ablations",
            "cache,hints",
            "--device",
            "cpu",
            "--json",
            str(out),
        ]
    )
    assert "judge" in proc.stdout and "| workload" in proc.stdout  # the table

    data = json.loads(out.read_text())
    for key in ("command", "date", "git_commit", "machine", "settings", "configs", "results"):
        assert key in data, key
    assert data["machine"]["device_name"] and data["machine"]["torch"] and data["machine"]["cpu_count"]
    assert data["settings"]["ablations"] == ["cache", "hints"]
    assert set(data["results"]) == {"few-shot", "judge"}
    for name, result in data["results"].items():
        assert set(result["ratio_vs_baseline"]) == {"cache", "hints"}
        for config in ("baseline", "cache", "hints"):
            run = result[config]
            for field in FIELDS:
                assert field in run, (name, config, field)
            assert run["num_programs"] == 4 and run["errors"] == 0, (name, config, run)
            assert run["prompt_tokens"] > 0 and run["generated_tokens"] > 0, (name, config)
            if data["settings"]["driver"] == "threads":  # per-program latency
                assert run["latency_p90_s"] >= run["latency_mean_s"] * 0.5 > 0
            else:  # the program's own run_batch: the batch's wall time only
                assert run["latency_mean_s"] is None and run["wall_s"] > 0
        assert result["cache"]["cached_tokens"] == 0 and result["cache"]["cache_hit_rate"] < 0.01
        assert result["baseline"]["cache_hit_rate"] > 0.3, (name, result["baseline"])
    # judge: 5 dimension gens + a score gen per program
    assert data["results"]["judge"]["baseline"]["requests"] >= 4 * 6


def test_bench_programs_wrapper_smoke(tmp_path):
    out = tmp_path / "old.json"
    _run(
        [
            str(BENCH / "bench_programs.py"),
            "--workloads",
            "select",
            "--num-programs",
            "2",
            "--repeats",
            "1",
            "--device",
            "cpu",
            "--json",
            str(out),
        ]
    )
    data = json.loads(out.read_text())
    assert data["settings"]["ablations"] == ["cache"]
    select = data["results"]["select"]
    assert select["cache"]["cache_hit_rate"] < 0.01 < select["baseline"]["cache_hit_rate"]
