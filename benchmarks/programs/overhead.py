"""The frontend's per-program overhead (issue 27): the DSL against the Engine on the same prompts.

    python benchmarks/programs/overhead.py                            # sizes 1,8,32,128, 5 repeats
    python benchmarks/programs/overhead.py --sizes 32 --repeats 9 --out /tmp/overhead.json

Every program is one `gen(max_tokens=1)` after a constant header (so run_batch's prefix pre-cache
runs, as it does for real programs) and a per-program question. In one process, on one
`rl.Runtime` (an Engine, its ZeroMQ endpoint and a RuntimeEndpoint, as users run it), medians of:

  run           a lone `program.run()` + `state.sync()` (one program, timed in every size's rounds)
  run_batch     `program.run_batch(N)` with num_threads="auto"
  run_batch_t1  `program.run_batch(N, num_threads=1)`
  engine        `Engine.generate` of the same N prompts (the exact texts the programs send,
                max_new_tokens=1) in one call, in-process: no DSL, no ZeroMQ client
  fork          one program that forks N children from the header, one question + gen each, join

Variants are interleaved (each round times every variant once), so the slow stretches of a shared
machine hit them alike; ratios are per round, then the median; minima are reported too.
Greedy (temperature 0). By default the radix cache stays warm: after each cell's warm-up the
timed samples repeat the same prompts, so prefill is one token past a cached prefix and what is
left is overhead (as in issue 27's numbers). --flush empties the cache before every timed sample
(outside the timing), so every variant also prefills its prompts cold. Scheduler-side, each
sample records `get_server_info` deltas: requests finished and prefill batches run (mean
prefill batch = requests / batches; run_batch and fork also count their one pre-cache request).

The default model is the tiny random llama the other CPU benchmarks use
(`radixlm.testing.default_model_path()`, built by `build_tiny_model`): this is what issue 27 calls
the tiny default model. With it on CPU the forward pass is cheap, so the numbers are overhead.
No timing is asserted anywhere; this is a measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # benchmarks/: `import run_info`

from run_info import command_line, git_commit, git_dirty, load_before_run, loadavg, machine_info, utc_now

import radixlm as rl

HEADER = (
    "You answer each question with one word.\n"
    "Question: What colour is the sky on a clear day?\nAnswer: blue\n"
    "Question: How many legs does a spider have?\nAnswer: eight\n"
    "Question: What is the opposite of cold?\nAnswer: hot\n"
)
SAMPLING = {"temperature": 0}


@rl.function
def one_gen(s, question):
    s += HEADER
    s += "Question: " + question + "\nAnswer:"
    s += rl.gen("answer", max_tokens=1)


@rl.function
def fork_gen(s, questions):
    s += HEADER
    forks = s.fork(len(questions))
    forks += ["Question: " + q + "\nAnswer:" for q in questions]
    forks += rl.gen("answer", max_tokens=1)
    forks.join()


def questions(n: int, offset: int = 0) -> list[str]:
    return [f"What number comes after {offset + i}?" for i in range(n)]


def prompt_text(question: str) -> str:
    """The exact text a program sends with its gen."""
    return HEADER + "Question: " + question + "\nAnswer:"


# ---------------------------------------------------------------------- the variants
def flush(backend: Any) -> None:
    for _ in range(50):
        if rl.flush_cache(backend):
            return
        time.sleep(0.05)
    raise RuntimeError("flush_cache kept refusing (requests still running?)")


def _check(states: list) -> None:
    for state in states:
        if state.error() is not None:
            raise RuntimeError(f"a program failed: {state.error()!r}")


def variant_run(rt: Any, qs: list[str]) -> None:
    state = one_gen.run(question=qs[0], backend=rt, **SAMPLING)
    state.sync()
    _check([state])


def variant_run_batch(num_threads: Any) -> Callable[[Any, list[str]], None]:
    def go(rt: Any, qs: list[str]) -> None:
        states = one_gen.run_batch(
            [{"question": q} for q in qs], backend=rt, num_threads=num_threads, **SAMPLING
        )
        _check(states)

    return go


def variant_engine(rt: Any, qs: list[str]) -> None:
    out = rt.engine.generate([prompt_text(q) for q in qs], {"max_new_tokens": 1, **SAMPLING})
    if len(out) != len(qs):
        raise RuntimeError(f"Engine.generate returned {len(out)} outputs for {len(qs)} prompts")


def variant_fork(rt: Any, qs: list[str]) -> None:
    state = fork_gen.run(questions=qs, backend=rt, **SAMPLING)
    state.sync()
    _check([state])
    if len(state["answer"]) != len(qs):
        raise RuntimeError("fork: wrong number of answers")


VARIANTS: dict[str, Callable[[Any, list[str]], None]] = {
    "run": variant_run,
    "run_batch": variant_run_batch("auto"),
    "run_batch_t1": variant_run_batch(1),
    "engine": variant_engine,
    "fork": variant_fork,
}


def _sample(rt: Any, fn: Callable, qs: list[str], do_flush: bool) -> tuple[float, int, int]:
    if do_flush:
        flush(rt)
    before = rt.engine.get_server_info()
    t0 = time.perf_counter()
    fn(rt, qs)
    wall = time.perf_counter() - t0
    after = rt.engine.get_server_info()
    return (
        wall,
        after["finished_requests"] - before["finished_requests"],
        after["prefill_batches"] - before["prefill_batches"],
    )


def _summary(samples: list[tuple[float, int, int]]) -> dict:
    walls = [w for w, _, _ in samples]
    return {
        "median_ms": 1e3 * statistics.median(walls),
        "min_ms": 1e3 * min(walls),
        "all_ms": [round(1e3 * w, 3) for w in walls],
        "requests": statistics.median(r for _, r, _ in samples),
        "prefill_batches": statistics.median(b for _, _, b in samples),
        "mean_prefill_batch": statistics.median(r / b for _, r, b in samples if b),
    }


def measure_size(rt: Any, n: int, repeats: int, do_flush: bool = False) -> dict:
    """Every variant at size N, interleaved: each round times each variant once, so a slow
    stretch of a shared machine hits all of them alike. Ratios are taken within a round
    (paired), then the median over rounds."""
    qs = questions(n)
    cells = {name: (fn, qs[:1] if name == "run" else qs) for name, fn in VARIANTS.items()}
    for fn, these in cells.values():
        fn(rt, questions(len(these), offset=100_000))  # warm-up on other inputs (threads, sockets)
        if not do_flush:
            fn(rt, these)  # the timed prompts' KV in the cache
    samples: dict[str, list] = {name: [] for name in cells}
    for _ in range(repeats):
        for name, (fn, these) in cells.items():
            samples[name].append(_sample(rt, fn, these, do_flush))
    row = {name: _summary(s) for name, s in samples.items()}

    def paired(a: str, b: str, scale: float = 1.0) -> float:
        return statistics.median(x[0] / y[0] / scale for x, y in zip(samples[a], samples[b]))

    row["ratios"] = {
        "run_batch_vs_engine": paired("run_batch", "engine"),
        "run_batch_t1_per_program_vs_run": paired("run_batch_t1", "run", n),
        "fork_vs_engine": paired("fork", "engine"),
    }
    row["ratios_of_min"] = {
        "run_batch_vs_engine": row["run_batch"]["min_ms"] / row["engine"]["min_ms"],
        "run_batch_t1_per_program_vs_run": row["run_batch_t1"]["min_ms"] / n / row["run"]["min_ms"],
        "fork_vs_engine": row["fork"]["min_ms"] / row["engine"]["min_ms"],
    }
    return row


def run_all(rt: Any, sizes: list[int], repeats: int, do_flush: bool) -> dict:
    results: dict[str, Any] = {}
    for n in sizes:
        results[str(n)] = measure_size(rt, n, repeats, do_flush)
        print(f"size {n}: done", file=sys.stderr, flush=True)
    return results


def format_table(results: dict, sizes: list[int], stat: str = "median_ms") -> str:
    """One line per N; `stat` median_ms (ratios: paired medians) or min_ms (ratios of minima)."""
    ratios = "ratios" if stat == "median_ms" else "ratios_of_min"
    head = [
        "N",
        "lone run ms",
        "engine ms",
        "run_batch ms",
        "x engine",
        "run_batch t1 ms",
        "t1 ms/prog",
        "x lone run",
        "fork ms",
        "x engine",
        "prefill batch eng/rb/t1/fork",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for n in sizes:
        row = results[str(n)]
        r = row[ratios]
        batch = "/".join(
            f"{row[k]['mean_prefill_batch']:.1f}" for k in ("engine", "run_batch", "run_batch_t1", "fork")
        )
        cells = [
            str(n),
            f"{row['run'][stat]:.1f}",
            f"{row['engine'][stat]:.1f}",
            f"{row['run_batch'][stat]:.1f}",
            f"{r['run_batch_vs_engine']:.2f}",
            f"{row['run_batch_t1'][stat]:.1f}",
            f"{row['run_batch_t1'][stat] / n:.2f}",
            f"{r['run_batch_t1_per_program_vs_run']:.2f}",
            f"{row['fork'][stat]:.1f}",
            f"{r['fork_vs_engine']:.2f}",
            batch,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--model",
        default=None,
        help="HF model folder (default: the tiny random llama, radixlm.testing.default_model_path())",
    )
    p.add_argument("--sizes", default="1,8,32,128", help="comma-separated batch sizes N")
    p.add_argument("--repeats", type=int, default=5, help="timed samples per cell (median reported)")
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--flush", action="store_true", help="flush the radix cache before every timed sample (cold)"
    )
    p.add_argument("--out", default=None, help="write the results as JSON here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.model is None:
        from radixlm.testing import default_model_path

        args.model = default_model_path()
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    load_before = load_before_run()
    rt = rl.Runtime(args.model, device=args.device)
    try:
        text = one_gen.run(question="x", backend=rt, **SAMPLING).text()
        if not text.startswith(prompt_text("x")):
            raise RuntimeError("prompt_text() does not match what the program sends")
        results = run_all(rt, sizes, args.repeats, args.flush)
        info = rt.engine.get_server_info()
    finally:
        rt.shutdown()
    table = format_table(results, sizes)
    table_min = format_table(results, sizes, "min_ms")
    print(f"\nmodel: {args.model}  device: {info.get('device')}  cpu_count: {os.cpu_count()}")
    print(f"medians over {args.repeats} interleaved rounds (ratios: median of per-round ratios)")
    print(table)
    print("minima (ratios of minima)")
    print(table_min)
    if args.out:
        doc = {
            "benchmark": "programs-overhead",
            "meta": {
                "utc": utc_now(),
                "command": command_line(argv),
                "git_commit": git_commit(),
                "git_dirty": git_dirty(),
                "model": args.model,
                "device": info.get("device"),
                "dtype": info.get("dtype"),
                "machine": machine_info(str(info.get("device", ""))),
                "cpu_count": os.cpu_count(),
                "loadavg_before": load_before,
                "loadavg_after": loadavg(),
                "repeats": args.repeats,
                "flush_between_samples": args.flush,
                "header_chars": len(HEADER),
            },
            "results": results,
            "table": table,
            "table_min": table_min,
        }
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(doc, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
