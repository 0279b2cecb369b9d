"""Speculative decoding without a draft model (issue 23) on the trained demo model: the decode
steps `ngram` and `lookahead` save on tasks that quote their input, one request at a time.

    python benchmarks/bench_speculative.py --json benchmarks/results/speculative-cpu-DATE.json
    python benchmarks/bench_speculative.py --families extraction --count 2 --max-new-tokens 32

Families (--families; held-out examples of demo_model/tasks.py, rendered by the model's chat
template with add_generation_prompt=True, as demo_model/evaluate.py renders them):
  extraction  "Extract name, age and city as JSON: <sentence>": the JSON quotes the sentence
              (unconstrained: a schema would make it a grammar request, which jump-forward drafts)
  tool_use    the calculator call (quotes the expression), then, given the tool's result, the
              answer ("A * B = C."), both teacher-forced as evaluate.py's Engine pass does
  memory      multi-turn chat: every user turn of a memory conversation (introduction, two
              filler turns, "What is my name?"); turn t+1 re-sends the whole history with the
              model's own earlier answers
  code        raw Python text, no template: a class whose docstring and __init__ signature name
              its fields, with the first assignments written; the model continues (identifiers repeat)
  regenerate  extraction and tool-call prompts each sent twice in a row (a retry, a regenerate):
              the second request finds the first one's output in the radix tree
Asked in chat to repeat a list back or to copy a code snippet, the demo model does not (it
answers "positive", or garbles the snippet), so there is no such family: `code` stands in.

Variants (--variants): off, ngram, lookahead; one Engine each (--device, default cpu; --dtype,
default float32), greedy, requests sent one at a time (batch 1), up to --max-new-tokens each
(most answers end earlier, at their end-of-turn token). The cache is flushed before each
family. Per family and variant: outputs identical to off's, output tokens, decode steps
(server_info's decode_steps delta over the family), steps saved vs off, draft tokens proposed
and accepted, acceptance rate, accepted tokens per decode step, and wall time and output tokens
per second (CPU, informational: other load on the machine moves them; the step counts do not).
"""

from __future__ import annotations

import argparse
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

FAMILIES = ("extraction", "tool_use", "memory", "code", "regenerate")
VARIANTS = ("off", "ngram", "lookahead")
COUNTERS = ("decode_steps", "generated_tokens", "spec_proposed_tokens", "spec_accepted_tokens")

_NOUNS = (
    "point",
    "account",
    "order",
    "record",
    "sensor",
    "ticket",
    "package",
    "invoice",
    "player",
    "session",
)
_FIELDS = ("name", "price", "count", "owner", "status", "created", "width", "height", "label", "value",
           "timeout", "path", "color", "weight")  # fmt: skip


# ---------------------------------------------------------------------- workload
def code_prompt(rng: random.Random) -> str:
    noun, fields = rng.choice(_NOUNS), rng.sample(_FIELDS, 4)
    assigned = "".join(f"        self.{f} = {f}\n" for f in fields[:2])
    return (
        f"class {noun.title()}:\n"
        f'    """A {noun} with its {", ".join(fields[:-1])} and {fields[-1]}."""\n\n'
        f"    def __init__(self, {', '.join(fields)}):\n{assigned}"
    )


def build_workload(family: str, count: int, seed: int, tokenizer: Any) -> list[dict]:
    """The family's items: {"prompt": text} (one request) or {"system", "users", "tools"} (a
    chat whose assistant turns the model writes, one request per user turn)."""
    from radixlm.demo_model import grading, tasks

    def render(stage: grading.Stage) -> dict:
        text = tokenizer.apply_chat_template(
            stage.messages, tools=stage.tools, tokenize=False, add_generation_prompt=True
        )
        return {"prompt": text}

    if family in ("extraction", "tool_use"):
        examples = tasks.heldout_examples(family, count, seed)
        return [render(stage) for ex in examples for stage in grading.stages(ex)]
    if family == "memory":
        rng = random.Random(f"memory-chat:{seed}")
        items = []
        for _ in range(count):
            ex = tasks.memory(rng, "heldout", fillers=2)
            system = ex.messages[0]["content"] if ex.messages[0]["role"] == "system" else None
            users = [m["content"] for m in ex.messages if m["role"] == "user"]
            items.append({"system": system, "users": users, "tools": None})
        return items
    if family == "code":
        rng = random.Random(f"code:{seed}")
        return [{"prompt": code_prompt(rng)} for _ in range(count)]
    if family == "regenerate":
        pool = [
            render(grading.stages(ex)[0])
            for pair in zip(
                tasks.heldout_examples("extraction", count, seed + 1),
                tasks.heldout_examples("tool_use", count, seed + 1),
            )
            for ex in pair
        ][:count]
        return [item for item in pool for _ in range(2)]  # each sent twice in a row
    raise ValueError(f"unknown family {family!r}; choose from {', '.join(FAMILIES)}")


# ---------------------------------------------------------------------- runs
def run_family(engine: Any, tokenizer: Any, items: list[dict], params: dict) -> dict:
    """Every request of one family, one at a time; server_info deltas and per-request meta."""
    assert engine.flush_cache(), "the engine must be idle between families"
    before = engine.get_server_info()
    outputs: list[list[int]] = []
    meta_proposed = meta_accepted = 0
    start = time.perf_counter()

    def generate(prompt: str) -> dict:
        nonlocal meta_proposed, meta_accepted
        out = engine.generate(prompt, params)
        outputs.append(out["output_ids"])
        meta_proposed += out["meta_info"].get("spec_proposed_tokens", 0)
        meta_accepted += out["meta_info"].get("spec_accepted_tokens", 0)
        return out

    for item in items:
        if "prompt" in item:
            generate(item["prompt"])
            continue
        messages = [{"role": "system", "content": item["system"]}] if item["system"] else []
        for user in item["users"]:  # each turn re-sends the history, answers included
            messages.append({"role": "user", "content": user})
            text = tokenizer.apply_chat_template(
                messages, tools=item["tools"], tokenize=False, add_generation_prompt=True
            )
            messages.append({"role": "assistant", "content": generate(text)["text"]})
    wall = time.perf_counter() - start
    after = engine.get_server_info()
    delta = {k: after[k] - before[k] for k in COUNTERS}
    assert delta["spec_proposed_tokens"] == meta_proposed and delta["spec_accepted_tokens"] == meta_accepted
    assert after["kv_accounting"] == "ok", after["kv_accounting"]
    out_tokens = sum(len(o) for o in outputs)
    steps, proposed, accepted = (
        delta["decode_steps"],
        delta["spec_proposed_tokens"],
        delta["spec_accepted_tokens"],
    )
    return {
        "requests": len(outputs),
        "output_tokens": out_tokens,
        "decode_steps": steps,
        "spec_proposed_tokens": proposed,
        "spec_accepted_tokens": accepted,
        "acceptance_rate": accepted / proposed if proposed else None,
        "accepted_per_step": accepted / steps if steps else 0.0,
        # tokens after each request's first (the prefill samples it) per decode step
        "tokens_per_step": (out_tokens - len(outputs)) / steps if steps else None,
        "wall_s": round(wall, 3),
        "output_tok_per_s": out_tokens / wall if wall else None,
        "outputs_hash": hashlib.sha256(json.dumps(outputs).encode()).hexdigest()[:16],
        "_outputs": outputs,
    }


def run_variant(args: argparse.Namespace, variant: str, workload: dict, tokenizer: Any) -> dict:
    from radixlm import Engine

    options: dict[str, Any] = {"device": args.device, "dtype": args.dtype}
    if variant != "off":
        options |= {
            "speculative_algorithm": variant,
            "speculative_num_draft_tokens": args.num_draft_tokens,
        }
    params = {"temperature": 0, "max_new_tokens": args.max_new_tokens}
    with Engine(args.model, **options) as engine:
        for _ in range(args.warmup):  # untimed: first-call costs (allocations, kernels)
            engine.generate("def main():\n", {"temperature": 0, "max_new_tokens": 8})
        info = engine.get_server_info()
        result = {family: run_family(engine, tokenizer, items, params) for family, items in workload.items()}
        assert engine.flush_cache()
    result["_info"] = {"device": info["device"], "dtype": info["dtype"], "options": options}
    return result


def compare(runs: dict[str, dict], families: list[str]) -> None:
    """Add, per family of each variant, whether its outputs equal off's and the steps saved."""
    ref = runs.get("off")
    for fams in runs.values():
        for family in families + ["all"]:
            m = fams[family]
            if ref is None:
                m["identical_to_off"] = m["steps_saved_vs_off"] = None
                continue
            m["identical_to_off"] = m["outputs_hash"] == ref[family]["outputs_hash"]
            off_steps = ref[family]["decode_steps"]
            m["steps_saved_vs_off"] = 1 - m["decode_steps"] / off_steps if off_steps else None


def total(fams: dict[str, dict]) -> dict:
    keys = ("requests", "output_tokens", "decode_steps", "spec_proposed_tokens", "spec_accepted_tokens")
    t = {k: sum(m[k] for m in fams.values()) for k in keys}
    t["wall_s"] = round(sum(m["wall_s"] for m in fams.values()), 3)
    t["acceptance_rate"] = (
        t["spec_accepted_tokens"] / t["spec_proposed_tokens"] if t["spec_proposed_tokens"] else None
    )
    t["accepted_per_step"] = t["spec_accepted_tokens"] / t["decode_steps"] if t["decode_steps"] else 0.0
    t["tokens_per_step"] = (
        (t["output_tokens"] - t["requests"]) / t["decode_steps"] if t["decode_steps"] else None
    )
    t["output_tok_per_s"] = t["output_tokens"] / t["wall_s"] if t["wall_s"] else None
    outputs = [o for m in fams.values() for o in m["_outputs"]]
    t["outputs_hash"] = hashlib.sha256(json.dumps(outputs).encode()).hexdigest()[:16]
    return t


def _fmt(value: Any, spec: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    return format(value, spec)


def table(runs: dict[str, dict], families: list[str]) -> str:
    head = (
        "| family | variant | identical to off | output tokens | decode steps | saved vs off | proposed "
        "| accepted | acceptance | accepted / step | wall s | tok/s |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for family in families + ["all"]:
        for variant, fams in runs.items():
            m = fams[family]
            saved = m["steps_saved_vs_off"]
            lines.append(
                f"| {family} | {variant} | {_fmt(m['identical_to_off'])} | {m['output_tokens']} "
                f"| {m['decode_steps']} | {_fmt(None if saved is None else 100 * saved, '.1f')}"
                f"{'%' if saved is not None else ''} | {m['spec_proposed_tokens']} "
                f"| {m['spec_accepted_tokens']} | {_fmt(m['acceptance_rate'], '.2f')} "
                f"| {m['accepted_per_step']:.2f} | {m['wall_s']:.1f} | {_fmt(m['output_tok_per_s'], '.1f')} |"
            )
    return "\n".join(lines)


# ---------------------------------------------------------------------- main
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="model folder (default: the shipped demo model)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--families", default=",".join(FAMILIES))
    p.add_argument("--count", type=int, default=8, help="examples (conversations, prompts) per family")
    p.add_argument("--max-new-tokens", type=int, default=96)
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--num-draft-tokens", type=int, default=8, help="speculative_num_draft_tokens")
    p.add_argument("--warmup", type=int, default=2, help="untimed requests per engine")
    p.add_argument("--cpu-threads", type=int, default=None, help="OMP_NUM_THREADS for the engine's processes")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    args.families = [f.strip() for f in args.families.split(",") if f.strip()]
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if (
        not args.families
        or not set(args.families) <= set(FAMILIES)
        or len(set(args.families)) < len(args.families)
    ):
        p.error(f"--families: distinct names from {', '.join(FAMILIES)}")
    if (
        not args.variants
        or not set(args.variants) <= set(VARIANTS)
        or len(set(args.variants)) < len(args.variants)
    ):
        p.error(f"--variants: distinct names from {', '.join(VARIANTS)}")
    if args.count < 1 or args.max_new_tokens < 1:
        p.error("--count and --max-new-tokens must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.cpu_threads:
        os.environ["OMP_NUM_THREADS"] = str(args.cpu_threads)  # inherited by the scheduler process
    from radixlm import demo_model_path
    from radixlm.runtime.tokenizer import load_tokenizer

    args.model = args.model or demo_model_path()
    tokenizer = load_tokenizer(args.model)
    workload = {f: build_workload(f, args.count, args.seed, tokenizer) for f in args.families}
    out: dict[str, Any] = {
        "command": command_line(argv),
        "date": utc_now(),
        "git_commit": git_commit(),
        "git_dirty": git_dirty(),
        "loadavg_before": load_before_run(),
        "machine": machine_info(args.device),
        "settings": vars(args),
        "model": args.model,
    }
    runs: dict[str, dict] = {}
    for variant in args.variants:
        runs[variant] = run_variant(args, variant, workload, tokenizer)
        out.update(device=runs[variant].pop("_info")["device"], dtype=args.dtype)
    for fams in runs.values():
        fams["all"] = total({f: fams[f] for f in args.families})
    compare(runs, args.families)
    out["runs"] = {
        v: {f: {k: x for k, x in m.items() if k != "_outputs"} for f, m in fams.items()}
        for v, fams in runs.items()
    }
    out["outputs_identical"] = {v: fams["all"]["identical_to_off"] for v, fams in runs.items()}
    out["loadavg_after"] = machine_info(args.device)["loadavg"]
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    print(
        f"radixlm speculative decoding: model={args.model} device={out['device']} dtype={args.dtype} "
        f"machine={out['machine']['device_name']}\n"
        f"{args.count} examples per family, batch 1, greedy, max_new_tokens {args.max_new_tokens}, "
        f"speculative_num_draft_tokens {args.num_draft_tokens}; commit "
        f"{(out['git_commit'] or '?')[:7]}{' (dirty)' if out['git_dirty'] else ''}"
    )
    print(table(runs, args.families))
    broken = [v for v, same in out["outputs_identical"].items() if same is False]
    if broken:
        print(f"outputs differ from off: {', '.join(broken)}", file=sys.stderr)
    return 1 if broken else 0


if __name__ == "__main__":
    raise SystemExit(main())
