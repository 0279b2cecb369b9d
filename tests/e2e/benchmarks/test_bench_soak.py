"""Smoke test of benchmarks/soak.py: a few seconds of its mixed load against a real
`radixlm serve`; it exits 0 (nothing lost, accounting ok, memory within bound), every
request sent is accounted for, and the report has its samples. No timing assertions."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[3] / "benchmarks" / "soak.py"


def test_soak_smoke(tmp_path):
    out = tmp_path / "soak.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--minutes",
            "0.15",
            "--sample-s",
            "2",
            "--warmup-samples",
            "1",
            "--concurrency",
            "8",
            "--max-growth-mb",
            "256",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "problems: none" in proc.stdout
    report = json.loads(out.read_text())
    assert report["problems"] == [] and report["requests_failed"] == 0
    assert report["requests_sent"] > 0
    assert report["requests_completed"] + report["requests_abandoned_by_client"] == report["requests_sent"]
    assert len(report["samples"]) >= 2 and all(s["kv_accounting"] == "ok" for s in report["samples"])
    assert set(report["rss_growth_mb_after_warmup"]) >= {"server", "scheduler", "detokenizer"}
    end = report["end_pool"]
    assert end["free_tokens"] + end["evictable_tokens"] == end["total_tokens"]
