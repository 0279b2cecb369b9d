"""Smoke test of benchmarks/bench_cache_view.py: a small tree and batch on the demo model, with
snapshots back to back and none. The JSON is complete, snapshots were taken only where asked, and
each reports the scheduler's time. No timing assertions."""

from __future__ import annotations

import json

from bench_scripts import run_bench_script


def test_bench_cache_view_smoke(tmp_path):
    out = tmp_path / "cache-view.json"
    args = {
        "--model": "demo",
        "--device": "cpu",
        "--batch-size": 4,
        "--groups": 2,
        "--fill-prompts": 40,
        "--prefix-len": 32,
        "--question-len": 8,
        "--output-len": 8,
        "--reps": 2,
        "--intervals-ms": 0,
        "--max-nodes": 20,
        "--json": out,
    }
    proc = run_bench_script("bench_cache_view.py", args, timeout=240)
    assert "| snapshots every |" in proc.stdout and "| never |" in proc.stdout

    data = json.loads(out.read_text())
    for key in ("run_info", "command", "card", "settings", "tree_tokens", "rows"):
        assert key in data, key
    assert "bench_cache_view.py" in data["command"] and data["tree_tokens"] > 0
    never, back_to_back = data["rows"]
    assert never["snapshot_interval_ms"] is None and back_to_back["snapshot_interval_ms"] == 0
    assert never["snapshots_per_run"] == 0 and never["snapshot_share"] == 0
    assert back_to_back["snapshots_per_run"] >= 1 and back_to_back["snapshot_ms"] > 0
    for row in data["rows"]:
        assert len(row["runs"]) == 2 and all(r["steps"] > 0 for r in row["runs"])
