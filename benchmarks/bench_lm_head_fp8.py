"""What an fp8 LM head (`lm_head_quantization="fp8"`) does to logprobs, against the reference head in
the model dtype (bf16, or the --dtype given), on the same model folder and options in one process.

    python benchmarks/bench_lm_head_fp8.py --model demo --device cpu --dtype float32 --json out.json
    python benchmarks/bench_lm_head_fp8.py --model /tmp/bench-8b --device cuda --quantization fp8

Two Engines, one after the other, identical but for the head. Each prompt (plain English from a
built-in list, tokenized with the folder's tokenizer; random ids where the folder has none, with
--tokenizer naming one the Engine can detokenize with) is run as a request of its own (batch 1):

  * greedy, --max-new-tokens tokens (ignore_eos: every prompt gives the same number of positions),
    on both engines. Up to the first position where the two outputs differ ("diverges at"), both
    decoded the same tokens, so their hidden states are the same and the chosen token's logprob
    differs only by the head: the decode path (M = 1: the W8A16 GEMV where the tuned threshold
    allows, else W8A8; the CPU reference makes the same choice). "ref gap" is the reference
    head's top-1 minus top-2 logprob at the divergence: how close to a tie the flipped choice was.
  * teacher-forced: prompt + the reference head's greedy tokens sent as one prompt (input token
    logprobs from the first generated position, the cache flushed first so both engines compute
    every position alike) through both engines; per position the fp8 head's top-1 against the
    reference head's, and the chosen (greedy) token's |logprob difference|. All positions at once is a
    prefill-sized M, so this is the W8A8 path (hidden states quantised per group of 128 too).
  * floor: the reference head's teacher-forced logprob of each chosen token, and its top-1, against
    its own decode-time ones (prefill and decode kernels sum in different orders): the noise there
    is without fp8 (about 1e-6 in float32; in bfloat16 it is the dtype's own rounding).
Greedy runs ignore EOS (every prompt gives --max-new-tokens positions); `ref_first_eos` in the JSON
says where the reference would have stopped.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from run_info import load_before_run, machine_info, result_header

PROMPTS = (
    "The history of the printing press begins in the fifteenth century, when",
    "Here is a short story about a lighthouse keeper who finds a message in a bottle.",
    "Explain, step by step, how a bill becomes a law in a parliamentary democracy.",
    "The best way to learn a new programming language is",
    "Write a letter to a friend describing a walk through the city after the rain.",
    "Rivers shape the land around them in several ways. First,",
    "A recipe for a simple vegetable soup: start by",
    "The committee met on Tuesday to discuss the budget for the coming year, and",
)
INFO_KEYS = ("device", "dtype", "quantization", "lm_head_quantization", "fp8_gemm", "kv_cache_dtype")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="demo", help="an HF folder, or 'demo' for the trained demo model")
    p.add_argument("--tokenizer", default=None, help="for a folder without one (prompts are then random ids)")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--quantization", choices=["none", "fp8"], default="none", help="the rest of the model")
    p.add_argument("--max-new-tokens", type=int, default=512)
    p.add_argument("--num-prompts", type=int, default=4)
    p.add_argument("--random-prompt-len", type=int, default=32)
    p.add_argument("--max-total-tokens", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    if not 1 <= args.num_prompts <= len(PROMPTS) or args.max_new_tokens < 1:
        p.error(f"--num-prompts must be in [1, {len(PROMPTS)}] and --max-new-tokens >= 1")
    return args


def build_prompts(args: argparse.Namespace, vocab_size: int) -> tuple[list[list[int]], str]:
    """Token ids of the prompts, and where they came from."""
    folder = Path(args.model)
    if (folder / "tokenizer.json").is_file() or (folder / "tokenizer_config.json").is_file():
        from radixlm.runtime.tokenizer import load_tokenizer

        tok = load_tokenizer(folder)
        return [tok.encode(text) for text in PROMPTS[: args.num_prompts]], "text"
    rng = random.Random(args.seed)
    # clear of the low ids, where tokenizers keep their special tokens
    lo, hi = min(100, vocab_size // 4), vocab_size
    ids = [[rng.randrange(lo, hi) for _ in range(args.random_prompt_len)] for _ in range(args.num_prompts)]
    return ids, "random ids"


def greedy(engine: Any, prompt: list[int], n: int) -> dict:
    """Batch-1 greedy decode of n tokens: the tokens, their logprobs and the top-2 at each step."""
    engine.flush_cache()
    out = engine.generate(
        input_ids=prompt,
        sampling_params={"max_new_tokens": n, "temperature": 0, "ignore_eos": True},
        return_logprob=True,
        top_logprobs_num=2,
    )
    meta = out["meta_info"]
    return {
        "tokens": out["output_ids"],
        "logprobs": [lp for lp, _ in meta["output_token_logprobs"]],
        "top2": [[lp for _, lp in top] for top in meta["output_top_logprobs"]],
    }


def teacher_force(engine: Any, prompt: list[int], tokens: list[int]) -> dict:
    """Logprob of each of `tokens` after prompt + the tokens before it, and the argmax there."""
    engine.flush_cache()  # every position computed, none read from the cache, on both engines
    out = engine.generate(
        input_ids=prompt + tokens,
        sampling_params={"max_new_tokens": 1, "temperature": 0},
        return_logprob=True,
        logprob_start_len=len(prompt),
        top_logprobs_num=1,
    )
    meta = out["meta_info"]
    scored = meta["input_token_logprobs"]
    assert [t for _, t in scored] == tokens, "input logprobs do not line up with the forced tokens"
    return {"logprobs": [lp for lp, _ in scored], "argmax": [top[0][0] for top in meta["input_top_logprobs"]]}


def run_engine(args: argparse.Namespace, prompts: list[list[int]], head: str | None, forced: list | None):
    """One Engine: per prompt its greedy run, and teacher forcing of `forced` (the reference
    head's greedy tokens; its own when None). Returns (per-prompt results, server_info's settings)."""
    from radixlm import Engine

    options: dict[str, Any] = {"device": args.device, "dtype": args.dtype, "lm_head_quantization": head}
    if args.quantization != "none":
        options["quantization"] = args.quantization
    if args.tokenizer:
        options["tokenizer_path"] = args.tokenizer
    if args.max_total_tokens:
        options["max_total_tokens"] = args.max_total_tokens
    results = []
    with Engine(args.model, **options) as engine:
        info = {k: engine.get_server_info().get(k) for k in INFO_KEYS}
        for i, prompt in enumerate(prompts):
            run = greedy(engine, prompt, args.max_new_tokens)
            tokens = run["tokens"] if forced is None else forced[i]
            results.append({"greedy": run, "forced": teacher_force(engine, prompt, tokens)})
        engine.check_accounting()
    return results, info


def _stats(diffs: list[float]) -> dict[str, float | None]:
    return {"max": max(diffs) if diffs else None, "mean": statistics.fmean(diffs) if diffs else None}


def compare(ref: dict, fp8: dict, eos: set[int]) -> dict[str, Any]:
    """One prompt's numbers: the fp8 head (fp8) against the reference head (ref)."""
    a, b = ref["greedy"], fp8["greedy"]
    n = len(a["tokens"])
    # ignore_eos: where the reference would have stopped (the positions after it are still
    # the model's predictions, but of text past the end of its answer)
    first_eos = next((i for i, t in enumerate(a["tokens"]) if t in eos), None)
    diverge = next((i for i, (x, y) in enumerate(zip(a["tokens"], b["tokens"])) if x != y), None)
    common = n if diverge is None else diverge
    fa, fb = ref["forced"], fp8["forced"]
    top1 = [x == y for x, y in zip(fa["argmax"], fb["argmax"])]
    tf_diff = [abs(x - y) for x, y in zip(fa["logprobs"], fb["logprobs"])]
    gap = a["top2"][diverge][0] - a["top2"][diverge][1] if diverge is not None else None
    return {
        "positions": n,
        "ref_first_eos": first_eos,
        "tf_top1_agreement": sum(top1) / n,
        "tf_top1_disagreements": n - sum(top1),
        "tf_abs_dlogprob": _stats(tf_diff),
        "diverges_at": diverge,
        "ref_gap_at_divergence": gap,
        "decode_common_positions": common,
        "decode_abs_dlogprob": _stats(
            [abs(x - y) for x, y in zip(a["logprobs"][:common], b["logprobs"][:common])]
        ),
        "floor_abs_dlogprob": _stats([abs(x - y) for x, y in zip(fa["logprobs"], a["logprobs"])]),
        "floor_top1_agreement": sum(x == y for x, y in zip(fa["argmax"], a["tokens"])) / n,
        "_diffs": (tf_diff, [abs(x - y) for x, y in zip(a["logprobs"][:common], b["logprobs"][:common])]),
    }


def summarise(rows: list[dict]) -> dict[str, Any]:
    tf = [d for r in rows for d in r["_diffs"][0]]
    dec = [d for r in rows for d in r["_diffs"][1]]
    positions = sum(r["positions"] for r in rows)
    return {
        "prompts": len(rows),
        "positions": positions,
        "tf_top1_agreement": sum(r["positions"] * r["tf_top1_agreement"] for r in rows) / positions,
        "tf_top1_disagreements": sum(r["tf_top1_disagreements"] for r in rows),
        "tf_abs_dlogprob": _stats(tf),
        "diverged_prompts": sum(r["diverges_at"] is not None for r in rows),
        "first_divergence": min(
            (r["diverges_at"] for r in rows if r["diverges_at"] is not None), default=None
        ),
        "decode_common_positions": len(dec),
        "decode_abs_dlogprob": _stats(dec),
        "floor_abs_dlogprob": {
            "max": max(r["floor_abs_dlogprob"]["max"] for r in rows),
            "mean": sum(r["positions"] * r["floor_abs_dlogprob"]["mean"] for r in rows) / positions,
        },
        "floor_top1_agreement": sum(r["positions"] * r["floor_top1_agreement"] for r in rows) / positions,
    }


def _f(x: float | None, spec: str = ".2e") -> str:
    return "-" if x is None else format(x, spec)


def table(rows: list[dict], summary: dict) -> str:
    lines = [
        "| prompt | positions | TF top-1 agree | TF max abs dlogprob | TF mean abs dlogprob "
        "| greedy diverges at | ref gap there | decode max abs dlogprob | decode mean abs dlogprob "
        "| floor top-1 agree | floor mean abs dlogprob |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    named = [(str(i), r) for i, r in enumerate(rows)] + [("all", summary)]
    for name, r in named:
        if name == "all":
            first = _f(summary["first_divergence"], "d")
            diverge = f"{summary['diverged_prompts']}/{summary['prompts']} (first {first})"
            gap = "-"
        else:
            diverge = "none" if r["diverges_at"] is None else str(r["diverges_at"])
            gap = _f(r["ref_gap_at_divergence"], ".3f")
        lines.append(
            f"| {name} | {r['positions']} | {100 * r['tf_top1_agreement']:.2f}% | "
            f"{_f(r['tf_abs_dlogprob']['max'])} | {_f(r['tf_abs_dlogprob']['mean'])} | {diverge} | {gap} | "
            f"{_f(r['decode_abs_dlogprob']['max'])} | {_f(r['decode_abs_dlogprob']['mean'])} | "
            f"{100 * r['floor_top1_agreement']:.2f}% | {_f(r['floor_abs_dlogprob']['mean'])} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.model == "demo":
        from radixlm import demo_model_path

        args.model = str(demo_model_path())
    from radixlm.runtime.config import ModelConfig

    load = load_before_run()
    prompts, source = build_prompts(args, ModelConfig.from_path(args.model).vocab_size)
    if source == "random ids" and not args.tokenizer:
        sys.exit(f"{args.model} has no tokenizer: name one with --tokenizer (the prompts are random ids)")
    ref, ref_info = run_engine(args, prompts, None, None)
    fp8, fp8_info = run_engine(args, prompts, "fp8", [r["greedy"]["tokens"] for r in ref])
    eos = set(ModelConfig.from_path(args.model).eos_token_ids)
    rows = [compare(r, f, eos) for r, f in zip(ref, fp8)]
    summary = summarise(rows)
    print(
        f"fp8 LM head vs {ref_info['dtype']} head: {args.model}, device {ref_info['device']}, "
        f"quantization {ref_info['quantization']}, {len(prompts)} prompts ({source}), "
        f"{args.max_new_tokens} greedy tokens each, batch 1"
    )
    print(table(rows, summary))
    for r in rows:
        r.pop("_diffs")
    result = {
        **result_header(argv, machine_info(ref_info["device"] or args.device)),
        "loadavg_before": load,
        "settings": vars(args),
        "prompt_source": source,
        "prompt_lens": [len(p) for p in prompts],
        "engines": {"reference": ref_info, "fp8_head": fp8_info},
        "prompts": rows,
        "summary": summary,
    }
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
