"""Smoke test of benchmarks/bench_hicache.py: a small multi-turn run whose working set is about
twice the device KV pool, with the host tier off and on (write_back). It writes complete JSON,
the greedy outputs agree, only the host tier serves host hits, and it raises the hit rate.
No timing assertions."""

from __future__ import annotations

import json

from bench_scripts import run_bench_script

CONVS, TURNS, HISTORY, TURN, OUTPUT, POOL = 6, 3, 200, 16, 4, 700
RUN_FIELDS = [
    "wall_s",
    "output_throughput",
    "request_throughput",
    "ttft_ms",
    "itl_ms",
    "tpot_ms",
    "cache_hit_rate",
    "prompt_tokens",
    "cached_tokens",
    "device_hit_tokens",
    "host_hit_tokens",
    "recomputed_tokens",
    "working_set_over_device_pool",
    "outputs_hash",
]


def test_bench_hicache_smoke(tmp_path):
    out = tmp_path / "hicache.json"
    args = {
        "--device": "cpu",
        "--conversations": CONVS,
        "--turns": TURNS,
        "--history-tokens": HISTORY,
        "--turn-tokens": TURN,
        "--output-tokens": OUTPUT,
        "--max-total-tokens": POOL,
        "--variants": "off,write_back",
        "--cpu-threads": 1,
        "--json": out,
    }
    proc = run_bench_script("bench_hicache.py", args, timeout=240)
    assert "| metric" in proc.stdout and "| vs off" in proc.stdout

    data = json.loads(out.read_text())
    for key in ("command", "date", "git_commit", "machine", "card", "device", "dtype", "settings", "ratios"):
        assert key in data, key
    assert "bench_hicache.py" in data["command"] and data["machine"]["device_name"]
    assert set(data["runs"]) == {"off", "write_back"}
    # each prompt is the history so far: HISTORY + (t + 1) user turns + t outputs
    prompt_tokens = CONVS * sum(HISTORY + (t + 1) * TURN + t * OUTPUT for t in range(TURNS))
    for name, run in data["runs"].items():
        for field in RUN_FIELDS:
            assert field in run, (name, field)
        assert run["completed"] == CONVS * TURNS and run["failed"] == 0, (name, run["errors"])
        assert run["output_tokens"] == CONVS * TURNS * OUTPUT  # ignore_eos
        assert run["prompt_tokens"] == prompt_tokens, name
        sources = run["device_hit_tokens"] + run["host_hit_tokens"] + run["recomputed_tokens"]
        assert sources == run["prompt_tokens"], (name, run)
        assert run["working_set_tokens"] == CONVS * (HISTORY + TURNS * (TURN + OUTPUT))
        assert run["working_set_over_device_pool"] > 1.5  # the workload must overflow the pool
        assert run["ttft_ms"]["median"] <= run["ttft_ms"]["p99"]

    off, on = data["runs"]["off"], data["runs"]["write_back"]
    assert data["outputs_match"] is True and off["outputs_hash"] == on["outputs_hash"]
    assert off["host_hit_tokens"] == 0 and on["host_hit_tokens"] > 0
    assert on["host_loads"] > 0 and on["bytes_to_host"] > 0 and on["bytes_to_device"] > 0
    assert on["host_pool_tokens"] == 8 * POOL  # the default --hicache-ratio
    assert on["cache_hit_rate"] > off["cache_hit_rate"]
    assert data["ratios"]["write_back"]["output_throughput_x"] > 0
