"""Speculative decoding at batch 1 with drafts whose acceptance is controlled: tok/s per
accepted length, beside the same engine with speculation off.

    python benchmarks/bench_spec_reference.py --model /tmp/bench-8b --device cuda --json out.json

A reference run generates `--output-len` greedy tokens for a random prompt; its output then
sits in the radix tree, so with `lookahead` the repeated request's drafts are the reference's
own continuation (what a multi-turn agent re-quoting earlier output sees). With greedy
decoding they hold unless the verify step's numerics pick another token, so each step
accepts about `--draft-tokens` tokens: the runs sweep that length. Every timed run repeats
the same prompt (its prefill is a cache hit), and its output must equal the reference.

In bf16 a verify step (the request's row plus its draft rows, padded to a captured graph
size) does not reproduce one-row decoding bit for bit, so a reference made without drafts
is not what the drafted steps compute, and near-ties flip (random weights have many). The
reference is therefore the engine's own drafted output: the prompt is run again, drafting
from the previous run, until two runs agree (`--max-reference-runs`); the timed runs must
equal that fixed point. `reference_runs` reports how many it took, and the first run's
output (one row a step) is compared too (`matches_undrafted`).
Reported per variant: median wall time of a run, output tok/s, decode steps per run, drafts
proposed and accepted per run, accepted tokens per decode step, speedup over off; and the
byte floor (weight bytes / measured bandwidth) the batch-1 rate is compared with.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run_info import machine_info, result_header
from serving import measure_bandwidth_gbs, model_facts

from radixlm import Engine


def run_variant(args: argparse.Namespace, prompt: list[int], draft_tokens: int | None) -> dict[str, Any]:
    options = {"device": args.device, "dtype": args.dtype, "max_total_tokens": args.max_total_tokens}
    if draft_tokens:
        options |= {"speculative_algorithm": "lookahead", "speculative_num_draft_tokens": draft_tokens}
    params = {"max_new_tokens": args.output_len, "temperature": 0, "ignore_eos": True}
    with Engine(args.model, **options) as engine:
        undrafted = reference = engine.generate(input_ids=prompt, sampling_params=params)["output_ids"]
        runs = 1
        while draft_tokens and runs < args.max_reference_runs:
            again = engine.generate(input_ids=prompt, sampling_params=params)["output_ids"]
            runs += 1
            if again == reference:
                break
            reference = again
        before = engine.get_server_info()
        times, same = [], True
        for _ in range(args.reps):
            start = time.perf_counter()
            out = engine.generate(input_ids=prompt, sampling_params=params)
            times.append(time.perf_counter() - start)
            same &= out["output_ids"] == reference
        after = engine.get_server_info()
    delta = {k: (after[k] or 0) - (before[k] or 0) for k in ("decode_steps", "spec_accepted_tokens")}
    proposed = (after.get("spec_proposed_tokens") or 0) - (before.get("spec_proposed_tokens") or 0)
    wall = statistics.median(times)
    steps = delta["decode_steps"] / args.reps
    return {
        "draft_tokens": draft_tokens or 0,
        "outputs_match_reference": same,
        "reference_runs": runs,
        "matches_undrafted": reference == undrafted,
        "run_s": wall,
        "tok_s": args.output_len / wall,
        "decode_steps_per_run": steps,
        "proposed_per_run": proposed / args.reps,
        "accepted_per_run": delta["spec_accepted_tokens"] / args.reps,
        "tokens_per_step": args.output_len / steps if steps else None,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--input-len", type=int, default=512)
    p.add_argument("--output-len", type=int, default=256)
    p.add_argument("--draft-tokens", default="1,2,4,8")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--max-reference-runs", type=int, default=6)
    p.add_argument("--max-total-tokens", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    facts = model_facts(args.model)
    rng = random.Random(args.seed)
    prompt = [rng.randrange(1000, facts["vocab_size"] - 300) for _ in range(args.input_len)]
    variants = [None] + [int(k) for k in args.draft_tokens.split(",")]
    rows = [run_variant(args, prompt, k) for k in variants]
    base = rows[0]["tok_s"]
    for row in rows:
        row["speedup"] = row["tok_s"] / base
    info = machine_info(args.device)
    # a decode step reads every weight but the embedding table once, at the run's dtype
    run_bytes = {"float32": 4, "bfloat16": 2, "float16": 2}.get(args.dtype)
    per_param = run_bytes or facts["stored_weight_bytes"] / facts["params"]
    weight_bytes = per_param * facts["non_embedding_params"]
    on_gpu = args.device.startswith("cuda")
    floor = measure_bandwidth_gbs(args.device) * 1e9 / weight_bytes if on_gpu else None
    print(f"byte floor at batch 1: {floor:.1f} tok/s" if floor else "byte floor: n/a")
    print(
        "| draft tokens | tok/s | speedup | steps/run | accepted/run | tokens/step | same output | ref runs |"
    )
    print("|---:|---:|---:|---:|---:|---:|:---:|---:|")
    for r in rows:
        tps = f"{r['tokens_per_step']:.2f}" if r["tokens_per_step"] else "-"
        print(
            f"| {r['draft_tokens'] or 'off'} | {r['tok_s']:.1f} | {r['speedup']:.2f} | "
            f"{r['decode_steps_per_run']:.0f} | {r['accepted_per_run']:.0f} | {tps} | "
            f"{r['outputs_match_reference']} | {r['reference_runs']} |"
        )
    result = {
        **result_header(argv, info),
        "model": facts,
        "byte_floor_tok_s": floor,
        "settings": vars(args),
        "rows": rows,
    }
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
