"""What the cache view costs decode: step time of a batch-64 decode with radix-tree snapshots
taken while it runs, beside the same decode with none, in one process.

    python benchmarks/bench_cache_view.py --model /tmp/bench-8b --device cuda --json out.json   # GPU
    python benchmarks/bench_cache_view.py --model demo --device cpu --batch-size 16            # CPU smoke

The tree is filled first with `--fill-prompts` requests in `--groups` few-shot families (a
shared prefix each, then a distinct question), so a snapshot walks a tree with thousands of
branches, as a server's would. Then `--batch-size` requests of those families decode
`--output-len` tokens each (greedy, fixed length; their prompts are cached, so the time is
decode), with a thread asking for snapshots (`Engine.cache_snapshot`, what `/cache.json`
does) every `--intervals-ms` (0: back to back, far more often than the page's 2 s refresh),
or never. Modes alternate within each repetition, in reverse order every other one, so
drift and order effects hit all of them alike.

Reported per mode (medians over `--reps`): wall time per decode step (the batch's wall time
over the steps it took), the scheduler's own loop time per decode step, snapshots taken and
the scheduler's time per snapshot, the step time added against no snapshots, and the share of
decode wall time the scheduler spent taking snapshots (their summed `snapshot_ms` over the
wall time: the direct cost, free of run-to-run noise).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run_info import machine_info, result_header

from radixlm import Engine


def _snapshots(engine: Engine, interval_s: float, max_nodes: int, stop: threading.Event, out: list) -> None:
    while not stop.is_set():
        snap = engine.cache_snapshot(max_nodes=max_nodes)
        out.append(snap["replicas"][0]["snapshot_ms"])
        if interval_s:
            stop.wait(interval_s)


def decode_once(engine: Engine, prompts: list[list[int]], args: argparse.Namespace, interval_ms: int | None):
    params = {"max_new_tokens": args.output_len, "temperature": 0, "ignore_eos": True}
    before = engine.get_server_info()
    stop, taken = threading.Event(), []
    worker = None
    if interval_ms is not None:
        worker = threading.Thread(
            target=_snapshots, args=(engine, interval_ms / 1000, args.max_nodes, stop, taken), daemon=True
        )
    start = time.perf_counter()
    if worker:
        worker.start()
    engine.generate(input_ids=prompts, sampling_params=params)
    wall = time.perf_counter() - start
    stop.set()
    if worker:
        worker.join()
    after = engine.get_server_info()
    steps = after["decode_steps"] - before["decode_steps"]
    iter_s = after["decode_iter_s"] - before["decode_iter_s"]
    return {
        "wall_ms_per_step": 1e3 * wall / steps,
        "iter_ms_per_step": 1e3 * iter_s / steps,
        "steps": steps,
        "snapshots": len(taken),
        "snapshot_ms_mean": statistics.mean(taken) if taken else None,
        "snapshot_share": sum(taken) / 1e3 / wall,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, help="an HF folder, or 'demo' for the trained demo model")
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--groups", type=int, default=8)
    p.add_argument("--prefix-len", type=int, default=256)
    p.add_argument("--question-len", type=int, default=32)
    p.add_argument("--fill-prompts", type=int, default=2000)
    p.add_argument("--output-len", type=int, default=128)
    p.add_argument("--intervals-ms", default="0,100,2000")
    p.add_argument("--max-nodes", type=int, default=200)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    if args.model == "demo":
        import radixlm as rl

        args.model = str(rl.demo_model_path())
    rng = random.Random(args.seed)
    options = {"device": args.device, "dtype": args.dtype}
    with Engine(args.model, **options) as engine:
        vocab = engine.model_config.vocab_size
        token = lambda: rng.randrange(1000, vocab - 300)  # ordinary ids, no specials
        prefixes = [[token() for _ in range(args.prefix_len)] for _ in range(args.groups)]
        ask = lambda g: prefixes[g] + [token() for _ in range(args.question_len)]
        fill = [ask(i % args.groups) for i in range(args.fill_prompts)]
        for i in range(0, len(fill), 256):
            engine.generate(input_ids=fill[i : i + 256], sampling_params={"max_new_tokens": 1})
        prompts = [ask(i % args.groups) for i in range(args.batch_size)]
        modes: list[int | None] = [None] + [int(x) for x in args.intervals_ms.split(",")]
        decode_once(engine, prompts, args, None)  # warm-up: caches these prompts and their outputs
        runs: dict[str, list[dict]] = {str(m): [] for m in modes}
        for rep in range(args.reps):
            for mode in modes if rep % 2 == 0 else modes[::-1]:  # so that order effects cancel
                runs[str(mode)].append(decode_once(engine, prompts, args, mode))
        engine.check_accounting()
        tree = engine.cache_snapshot(max_nodes=args.max_nodes)["replicas"][0]
    rows = []
    for mode in modes:
        rs = runs[str(mode)]
        med = {k: statistics.median(r[k] for r in rs) for k in ("wall_ms_per_step", "iter_ms_per_step")}
        taken = [r["snapshot_ms_mean"] for r in rs if r["snapshot_ms_mean"] is not None]
        rows.append(
            {
                "snapshot_interval_ms": mode,
                **med,
                "snapshots_per_run": statistics.median(r["snapshots"] for r in rs),
                "snapshot_ms": statistics.median(taken) if taken else None,
                "snapshot_share": statistics.median(r["snapshot_share"] for r in rs),
                "runs": rs,
            }
        )
    base = rows[0]["wall_ms_per_step"]
    for row in rows:
        row["step_time_added"] = row["wall_ms_per_step"] / base - 1
    info = machine_info(args.device)
    print(
        f"tree: {tree['device_tokens']} tokens, snapshot of {len(tree['nodes'])} nodes "
        f"({tree['omitted_nodes']} more children summarised)"
    )
    print(
        "| snapshots every | ms/step (wall) | ms/step (loop) | snapshots/run | ms/snapshot | added | share |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        every = "never" if r["snapshot_interval_ms"] is None else f"{r['snapshot_interval_ms']} ms"
        snap = f"{r['snapshot_ms']:.3f}" if r["snapshot_ms"] is not None else "-"
        print(
            f"| {every} | {r['wall_ms_per_step']:.2f} | {r['iter_ms_per_step']:.2f} | "
            f"{r['snapshots_per_run']:.0f} | {snap} | {100 * r['step_time_added']:+.2f}% | "
            f"{100 * r['snapshot_share']:.3f}% |"
        )
    result = {
        **result_header(argv, info),
        "settings": vars(args),
        "tree_tokens": tree["device_tokens"],
        "rows": rows,
    }
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
