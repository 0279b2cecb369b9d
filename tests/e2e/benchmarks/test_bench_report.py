"""benchmarks/report.py: from result JSON of each kind (serving with --ablate and --hf-baseline,
program ablations and bench_json produced by running the scripts at tiny sizes; the GPU offline
benchmark's JSON built here in its documented layout) it writes a markdown report with the
provenance of every file and valid PNG plots. No timing assertions."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[3] / "benchmarks"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _run(args: list[str]) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=300, env=ENV)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("results")
    paths = {k: d / f"{k}.json" for k in ("serving", "programs", "json", "offline")}
    _run(
        [
            str(BENCH / "serving.py"),
            "--device",
            "cpu",
            "--gsp-num-groups",
            "2",
            "--gsp-prompts-per-group",
            "2",
            "--gsp-system-prompt-len",
            "32",
            "--gsp-question-len",
            "4",
            "--gsp-output-len",
            "4",
            "--repeats",
            "1",
            "--ablate",
            "--hf-baseline",
            "--mem-bandwidth-gbs",
            "10",
            "--peak-tflops",
            "0.1",
            "--json",
            str(paths["serving"]),
        ]
    )
    _run(
        [
            str(BENCH / "programs" / "run.py"),
            "--num-programs",
            "2",
            "--max-tokens",
            "2",
            "--repeats",
            "1",
            "--workloads",
            "few-shot,select",
            "--ablations",
            "cache",
            "--device",
            "cpu",
            "--json",
            str(paths["programs"]),
        ]
    )
    _run(
        [
            str(BENCH / "bench_json.py"),
            "--num-requests",
            "2",
            "--repeats",
            "1",
            "--skip-mask",
            "--modes",
            "greedy",
            "--device",
            "cpu",
            "--json",
            str(paths["json"]),
        ]
    )
    paths["offline"].write_text(json.dumps(fake_offline()))
    return paths


def fake_offline() -> dict:
    """The layout benchmarks/bench_offline.py writes (made-up numbers: structure only)."""
    # bench_offline.py keeps its provenance inside run_info, under these names
    run_info = {
        "date": "2026-11-27 00:00:00 UTC",
        "commit": "0123456789abcdef",
        "dirty": False,
        "machine": {
            "torch": "2.11.0+cu130",
            "python": "3.12.3",
            "nproc": 16,
            "cpu_model": "Xeon",
            "device_name": "NVIDIA H100 80GB HBM3",
            "gpu_name": "NVIDIA H100 80GB HBM3",
        },
    }
    results = []
    engines = (
        ("radixlm", 1.0),
        ("radixlm-no-cache", 0.9),
        ("radixlm-no-cuda-graph", 0.8),
        ("hf-eager", 0.3),
        ("hf-static-compile", 0.6),
    )
    for engine, speed in engines:
        for bs in (1, 8, 64):
            step_ms = 8.0 / speed * (1 + bs / 64)
            results.append(
                {
                    "engine": engine,
                    "case": "decode",
                    "batch_size": bs,
                    "input_len": 512,
                    "output_len": 128,
                    "ttft_ms": None,
                    "decode_ms_per_step": step_ms,
                    "decode_tok_s": bs * 1000 / step_ms,
                    "output_tok_s": bs * 1000 / step_ms,
                    "mbu": 0.6 * speed,
                    "prefill_tflops": None,
                    "mfu": None,
                    "cache_hit_rate": None,
                    "wall_s": 1.5,
                }
            )
        results.append(
            {
                "engine": engine,
                "case": "prefill",
                "batch_size": 8,
                "input_len": 2048,
                "output_len": 1,
                "ttft_ms": 90.0 / speed,
                "decode_ms_per_step": None,
                "decode_tok_s": None,
                "output_tok_s": None,
                "mbu": None,
                "prefill_tflops": 400.0 * speed,
                "mfu": 0.5 * speed,
                "cache_hit_rate": None,
                "wall_s": 0.4,
            }
        )
        results.append(
            {
                "engine": engine,
                "case": "shared-prefix",
                "batch_size": 32,
                "input_len": 1024,
                "output_len": 64,
                "ttft_ms": 40.0 / speed,
                "decode_ms_per_step": 12.0 / speed,
                "decode_tok_s": None,
                "output_tok_s": 2000.0 * speed,
                "mbu": None,
                "prefill_tflops": None,
                "mfu": None,
                "cache_hit_rate": 0.9 if engine == "radixlm" else 0.0,
                "wall_s": 2.0,
            }
        )
    results[0]["mbu"] = float("nan")  # written as NaN by json.dumps; the report shows '-'
    return {
        "run_info": run_info,
        "command": "python benchmarks/bench_offline.py --json out.json",
        "card": "NVIDIA H100 80GB HBM3",
        "model": {
            "name": "llama-3.1-8b-shape-random",
            "params": 8030261248,
            "dtype": "bfloat16",
            "weight_bytes": 16060522496,
        },
        "bandwidth_gbs": 3000.0,
        "peak_tflops": 750.0,
        "results": results,
    }


def _check_png(path: Path) -> None:
    data = path.read_bytes()
    assert len(data) > 1000 and data[:8] == PNG_SIGNATURE, path


def test_detect_kinds(inputs):
    sys.path.insert(0, str(BENCH))
    try:
        import report
    finally:
        sys.path.remove(str(BENCH))
    for kind, path in inputs.items():
        assert report.detect_kind(json.loads(path.read_text())) == kind
    assert report.detect_kind({"something": "else"}) is None


def test_report_writes_markdown_and_plots(inputs, tmp_path):
    out_dir = tmp_path / "report"
    bogus = tmp_path / "other.json"
    bogus.write_text('{"not": "a result"}')
    proc = _run([str(BENCH / "report.py"), *map(str, inputs.values()), str(bogus), "--out-dir", str(out_dir)])
    assert "report.md" in proc.stdout

    md = (out_dir / "report.md").read_text()
    for path in inputs.values():
        assert f"## {path.name}" in md, path.name
    assert "other.json: layout not recognised" in md
    serving = json.loads(inputs["serving"].read_text())
    commit = serving["git_commit"]
    if commit:
        assert commit[:10] in md
    assert "serving.py" in md and "programs/run.py" in md and "bench_json.py" in md  # the commands
    assert serving["machine"]["device_name"] in md
    assert "NVIDIA H100 80GB HBM3" in md and "8.03B params" in md and "0123456789" in md
    # serving: radixlm runs beside the HF peer with the ratio; offline: radixlm beside each HF engine
    assert "| hf_eager |" in md and "vs hf_eager" in md
    assert "radixlm vs hf-eager" in md and "radixlm vs hf-static-compile" in md
    assert "3.33x" in md  # offline decode: radixlm 1.0 / hf-eager 0.3 (the fake's speeds)
    assert "radixlm-no-cuda-graph" in md and "| nan |" not in md.lower()

    expected = {
        f"{inputs['serving'].stem}-latency.png",
        f"{inputs['serving'].stem}-throughput.png",
        f"{inputs['programs'].stem}-cache-ablation.png",
        f"{inputs['offline'].stem}-throughput-vs-batch.png",
    }
    assert expected <= {p.name for p in out_dir.glob("*.png")}
    for name in expected:
        _check_png(out_dir / name)
        assert f"]({name})" in md  # referenced from the report, by relative path
