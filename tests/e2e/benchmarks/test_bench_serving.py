"""Smoke test of benchmarks/serving.py: the engine backend on a tiny shared-prefix workload with
--ablate runs, writes complete JSON, orders its percentiles, controls output lengths, and shows
cache hits with the radix cache on and none with it off. No timing assertions."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[3] / "benchmarks" / "serving.py"
GROUPS, PER_GROUP, SYSTEM, QUESTION, OUTPUT = 2, 3, 64, 8, 6
RUN_FIELDS = [
    "completed",
    "failed",
    "duration_s",
    "request_throughput",
    "input_throughput",
    "output_throughput",
    "total_input_tokens",
    "total_output_tokens",
    "cache_hit_rate",
    "ttft_ms",
    "itl_ms",
    "tpot_ms",
    "e2e_ms",
    "mbu",
    "mfu",
]


def test_bench_serving_smoke(tmp_path):
    out = tmp_path / "serving.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--device",
            "cpu",
            "--gsp-num-groups",
            str(GROUPS),
            "--gsp-prompts-per-group",
            str(PER_GROUP),
            "--gsp-system-prompt-len",
            str(SYSTEM),
            "--gsp-question-len",
            str(QUESTION),
            "--gsp-output-len",
            str(OUTPUT),
            "--max-concurrency",
            "4",
            "--repeats",
            "2",
            "--ablate",
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "| metric" in proc.stdout and "ratios (cache on / cache off)" in proc.stdout

    data = json.loads(out.read_text())
    for key in (
        "command",
        "date",
        "git_commit",
        "machine",
        "device",
        "dtype",
        "settings",
        "model",
        "runs",
        "ratios",
        "mem_bandwidth_gbs",
        "peak_tflops",
    ):
        assert key in data, key
    assert "serving.py" in data["command"] and "--ablate" in data["command"]
    assert data["machine"]["torch"] and data["machine"]["nproc"] and data["machine"]["device_name"]
    assert data["model"]["params"] > 0 and data["mem_bandwidth_gbs"] > 0 and data["peak_tflops"] > 0
    assert set(data["runs"]) == {"cache_on", "cache_off"}
    n = GROUPS * PER_GROUP
    for name, run in data["runs"].items():
        for field in RUN_FIELDS:
            assert field in run, (name, field)
        assert len(run["durations_all_s"]) == 2
        assert run["completed"] == n and run["failed"] == 0, (name, run.get("errors"))
        assert run["total_input_tokens"] == n * (SYSTEM + QUESTION)
        assert run["total_output_tokens"] == n * OUTPUT  # ignore_eos + max_new_tokens
        for metric in ("ttft_ms", "itl_ms", "tpot_ms", "e2e_ms"):
            s = run[metric]
            assert s["mean"] is not None and s["mean"] > 0, (name, metric, s)
            assert s["median"] <= s["p90"] <= s["p99"], (name, metric, s)
        assert run["mbu"]["mbu"] is not None and run["mbu"]["mbu"] > 0
        assert run["mfu"]["mfu"] is not None and run["mfu"]["mfu"] > 0
    assert data["runs"]["cache_on"]["cache_hit_rate"] > 0.1
    assert data["runs"]["cache_off"]["cache_hit_rate"] == 0.0
    for key in ("output_throughput_on_over_off", "mean_ttft_on_over_off"):
        assert data["ratios"][key] > 0


def test_bench_serving_hf_baseline(tmp_path):
    """--hf-baseline: HF transformers generate runs on the same prompts after radixlm, and the JSON
    and table carry its throughput and the radixlm / HF ratio (structure and sanity only)."""
    out = tmp_path / "serving_hf.json"
    groups, per_group, system, question, output = 2, 2, 32, 4, 4
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--device",
            "cpu",
            "--gsp-num-groups",
            str(groups),
            "--gsp-prompts-per-group",
            str(per_group),
            "--gsp-system-prompt-len",
            str(system),
            "--gsp-question-len",
            str(question),
            "--gsp-output-len",
            str(output),
            "--repeats",
            "1",
            "--cpu-threads",
            "1",
            "--hf-baseline",
            "--hf-batch-size",
            "3",
            # given, so the device micro-benchmarks don't run: only HF and the structure matter here
            "--mem-bandwidth-gbs",
            "10",
            "--peak-tflops",
            "0.1",
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "hf_eager" in proc.stdout and "ratios (radixlm / hf_eager" in proc.stdout

    data = json.loads(out.read_text())
    assert set(data["runs"]) == {"cache_on"}  # HF is kept apart from the radixlm runs
    hf = data["hf_baseline"]["hf_eager"]
    n = groups * per_group
    assert hf["mode"] == "eager" and hf["device"] == "cpu" and hf["attn_implementation"] == "sdpa"
    assert hf["batch_size"] == 3 and hf["num_batches"] == 2 and hf["torch_threads"] == 1
    assert hf["completed"] == n and hf["total_input_tokens"] == n * (system + question)
    assert hf["total_output_tokens"] == n * output == data["runs"]["cache_on"]["total_output_tokens"]
    assert hf["generated_tokens_total"] == n * output  # fixed lengths: nothing wasted
    for key in ("duration_s", "output_throughput", "total_throughput", "request_throughput"):
        assert hf[key] > 0, key
    assert hf["e2e_ms"]["median"] <= hf["e2e_ms"]["p90"] <= hf["e2e_ms"]["p99"]
    ratio = data["ratios_vs_hf"]["hf_eager"]["cache_on"]
    assert ratio["output_throughput"] > 0 and ratio["total_throughput"] > 0
