"""Multi-turn benchmark of the radix cache's host tier (hierarchical cache) against the same
runtime without it, in one process.

    python benchmarks/bench_hicache.py --device cpu --conversations 6 --turns 3 --history-tokens 200 \\
        --turn-tokens 16 --output-tokens 4 --max-total-tokens 700 --json out.json
    python3 benchmarks/bench_hicache.py --model /tmp/bench-8b --device cuda --max-total-tokens 24576 \\
        --variants off,write_back,write_through --json hicache.json

Workload (from --seed): C conversations x T turns. Conversation c starts from its own random
"system + history" of --history-tokens (default: 2048 minus what the turns add, so the final
history is 2048 tokens); each turn appends --turn-tokens random user tokens, sends the whole
history as token ids (special ids excluded), generates --output-tokens (greedy, ignore_eos) and
appends them. All C conversations run at once as async clients, each doing its turns in order.
When the working set (the final histories) is several times the device KV pool
(--max-total-tokens), the plain radix cache evicts a conversation's prefix before its next turn;
the host tier keeps it in host memory and loads it back instead of recomputing it.

Variants (--variants): `off` = enable_hierarchical_cache False; `write_back`, `write_through` =
the host tier with that write policy (--hicache-ratio x the device pool). Engines run one after
another (each shut down before the next), each with --warmup untimed requests on unrelated ids
and a cache flush first. Cache numbers are server_info deltas over the timed run. Each variant
records a hash of all outputs; `outputs_match` says whether they agree (greedy: they should).
The issue's goal, per variant vs off: output throughput >= 2x and TTFT p50 <= 0.5x.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from run_info import command_line, git_commit, git_dirty, load_before_run, machine_info, utc_now
from serving import EngineTarget, _one, _random_ids, _special_ids, _summary, model_facts

VARIANTS = ("off", "write_back", "write_through")
GOAL = {"output_throughput_x": 2.0, "ttft_p50_x": 0.5}
# server_info counters: the run's numbers are after - before (warm-up requests are counted too)
COUNTERS = tuple(
    "prompt_tokens cached_tokens device_hit_tokens host_hit_tokens recomputed_tokens bytes_to_host "
    "bytes_to_device host_loads host_loaded_tokens retractions finished_requests".split()
)


# ---------------------------------------------------------------------- workload
def build_workload(args: argparse.Namespace, vocab: int, banned: set[int]) -> list[dict]:
    """Per conversation: its opening history and the user tokens of each turn (the outputs
    come from the model, so the later prompts are only known while running)."""
    rng = random.Random(args.seed)
    return [
        {
            "history": _random_ids(rng, args.history_tokens, vocab, banned),
            "turns": [_random_ids(rng, args.turn_tokens, vocab, banned) for _ in range(args.turns)],
        }
        for _ in range(args.conversations)
    ]


class _Turn:
    """One request in serving._one's timing (TTFT, ITL) that keeps its output ids: the next
    turn's prompt needs them, and serving's EngineTarget only reports chunk sizes."""

    def __init__(self, target: EngineTarget) -> None:
        self.target = target
        self.ids: list[int] = []

    async def request(self, ids: list[int], params: dict, on_chunk: Any) -> dict:
        tm = self.target.engine.tokenizer_manager
        meta: dict = {}
        async for item in tm.generate(tm.prepare(None, ids, params), stream=True):
            self.ids.extend(item["output_ids"])  # streamed chunks are deltas
            on_chunk(len(item["output_ids"]))
            meta = item["meta_info"]
        return meta


async def run_conversations(
    target: EngineTarget, convs: list[dict], output_tokens: int
) -> tuple[list[dict], list[list[list[int]]], list[int], float]:
    """All conversations at once, each turn sent when the previous one returned. Returns the
    request records, the outputs per conversation and turn, the final history lengths and
    the wall time."""
    t0 = time.perf_counter()

    async def conversation(c: int, conv: dict) -> tuple[list[dict], list[list[int]], int]:
        history, records, outputs = list(conv["history"]), [], []
        for t, user in enumerate(conv["turns"]):
            history += user
            turn = _Turn(target)
            rec = await _one(turn, {"input_ids": list(history), "output_len": output_tokens}, t0)
            rec.update(conversation=c, turn=t)
            records.append(rec)
            if not rec["ok"]:
                break  # the rest of this conversation has no prompt without this output
            history += turn.ids
            outputs.append(turn.ids)
        return records, outputs, len(history)

    done = await asyncio.gather(*(conversation(c, conv) for c, conv in enumerate(convs)))
    wall = time.perf_counter() - t0
    return [r for recs, _, _ in done for r in recs], [o for _, o, _ in done], [n for _, _, n in done], wall


async def _warmup(target: EngineTarget, reqs: list[dict]) -> None:
    t0 = time.perf_counter()
    await asyncio.gather(*(_one(_Turn(target), r, t0) for r in reqs))


def _flush(target: EngineTarget) -> None:
    for _ in range(50):  # refused while the warm-up's requests are still being retired
        if target.engine.flush_cache():
            return
        time.sleep(0.1)
    raise RuntimeError("flush_cache kept refusing")


# ---------------------------------------------------------------------- one variant
def engine_options(args: argparse.Namespace, variant: str) -> dict[str, Any]:
    names = ("device", "dtype", "max_total_tokens", "chunked_prefill_size", "max_running_requests")
    options: dict[str, Any] = {k: getattr(args, k) for k in names if getattr(args, k) is not None}
    if variant != "off":
        options.update(
            enable_hierarchical_cache=True,
            hicache_ratio=args.hicache_ratio,
            hicache_size=args.hicache_size,
            hicache_write_policy=variant,
        )
    return options


def run_variant(
    args: argparse.Namespace, variant: str, convs: list[dict], banned: set[int], vocab: int
) -> dict:
    options = engine_options(args, variant)
    print(f"[{variant}] starting engine: {options}", file=sys.stderr, flush=True)
    t_start = time.perf_counter()
    target = EngineTarget(args.model, options)
    try:
        startup_s = time.perf_counter() - t_start
        if args.warmup:
            # first-turn-sized prompts on ids no conversation shares: allocator, kernels, shapes
            rng = random.Random(args.seed + 7919)
            n_in = args.history_tokens + args.turn_tokens
            reqs = [
                {"input_ids": _random_ids(rng, n_in, vocab, banned), "output_len": args.output_tokens}
                for _ in range(args.warmup)
            ]
            target.run(_warmup(target, reqs))
        _flush(target)  # every variant starts from empty caches
        before = target.engine.get_server_info()
        records, outputs, final_lens, wall = target.run(run_conversations(target, convs, args.output_tokens))
        after = target.engine.get_server_info()
    finally:
        target.close()
    m = metrics(records, wall, before, after)
    m.update(
        options=options,
        startup_s=startup_s,
        device=target.device,
        dtype=target.dtype,
        outputs_hash=hashlib.sha256(json.dumps(outputs).encode()).hexdigest()[:16],
        working_set_tokens=sum(final_lens),
    )
    m["working_set_over_device_pool"] = m["working_set_tokens"] / m["device_pool_tokens"]
    m["_outputs"] = outputs  # for the cross-variant comparison; not written to the JSON
    return m


def metrics(records: list[dict], wall: float, before: dict, after: dict) -> dict:
    ok = [r for r in records if r["ok"] and r["ttft"] is not None]
    n_out = sum(r["output_tokens"] for r in ok)
    tpots = [(r["e2e"] - r["ttft"]) / (r["output_tokens"] - 1) for r in ok if r["output_tokens"] > 1]
    server = {k: (after.get(k) or 0) - (before.get(k) or 0) for k in COUNTERS}
    loads = server["host_loads"]
    # the engine reports the mean over its whole life: take this run's share of the sum
    lat_sum = lambda i: (i.get("load_latency_ms_mean") or 0) * (i.get("host_loads") or 0)
    return {
        "requests": len(records),
        "completed": len(ok),
        "failed": len(records) - len(ok),
        "errors": sorted({r["error"] for r in records if not r["ok"]})[:5],
        "wall_s": wall,
        "output_tokens": n_out,
        "output_throughput": n_out / wall,
        "request_throughput": len(ok) / wall,
        "ttft_ms": _summary([r["ttft"] for r in ok]),
        "itl_ms": _summary([x for r in ok for x in r["itl"]]),
        "tpot_ms": _summary(tpots),
        "e2e_ms": _summary([r["e2e"] for r in ok]),
        "ttft_ms_by_turn": [
            _summary([r["ttft"] for r in ok if r["turn"] == t])["median"]
            for t in range(1 + max((r["turn"] for r in ok), default=-1))
        ],
        **server,
        "cache_hit_rate": _x(server["cached_tokens"], server["prompt_tokens"]) or 0.0,
        "load_latency_ms_mean": (lat_sum(after) - lat_sum(before)) / loads if loads else None,
        # p50 and max: the engine's recent-loads window (the warm-up makes no loads)
        "load_latency_ms_p50": after.get("load_latency_ms_p50"),
        "load_latency_ms_max": after.get("load_latency_ms_max"),
        "hicache_pinned": after.get("hicache_pinned"),
        "device_pool_tokens": after.get("max_total_tokens") or after.get("total_tokens"),
        "host_pool_tokens": after.get("host_total_tokens"),
    }


# ---------------------------------------------------------------------- report
def _fmt(x: Any, digits: int = 2) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    if isinstance(x, int) and abs(x) >= 10000:
        return f"{x:,}"
    return str(x)


def _table(head: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    pad = lambda cells: [c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))]
    line = lambda cells: "| " + " | ".join(pad(cells)) + " |"
    sep = "|" + "|".join("-" * (w + 2) if i == 0 else "-" * (w + 1) + ":" for i, w in enumerate(widths)) + "|"
    return "\n".join([line(head), sep, *(line(r) for r in rows)])


ROWS: list[tuple[str, Any, int]] = [
    ("completed / failed", lambda m: f"{m['completed']} / {m['failed']}", 0),
    ("wall time (s)", lambda m: m["wall_s"], 3),
    ("output throughput (tok/s)", lambda m: m["output_throughput"], 1),
    ("request throughput (req/s)", lambda m: m["request_throughput"], 2),
    ("TTFT p50 (ms)", lambda m: m["ttft_ms"]["median"], 1),
    ("TTFT p99 (ms)", lambda m: m["ttft_ms"]["p99"], 1),
    ("TTFT p50 by turn (ms)", lambda m: " ".join(_fmt(x, 0) for x in m["ttft_ms_by_turn"]), 0),
    ("ITL p50 (ms)", lambda m: m["itl_ms"]["median"], 2),
    ("TPOT p50 (ms)", lambda m: m["tpot_ms"]["median"], 2),
    ("cache hit rate", lambda m: m["cache_hit_rate"], 3),
    ("prompt tokens", lambda m: m["prompt_tokens"], 0),
    ("device hit tokens", lambda m: m["device_hit_tokens"], 0),
    ("host hit tokens", lambda m: m["host_hit_tokens"], 0),
    ("recomputed tokens", lambda m: m["recomputed_tokens"], 0),
    (
        "MB to host / to device",
        lambda m: f"{m['bytes_to_host'] / 1e6:.1f} / {m['bytes_to_device'] / 1e6:.1f}",
        0,
    ),
    ("host loads (tokens)", lambda m: f"{m['host_loads']} ({m['host_loaded_tokens']})", 0),
    (
        "load ms mean/p50/max",
        lambda m: "/".join(_fmt(m[f"load_latency_ms_{s}"]) for s in ("mean", "p50", "max")),
        0,
    ),
    ("retractions", lambda m: m["retractions"], 0),
    ("working set / device pool", lambda m: m["working_set_over_device_pool"], 2),
    ("host pool (tokens), pinned", lambda m: f"{_fmt(m['host_pool_tokens'])}, {m['hicache_pinned']}", 0),
    ("outputs hash", lambda m: m["outputs_hash"], 0),
]


def _x(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def ratios(runs: dict[str, dict]) -> dict[str, dict]:
    """Each host-tier variant against off, and whether it meets the issue's goal."""
    off = runs.get("off")
    out = {}
    for name, m in runs.items():
        if off is None or name == "off":
            continue
        r = {
            "output_throughput_x": _x(m["output_throughput"], off["output_throughput"]),
            "request_throughput_x": _x(m["request_throughput"], off["request_throughput"]),
            "ttft_p50_x": _x(m["ttft_ms"]["median"], off["ttft_ms"]["median"]),
            "ttft_p99_x": _x(m["ttft_ms"]["p99"], off["ttft_ms"]["p99"]),
        }
        tp, ttft = r["output_throughput_x"], r["ttft_p50_x"]
        r["meets_goal"] = bool(
            tp and ttft and tp >= GOAL["output_throughput_x"] and ttft <= GOAL["ttft_p50_x"]
        )
        out[name] = r
    return out


def report(runs: dict[str, dict], rat: dict[str, dict]) -> str:
    names = list(runs)
    rows = [[label, *(_fmt(get(runs[n]), d) for n in names)] for label, get, d in ROWS]
    text = _table(["metric", *names], rows)
    if rat:
        keys = ("output_throughput_x", "request_throughput_x", "ttft_p50_x", "ttft_p99_x")
        head = "vs off|output tok/s (x)|req/s (x)|TTFT p50 (x)|TTFT p99 (x)|goal: >= 2x, <= 0.5x".split("|")
        rows = [
            [n, *(_fmt(r[k]) for k in keys), "met" if r["meets_goal"] else "not met"] for n, r in rat.items()
        ]
        text += "\n\n" + _table(head, rows)
    return text


# ---------------------------------------------------------------------- main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", default=None, help="model folder (default: the offline tiny model)")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    p.add_argument(
        "--max-total-tokens", type=int, default=24576, help="the device KV pool, for every variant"
    )
    p.add_argument("--conversations", type=int, default=64)
    p.add_argument("--turns", type=int, default=8)
    p.add_argument(
        "--history-tokens", type=int, default=None, help="default: 2048 - turns x (turn + output tokens)"
    )
    p.add_argument("--turn-tokens", type=int, default=64)
    p.add_argument("--output-tokens", type=int, default=32)
    p.add_argument("--hicache-ratio", type=float, default=8.0, help="host pool = ratio x device pool")
    p.add_argument(
        "--hicache-size", type=float, default=0.0, help="host pool in GiB (overrides the ratio when > 0)"
    )
    p.add_argument("--variants", default="off,write_back", help=f"comma list of {', '.join(VARIANTS)}")
    p.add_argument("--chunked-prefill-size", type=int, default=None)
    p.add_argument("--max-running-requests", type=int, default=None)
    p.add_argument("--warmup", type=int, default=4, help="untimed requests per engine (0: none)")
    p.add_argument("--cpu-threads", type=int, default=None, help="OMP_NUM_THREADS for the engine's processes")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if not args.variants or len(set(args.variants) & set(VARIANTS)) < len(args.variants):
        p.error(f"--variants: distinct names from {', '.join(VARIANTS)}")
    if args.history_tokens is None:
        args.history_tokens = max(1, 2048 - args.turns * (args.turn_tokens + args.output_tokens))
    if min(args.conversations, args.turns, args.history_tokens, args.turn_tokens, args.output_tokens) < 1:
        p.error("--conversations, --turns and the token counts must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.model is None:
        from radixlm.testing import default_model_path

        args.model = default_model_path()
    if args.cpu_threads:
        os.environ["OMP_NUM_THREADS"] = str(args.cpu_threads)  # inherited by the scheduler process
    from radixlm.runtime.tokenizer import load_tokenizer

    facts = model_facts(args.model)
    tokenizer = load_tokenizer(args.model)
    banned = _special_ids(tokenizer)
    vocab = min(facts["vocab_size"], len(tokenizer))
    convs = build_workload(args, vocab, banned)
    out: dict[str, Any] = {
        "command": command_line(argv),
        "date": utc_now(),
        "git_commit": git_commit(),
        "git_dirty": git_dirty(),
        "loadavg_before": load_before_run(),
        "settings": vars(args),
        "model": facts,
        "goal": GOAL,
    }
    runs: dict[str, dict] = {}
    for variant in args.variants:
        runs[variant] = run_variant(args, variant, convs, banned, vocab)
        first = runs[args.variants[0]]
        if "machine" not in out:
            out["machine"] = machine_info(first["device"])
        hashes = {n: m["outputs_hash"] for n, m in runs.items()}
        out.update(
            card=out["machine"].get("gpu_name"),
            device=first["device"],
            dtype=first["dtype"],
            runs={n: {k: v for k, v in m.items() if k != "_outputs"} for n, m in runs.items()},
            ratios=ratios(runs),
            outputs_hashes=hashes,
            outputs_match=len(set(hashes.values())) == 1,
            first_output_mismatch=first_mismatch(runs),
        )
        if args.json:  # after every variant, so a run cut short still leaves its finished variants
            Path(args.json).write_text(json.dumps(out, indent=2))
    m0 = runs[args.variants[0]]
    print(
        f"radixlm hicache benchmark: model={args.model} device={m0['device']} dtype={m0['dtype']} "
        f"card={out['card'] or out['machine']['device_name']}\n"
        f"{args.conversations} conversations x {args.turns} turns, history {args.history_tokens} + "
        f"{args.turns} x ({args.turn_tokens} user + {args.output_tokens} output) tokens; working set "
        f"{m0['working_set_tokens']} tokens = {m0['working_set_over_device_pool']:.2f}x the device pool "
        f"({m0['device_pool_tokens']}); hicache ratio {args.hicache_ratio}"
    )
    print(report(runs, out["ratios"]))
    print(
        f"outputs match across variants: {out['outputs_match']}"
        + (f" (first difference: {out['first_output_mismatch']})" if not out["outputs_match"] else "")
    )
    for name, m in runs.items():
        if m["errors"]:
            print(f"{name}: errors: {m['errors']}", file=sys.stderr)
    return 0 if all(m["failed"] == 0 for m in runs.values()) else 1


def first_mismatch(runs: dict[str, dict]) -> dict | None:
    """The first (conversation, turn) whose output differs from the first variant's."""
    ref, *others = runs.items()
    for name, m in others:
        for c, (a, b) in enumerate(zip(ref[1]["_outputs"], m["_outputs"])):
            if a != b:
                t = next((t for t, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
                return {"variant": name, "conversation": c, "turn": t}
    return None


if __name__ == "__main__":
    sys.exit(main())
