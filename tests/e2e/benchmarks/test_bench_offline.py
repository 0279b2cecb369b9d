"""Smoke test of benchmarks/bench_offline.py on CPU at the tiny shape: the HF peer and radixlm
(and an ablation) run on the same saved weights, every case is reported with its method's
fields, and the saved model folder is removed. No timing assertions: 16 tokens and medians of
3 runs keep the decode slope (the step time) well above a loaded 2-core machine's noise."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[3] / "benchmarks" / "bench_offline.py"


def test_bench_offline_tiny_cpu(tmp_path):
    out, folder = tmp_path / "offline.json", tmp_path / "model"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--shape",
            "tiny",
            "--device",
            "cpu",
            "--batch-sizes",
            "1,3",
            "--input-len",
            "12",
            "--output-len",
            "16",
            "--prefill-len",
            "40",
            "--reps",
            "3",
            "--engines",
            "radixlm,hf-eager",
            "--ablations",
            "no-cuda-graph,fp8-kv",
            "--model-dir",
            str(folder),
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "| engine | case |" in proc.stdout
    data = json.loads(out.read_text())
    assert data["model"]["params"] > 0 and data["bandwidth_gbs"] > 0 and data["peak_tflops"] > 0
    assert data["run_info"]["machine"]["device_name"] and "bench_offline.py" in data["command"]
    got = {(r["engine"], r["case"], r["batch_size"]) for r in data["results"]}
    for engine in ("radixlm", "hf-eager"):
        assert {(engine, "decode", 1), (engine, "decode", 3), (engine, "prefill", 1)} <= got
    assert ("radixlm-no-cuda-graph", "decode", 3) in got and ("radixlm-fp8-kv", "decode", 3) in got
    fp8 = data["engines"]["radixlm-fp8-kv"]
    assert fp8["quantization"] == "fp8" and fp8["kv_cache_dtype"] == "float8_e4m3fn"
    for r in data["results"]:
        if r["case"] == "decode":
            assert r["decode_ms_per_step"] is not None and r["output_tok_s"] > 0 and r["mbu"] > 0
        else:
            assert r["prefill_tflops"] > 0 and r["input_len"] == 40
    radix = [r for r in data["results"] if r["engine"] == "radixlm" and r["case"] == "decode"]
    assert all(r["scheduler"]["steps"] >= r["output_len"] - 1 for r in radix)
    assert data["engines"]["radixlm"]["attention_backend"] == "torch"  # CPU: the reference kernels
    assert not folder.exists()


def test_decode_step_is_empty_when_the_slope_is_inside_the_noise(capsys):
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        from bench_offline import decode_step
    finally:
        sys.path.remove(str(SCRIPT.parent))
    assert abs(decode_step("e", 1, t1=0.010, tn=0.016, n=4) - 0.002) < 1e-12
    assert decode_step("e", 3, t1=0.0118, tn=0.0112, n=4) is None  # the CI run that read -0.19 ms
    assert "no step time" in capsys.readouterr().out
