"""Benchmark DSL program workloads with the radix cache on and off.

    python benchmarks/bench_programs.py                                  # tiny offline model, all workloads
    python benchmarks/bench_programs.py --workloads few-shot,select --num-programs 64 --max-tokens 16
    python benchmarks/bench_programs.py --model /path/to/hf-folder --device cuda --json out.json

Workloads, in the spirit of SGLang's `benchmark/*/bench_sglang.py`:

  few-shot    a long shared header of 8 worked examples + a question + gen(stop="\\n") (gsm8k/boolq-like)
  select      a shared header of 8 completed contexts + a context + select among 4 endings (hellaswag-like)
  tree        a long shared prompt + a question, fork(3) plans, each with a nested fork(2) of answers, join
  chat        4 user/assistant turns with a gen per turn; conversations share a system prompt (multi-turn chat)

Each workload runs as one `run_batch` over --num-programs inputs, first with the radix cache on and
then with it off (`disable_radix_cache=True`), each configuration in a fresh `rl.Runtime` in this
process, on the same inputs, greedy. A small warm-up batch (different inputs) runs first; then the
batch is timed --repeats times (default 3), each time after flushing the cache, so every timed run
starts cold and the reuse it measures is the reuse within the workload. The run with the median
wall time is reported; its token counts and hit rate are the differences of `get_server_info`
between just before and just after it. speedup = wall time with the cache off / with it on.

With the offline tiny model (random weights) the text is noise, but timings and cache hits are real.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import radixlm as rl  # noqa: E402

CONFIGS = [("cache_on", {}), ("cache_off", {"disable_radix_cache": True})]
WARMUP_PROGRAMS = 2

# ---------------------------------------------------------------------- inputs
NAMES = ["Ava", "Ben", "Chloe", "Dev", "Emma", "Farid", "Grace", "Hiro", "Ines", "Jonas", "Kira", "Liam",
         "Maya", "Noah", "Olga", "Pablo", "Quinn", "Rosa", "Sami", "Tara", "Uma", "Victor", "Wen", "Yusuf"]
ITEMS = ["apples", "marbles", "stickers", "books", "pencils", "stamps", "coins", "cookies", "shells", "cards"]
PLACES = ["the market", "school", "the park", "a fair", "the library", "a garage sale", "the beach", "a shop"]


def _question(i: int) -> tuple[str, int]:
    name, item, place = NAMES[i % len(NAMES)], ITEMS[(i * 7) % len(ITEMS)], PLACES[(i * 3) % len(PLACES)]
    a, b, c = 3 + (i * 5) % 17, 2 + (i * 11) % 13, 1 + (i * 3) % 7
    q = (f"{name} has {a} {item}. At {place}, {name} gets {b} more {item} and then gives {c} {item} "
         f"to a friend. How many {item} does {name} have now?")
    return q, a + b - c


FEW_SHOT_EXAMPLES = [
    _question(1000 + k) for k in range(8)
]
FEW_SHOT_HEADER = (
    "Solve each arithmetic word problem. Think about what is added and what is taken away, "
    "then write the final number on a single line.\n\n"
    + "".join(f"Question: {q}\nAnswer: {q.split(' has ')[0]} ends with {ans}. The answer is {ans}.\n\n"
              for q, ans in FEW_SHOT_EXAMPLES)
)

ACTIVITIES = [
    ("A man is standing on a ladder next to a house.", "He", ["paints the window frame with a brush.",
     "eats a bowl of soup at the table.", "swims across a wide river.", "reads a newspaper in bed."]),
    ("A woman kneels in a garden holding a small shovel.", "She", ["digs a hole and plants a flower.",
     "drives a bus through the city.", "types an email on a laptop.", "throws a ball to a dog on a beach."]),
    ("A chef places a pan on the stove and pours in oil.", "The chef", ["adds chopped onions and stirs them.",
     "climbs a mountain in the snow.", "plays a violin on stage.", "washes a car in the driveway."]),
    ("A boy ties the laces of his running shoes at a track.", "The boy", ["starts jogging around the track.",
     "bakes a cake in the oven.", "paints a portrait of his sister.", "sleeps on the sofa at home."]),
    ("Two players stand at a table holding ping pong paddles.", "They", ["hit the ball back and forth over the net.",
     "plant trees along the road.", "sing a song in a choir.", "repair the roof of a barn."]),
    ("A girl sits at a piano and opens a book of music.", "She", ["begins to play the first notes of a song.",
     "rides a horse across a field.", "fixes a flat tire on a bike.", "scuba dives near a reef."]),
    ("A man fills a bucket with soapy water beside his car.", "He", ["scrubs the hood with a sponge.",
     "knits a scarf by the fire.", "teaches a math class.", "flies a kite on a hill."]),
    ("A climber clips a rope to her harness at the base of a wall.", "She", ["starts climbing up the holds.",
     "orders a coffee at a cafe.", "mows the lawn in the yard.", "sews a button onto a shirt."]),
]


def _hellaswag_item(i: int) -> tuple[str, list[str], int]:
    ctx, subj, endings = ACTIVITIES[i % len(ACTIVITIES)]
    name = NAMES[i % len(NAMES)]
    context = f"{ctx} {name} watches for a moment. {subj}"
    rot = (i // len(ACTIVITIES)) % 4  # rotate the endings so the right one moves around
    choices = [" " + e for e in endings[rot:] + endings[:rot]]
    return context, choices, (4 - rot) % 4


SELECT_HEADER = (
    "Each passage describes an everyday scene. Pick the most plausible way the passage continues.\n\n"
    + "".join(f"Passage: {ctx} {subj} {endings[0]}\n\n" for ctx, subj, endings in ACTIVITIES)
)

TOT_HEADER = (
    "You are a careful planner. For the problem below, first propose a short plan, then carry it out "
    "step by step, checking every intermediate result before moving on. Prefer simple, concrete steps; "
    "state assumptions explicitly; when two approaches disagree, explain which one is right and why. "
    "Keep each plan and each answer to a single line so that a reviewer can compare them side by side. "
    "A good plan names the quantities involved, the operation that relates them, and the order in which "
    "they are combined. A good answer follows its plan exactly and ends with the final number.\n\n"
    "Example problem: A baker makes 24 rolls, sells 9 in the morning and bakes 6 more at noon. "
    "How many rolls are there in the afternoon?\n"
    "Example plan: start from 24, subtract the 9 sold, add the 6 baked.\n"
    "Example answer: 24 - 9 = 15, 15 + 6 = 21, so there are 21 rolls.\n\n"
)

CHAT_SYSTEM = (
    "You are a friendly, concise assistant for a small bookshop. You help customers find books, explain "
    "store policies, and suggest reading lists. Store facts: the shop opens 9am to 7pm Monday to Saturday "
    "and 11am to 5pm on Sunday; returns are accepted within 30 days with a receipt; members get 10% off "
    "every purchase and a free tote bag once a year; orders over 40 dollars ship for free; gift cards "
    "never expire. Answer in one or two sentences, and ask a follow-up question when a request is vague."
)
CHAT_TOPICS = ["mystery novels", "books about space", "cookbooks", "poetry", "history of Rome",
               "graphic novels", "gardening guides", "travel writing", "science fiction", "biographies"]


def _chat_turns(i: int) -> list[str]:
    topic, name = CHAT_TOPICS[i % len(CHAT_TOPICS)], NAMES[(i * 5) % len(NAMES)]
    return [f"Hi, I'm {name}. Can you recommend some {topic}?",
            f"Which of those would suit a reader who is {8 + i % 60} years old?",
            "Are you open on Sunday, and can I return it if I don't like it?",
            f"Great. Does the member discount apply to {topic} too?"]


# ---------------------------------------------------------------------- programs
@rl.function
def few_shot(s, question):
    s += FEW_SHOT_HEADER
    s += "Question: " + question + "\nAnswer:"
    s += rl.gen("answer", stop="\n")


@rl.function
def select_ending(s, context, choices):
    s += SELECT_HEADER
    s += "Passage: " + context
    s += rl.select("ending", choices=choices)


@rl.function
def tree_of_thought(s, question):
    s += TOT_HEADER
    s += "Problem: " + question + "\n"
    plans = s.fork(3)
    plans += lambda i: f"Plan {i + 1}:" + rl.gen("plan", stop="\n") + "\n"
    for plan in plans:
        answers = plan.fork(2)
        answers += lambda j: f"Answer {j + 1}:" + rl.gen("answer", stop="\n") + "\n"
        answers.join()
    plans.join()  # s["plan"]: 3 plans; s["answer"]: 3 lists of 2 answers


@rl.function
def multi_turn_chat(s, turns):
    s += rl.system(CHAT_SYSTEM)
    for k, turn in enumerate(turns):
        s += rl.user(turn)
        s += rl.assistant(rl.gen(f"reply_{k}"))


@dataclass
class Workload:
    name: str
    program: Any
    make_input: Callable[[int], dict]
    gens_per_program: int  # gen calls (select counts 0)
    description: str

    def inputs(self, count: int, offset: int = 0) -> list[dict]:
        return [self.make_input(offset + i) for i in range(count)]


def _select_input(i: int) -> dict:
    context, choices, _ = _hellaswag_item(i)
    return {"context": context, "choices": choices}


WORKLOADS: dict[str, Workload] = {w.name: w for w in [
    Workload("few-shot", few_shot, lambda i: {"question": _question(i)[0]}, 1,
             "8-shot header + question + gen(stop='\\n')"),
    Workload("select", select_ending, _select_input, 0,
             "8-example header + context + select among 4 endings"),
    Workload("tree", tree_of_thought, lambda i: {"question": _question(500 + i)[0]}, 9,
             "long prompt, fork(3) plans, nested fork(2) answers each, join"),
    Workload("chat", multi_turn_chat, lambda i: {"turns": _chat_turns(i)}, 4,
             "shared system prompt + 4 user/assistant turns, gen per turn"),
]}
ALIASES = {"tree-of-thought": "tree", "tot": "tree", "multi-turn": "chat", "multi-turn-chat": "chat",
           "fewshot": "few-shot", "hellaswag": "select"}
WARMUP_OFFSET = 100_000  # warm-up inputs differ from the timed ones


# ---------------------------------------------------------------------- running
def _flush(backend: Any) -> None:
    for _ in range(50):
        if rl.flush_cache(backend):
            return
        time.sleep(0.1)
    raise RuntimeError("flush_cache kept refusing (requests still running?)")


def _timed_run(backend: Any, wl: Workload, inputs: list[dict], sampling: dict, num_threads: Any) -> dict:
    _flush(backend)  # every timed run starts from an empty cache
    before = rl.get_server_info(backend)
    t0 = time.perf_counter()
    states = wl.program.run_batch(inputs, backend=backend, num_threads=num_threads, **sampling)
    wall = time.perf_counter() - t0
    after = rl.get_server_info(backend)

    errors = [st.error() for st in states if st.error() is not None]
    prompt = after["prompt_tokens"] - before["prompt_tokens"]
    cached = after["cached_tokens"] - before["cached_tokens"]
    generated = after["generated_tokens"] - before["generated_tokens"]
    return {
        "num_programs": len(states),
        "errors": len(errors),
        "first_error": repr(errors[0]) if errors else None,
        "wall_s": wall,
        "programs_per_s": len(states) / wall if wall > 0 else 0.0,
        "generated_tokens": generated,
        "gen_tokens_per_s": generated / wall if wall > 0 else 0.0,
        "prompt_tokens": prompt,
        "cached_tokens": cached,
        "cache_hit_rate": cached / prompt if prompt else 0.0,
        "requests": after.get("finished_requests", 0) - before.get("finished_requests", 0),
    }


def run_workload(backend: Any, wl: Workload, num_programs: int, max_tokens: int, num_threads: Any,
                 repeats: int = 1) -> dict:
    """Warm up, then `repeats` timed runs of the same batch, each from an empty cache; the run
    with the median wall time is reported (all wall times are kept in `wall_s_all`)."""
    sampling = {"temperature": 0, "max_new_tokens": max_tokens}
    warm = wl.program.run_batch(wl.inputs(WARMUP_PROGRAMS, WARMUP_OFFSET), backend=backend,
                                num_threads=num_threads, **sampling)
    for st in warm:
        if st.error() is not None:
            raise RuntimeError(f"{wl.name}: warm-up program failed: {st.error()!r}")
    inputs = wl.inputs(num_programs)
    runs = [_timed_run(backend, wl, inputs, sampling, num_threads) for _ in range(repeats)]
    median = sorted(runs, key=lambda r: r["wall_s"])[(len(runs) - 1) // 2]
    return {**median, "repeats": len(runs), "wall_s_all": [r["wall_s"] for r in runs],
            "wall_s_min": min(r["wall_s"] for r in runs),
            "errors": sum(r["errors"] for r in runs),
            "first_error": next((r["first_error"] for r in runs if r["first_error"]), None)}


def run_all(args: argparse.Namespace, names: list[str]) -> tuple[dict, dict]:
    results: dict[str, dict] = {name: {} for name in names}
    runtime_info: dict[str, Any] = {}
    engine_options: dict[str, Any] = {"device": args.device}
    if args.max_total_tokens:
        engine_options["max_total_tokens"] = args.max_total_tokens
    for config, extra in CONFIGS:
        t0 = time.perf_counter()
        backend = rl.Runtime(args.model, **engine_options, **extra)
        startup = time.perf_counter() - t0
        try:
            info = rl.get_server_info(backend)
            runtime_info = {k: info.get(k) for k in ("device", "dtype", "max_total_tokens", "context_length",
                                                      "architecture", "model_path")}
            runtime_info = {k: v for k, v in runtime_info.items() if v is not None}
            print(f"[{config}] runtime up in {startup:.1f}s on {info.get('device')} ({info.get('dtype')})",
                  file=sys.stderr, flush=True)
            for name in names:
                wl = WORKLOADS[name]
                r = run_workload(backend, wl, args.num_programs, args.max_tokens, args.num_threads, args.repeats)
                results[name][config] = r
                print(f"[{config}] {name:<9} {r['wall_s']:7.2f}s  {r['programs_per_s']:7.2f} prog/s  "
                      f"hit rate {r['cache_hit_rate']:6.1%}  errors {r['errors']}", file=sys.stderr, flush=True)
        finally:
            backend.shutdown()
    for name in names:
        on, off = results[name]["cache_on"], results[name]["cache_off"]
        results[name]["speedup"] = off["wall_s"] / on["wall_s"] if on["wall_s"] > 0 else None
        results[name]["description"] = WORKLOADS[name].description
    return results, runtime_info


# ---------------------------------------------------------------------- reporting
def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() or None


def _loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (OSError, AttributeError):
        return None


def machine_info(runtime_info: dict) -> dict:
    import torch

    info: dict[str, Any] = {"torch": torch.__version__, "python": platform.python_version(),
                            "platform": platform.platform(), "cpu_count": os.cpu_count()}
    device = str(runtime_info.get("device", ""))
    if device.startswith("cuda") and torch.cuda.is_available():
        index = torch.device(device).index or 0
        info["device_name"] = torch.cuda.get_device_name(index)
    else:
        name = platform.processor() or platform.machine()
        try:
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
        except OSError:
            pass
        info["device_name"] = f"{name} ({os.cpu_count()} CPUs)"
    return info


def format_table(results: dict) -> str:
    head = ["workload", "cache", "wall s", "prog/s", "gen tok/s", "gen tok", "prompt tok", "cached tok",
            "hit rate", "speedup"]
    rows = []
    for name, r in results.items():
        for config, _ in CONFIGS:
            c = r[config]
            rows.append([name, config.removeprefix("cache_"), f"{c['wall_s']:.2f}", f"{c['programs_per_s']:.2f}",
                         f"{c['gen_tokens_per_s']:.1f}", str(c["generated_tokens"]), str(c["prompt_tokens"]),
                         str(c["cached_tokens"]), f"{c['cache_hit_rate']:.1%}",
                         f"{r['speedup']:.2f}x" if config == "cache_on" and r["speedup"] else ""])
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(head)]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) if i < 2 else c.rjust(w)
                                 for i, (c, w) in enumerate(zip(cells, widths))) + " |"

    sep = "|" + "|".join("-" * (w + 1) + ":" if i >= 2 else "-" * (w + 2) for i, w in enumerate(widths)) + "|"
    return "\n".join([line(head), sep, *(line(r) for r in rows)])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="local HF model folder (default: the offline tiny model)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="runtime device")
    parser.add_argument("--num-programs", type=int, default=32, help="programs per workload (run_batch size)")
    parser.add_argument("--max-tokens", type=int, default=8, help="max new tokens per gen")
    parser.add_argument("--workloads", default=",".join(WORKLOADS),
                        help=f"comma list of {', '.join(WORKLOADS)} (default: all)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="timed runs per workload and configuration; the median is reported (default 3)")
    parser.add_argument("--num-threads", default="auto", help="run_batch num_threads (default: auto)")
    parser.add_argument("--max-total-tokens", type=int, default=None, help="KV pool size (engine option)")
    parser.add_argument("--json", metavar="OUT", default=None, help="write the results as JSON to OUT")
    args = parser.parse_args(argv)
    if args.num_programs < 1 or args.max_tokens < 1 or args.repeats < 1:
        parser.error("--num-programs, --max-tokens and --repeats must be >= 1")
    if args.num_threads != "auto":
        try:
            args.num_threads = int(args.num_threads)
        except ValueError:
            parser.error("--num-threads must be an integer or 'auto'")
    names = []
    for raw in args.workloads.split(","):
        name = ALIASES.get(raw.strip(), raw.strip())
        if not name:
            continue
        if name not in WORKLOADS:
            parser.error(f"unknown workload {raw!r} (known: {', '.join(WORKLOADS)})")
        if name not in names:
            names.append(name)
    if not names:
        parser.error("no workloads selected")
    args.workload_names = names
    if args.model is None:
        from radixlm.testing import default_model_path

        args.model = str(default_model_path())
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = " ".join(shlex.quote(a) for a in [Path(sys.executable).name, *sys.argv])
    date = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    load_before = _loadavg()
    if load_before and load_before[0] > 0.5 * (os.cpu_count() or 1):
        print(f"note: load average {load_before[0]:.2f} on {os.cpu_count()} CPUs before the run; "
              f"other work on this machine will skew the timings", file=sys.stderr)
    t0 = time.perf_counter()
    results, runtime_info = run_all(args, args.workload_names)
    total = time.perf_counter() - t0

    machine = machine_info(runtime_info)
    machine["loadavg_before"], machine["loadavg_after"] = load_before, _loadavg()
    print(f"\nmodel: {args.model}")
    print(f"device: {runtime_info.get('device')} ({runtime_info.get('dtype')}), {machine['device_name']}, "
          f"torch {machine['torch']}")
    print(f"programs per workload: {args.num_programs}, max tokens per gen: {args.max_tokens}, "
          f"median of {args.repeats} timed run(s), total {total:.1f}s\n")
    print(format_table(results))
    print("\nspeedup = wall time with the cache off / with it on; token counts and hit rate cover the timed run only.")
    errors = sum(r[c]["errors"] for r in results.values() for c, _ in CONFIGS)
    if errors:
        print(f"WARNING: {errors} program(s) failed; see first_error in the JSON", file=sys.stderr)

    if args.json:
        payload = {
            "command": command, "argv": sys.argv, "date": date, "git_commit": _git_commit(),
            "machine": machine, "runtime": runtime_info,
            "settings": {"model": args.model, "device": args.device, "num_programs": args.num_programs,
                         "max_tokens": args.max_tokens, "workloads": args.workload_names,
                         "num_threads": args.num_threads, "max_total_tokens": args.max_total_tokens,
                         "repeats": args.repeats, "warmup_programs": WARMUP_PROGRAMS, "temperature": 0},
            "total_s": total,
            "results": results,
        }
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(payload, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
