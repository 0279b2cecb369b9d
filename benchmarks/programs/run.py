"""Run the SGLang-paper-shaped program workloads and their ablations.

    python benchmarks/programs/run.py                                   # all workloads, all ablations
    python benchmarks/programs/run.py --workloads mmlu,react --ablations cache,hints --num-programs 8
    python benchmarks/programs/run.py --model /path/to/hf-folder --device cuda --json out.json

Configurations, each a fresh `rl.Runtime` in this process, on the same inputs, greedy:

  baseline  radix cache on, schedule_policy="lpm", frontend hints on
  cache     disable_radix_cache=True
  fcfs      schedule_policy="fcfs"
  hints     frontend hints off: global_config.enable_precache_with_tracing = False (no prefix
            pre-cache in run_batch) AND the backend's cache_prefix replaced by a no-op, because
            the fork warm-up (lang/program_state.py, ProgramState.fork: prefill the shared prefix
            before the children start) has no switch; the no-op disables both hints.

Per workload and configuration: a 2-program warm-up (other inputs), then --repeats timed batches
(default 3), each from a flushed cache; the one with the median wall time is reported. Programs run
like `run_batch` does (prefix pre-cache when enabled, then one thread per program) but each program
is timed, for latency. Hit rate = cached / prompt tokens, `get_server_info` deltas over the run.
ratio = programs/s of the ablation / programs/s of the baseline (< 1: the ablation is slower).
Noise: on a shared VM, stretches of several seconds where everything runs 5-50x slower hit whichever
cell is running then (all its repeats); check `wall_s_all` in the JSON and rerun when one cell is off.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # benchmarks/: `import programs`

from run_info import command_line, git_commit, git_dirty, load_before_run, loadavg, machine_info, utc_now

import radixlm as rl
from programs.workloads import ALIASES, WORKLOADS, Workload

ABLATIONS: dict[str, dict[str, Any]] = {
    "cache": {"engine": {"disable_radix_cache": True}, "hints": True, "what": "radix cache disabled"},
    "fcfs": {
        "engine": {"schedule_policy": "fcfs"},
        "hints": True,
        "what": "FCFS instead of longest-prefix-match",
    },
    "hints": {
        "engine": {},
        "hints": False,
        "what": "no prefix pre-cache (enable_precache_with_tracing=False) and no fork warm-up "
        "(backend.cache_prefix monkeypatched to a no-op: lang/ has no switch for the fork warm-up)",
    },
}
BASELINE = {"engine": {}, "hints": True, "what": "radix cache on, lpm, frontend hints on"}
WARMUP_PROGRAMS = 2
WARMUP_OFFSET = 100_000


# ---------------------------------------------------------------------- running
def _flush(backend: Any) -> None:
    for _ in range(50):
        if rl.flush_cache(backend):
            return
        time.sleep(0.1)
    raise RuntimeError("flush_cache kept refusing (requests still running?)")


def run_programs(
    wl: Workload, inputs: list[dict], backend: Any, sampling: dict, num_threads: Any, driver: str
) -> list:
    """Runs the batch; returns (latency_s or None, error) per program.

    driver "run_batch": the program's own `run_batch`, what users call (no per-program latency).
    driver "threads": what run_batch did before issue 27 (pre-cache the traced prefix if enabled,
    a pool thread per program), with each program timed."""
    if driver == "run_batch":
        states = wl.program.run_batch(inputs, backend=backend, num_threads=num_threads, **sampling)
        return [(None, state.error()) for state in states]
    if len(inputs) > 1 and rl.global_config.enable_precache_with_tracing:
        wl.program.cache(backend)
    if num_threads == "auto":
        num_threads = max(96, (os.cpu_count() or 1) * 16)
    num_threads = max(1, min(int(num_threads), len(inputs)))

    def one(kwargs: dict) -> tuple[float, Any]:
        t0 = time.perf_counter()
        try:
            state = wl.program.run(backend=backend, **kwargs, **sampling)
            state.sync()
            error = state.error()
        except Exception as exc:  # the program's own Python code failed
            error = exc
        return time.perf_counter() - t0, error

    with concurrent.futures.ThreadPoolExecutor(num_threads) as pool:
        return list(pool.map(one, inputs))


def _p90(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, -(-9 * len(ordered) // 10) - 1))]


def timed_run(
    backend: Any, wl: Workload, inputs: list[dict], sampling: dict, args: argparse.Namespace
) -> dict:
    _flush(backend)  # every timed run starts from an empty cache
    before = rl.get_server_info(backend)
    t0 = time.perf_counter()
    outcomes = run_programs(wl, inputs, backend, sampling, args.num_threads, args.driver)
    wall = time.perf_counter() - t0
    after = rl.get_server_info(backend)
    errors = [e for _, e in outcomes if e is not None]
    latencies = [lat for lat, _ in outcomes if lat is not None]
    prompt = after["prompt_tokens"] - before["prompt_tokens"]
    cached = after["cached_tokens"] - before["cached_tokens"]
    generated = after["generated_tokens"] - before["generated_tokens"]
    return {
        "num_programs": len(outcomes),
        "errors": len(errors),
        "first_error": repr(errors[0]) if errors else None,
        "wall_s": wall,
        "programs_per_s": len(outcomes) / wall if wall > 0 else 0.0,
        "latency_mean_s": statistics.fmean(latencies) if latencies else None,
        "latency_p90_s": _p90(latencies) if latencies else None,
        "generated_tokens": generated,
        "prompt_tokens": prompt,
        "cached_tokens": cached,
        "cache_hit_rate": cached / prompt if prompt else 0.0,
        "requests": after.get("finished_requests", 0) - before.get("finished_requests", 0),
    }


def run_workload(backend: Any, wl: Workload, args: argparse.Namespace) -> dict:
    sampling = {"temperature": 0, "max_new_tokens": args.max_tokens}
    for _lat, error in run_programs(
        wl, wl.inputs(args.warmup_programs, WARMUP_OFFSET), backend, sampling, args.num_threads, args.driver
    ):
        if error is not None:
            raise RuntimeError(f"{wl.name}: warm-up program failed: {error!r}")
    inputs = wl.inputs(args.num_programs)
    runs = [timed_run(backend, wl, inputs, sampling, args) for _ in range(args.repeats)]
    median = sorted(runs, key=lambda r: r["wall_s"])[(len(runs) - 1) // 2]
    return {
        **median,
        "repeats": len(runs),
        "wall_s_all": [round(r["wall_s"], 4) for r in runs],
        "errors": sum(r["errors"] for r in runs),
        "first_error": next((r["first_error"] for r in runs if r["first_error"]), None),
    }


def run_config(name: str, config: dict, args: argparse.Namespace, results: dict) -> dict:
    engine_options: dict[str, Any] = {"device": args.device, **config["engine"]}
    if args.max_total_tokens:
        engine_options["max_total_tokens"] = args.max_total_tokens
    t0 = time.perf_counter()
    backend = rl.Runtime(args.model, **engine_options)
    saved_precache = rl.global_config.enable_precache_with_tracing
    try:
        info = rl.get_server_info(backend)
        print(
            f"[{name}] runtime up in {time.perf_counter() - t0:.1f}s on {info.get('device')}",
            file=sys.stderr,
            flush=True,
        )
        if not config["hints"]:
            rl.global_config.enable_precache_with_tracing = False
            backend.endpoint.cache_prefix = lambda prompt: None  # no fork warm-up, no pre-cache
        for wl_name in args.workload_names:
            r = run_workload(backend, WORKLOADS[wl_name], args)
            results[wl_name][name] = r
            print(
                f"[{name}] {wl_name:<8} {r['wall_s']:7.2f}s {r['programs_per_s']:7.2f} prog/s  "
                f"lat {_seconds(r['latency_mean_s'])}/{_seconds(r['latency_p90_s'])}s  "
                f"hit {r['cache_hit_rate']:6.1%}  "
                f"errors {r['errors']}",
                file=sys.stderr,
                flush=True,
            )
        return {
            k: info.get(k)
            for k in ("device", "dtype", "max_total_tokens", "context_length", "model_path")
            if info.get(k) is not None
        }
    finally:
        rl.global_config.enable_precache_with_tracing = saved_precache
        backend.shutdown()


def run_all(args: argparse.Namespace) -> tuple[dict, dict]:
    results: dict[str, dict] = {n: {"description": WORKLOADS[n].description} for n in args.workload_names}
    runtime_info = run_config("baseline", BASELINE, args, results)
    for ablation in args.ablation_names:
        run_config(ablation, ABLATIONS[ablation], args, results)
    for r in results.values():
        base = r["baseline"]["programs_per_s"]
        r["ratio_vs_baseline"] = {
            a: (r[a]["programs_per_s"] / base if base else None) for a in args.ablation_names
        }
    return results, runtime_info


# ---------------------------------------------------------------------- reporting
def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def format_table(results: dict, ablations: list[str]) -> str:
    head = [
        "workload",
        "config",
        "prog/s",
        "lat mean s",
        "lat p90 s",
        "hit rate",
        "gen tok",
        "prompt tok",
        "ratio",
    ]
    rows = []
    for name, r in results.items():
        for config in ["baseline", *ablations]:
            c = r[config]
            ratio = "1.00" if config == "baseline" else f"{r['ratio_vs_baseline'][config]:.2f}"
            rows.append(
                [
                    name,
                    config,
                    f"{c['programs_per_s']:.2f}",
                    _seconds(c["latency_mean_s"]),
                    _seconds(c["latency_p90_s"]),
                    f"{c['cache_hit_rate']:.1%}",
                    str(c["generated_tokens"]),
                    str(c["prompt_tokens"]),
                    ratio,
                ]
            )
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(head)]

    def line(cells: list[str]) -> str:
        return (
            "| "
            + " | ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))
            + " |"
        )

    sep = "|" + "|".join("-" * (w + 1) + ":" if i >= 2 else "-" * (w + 2) for i, w in enumerate(widths)) + "|"
    return "\n".join([line(head), sep, *(line(r) for r in rows)])


def _names(raw: str, known: dict, aliases: dict, what: str, parser: argparse.ArgumentParser) -> list[str]:
    names: list[str] = []
    for item in raw.split(","):
        name = aliases.get(item.strip(), item.strip())
        if not name or name in names:
            continue
        if name not in known:
            parser.error(f"unknown {what} {item!r} (known: {', '.join(known)})")
        names.append(name)
    return names


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model", default=None, help="local HF model folder (default: the offline tiny model)"
    )
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="runtime device")
    parser.add_argument(
        "--workloads", default=",".join(WORKLOADS), help=f"comma list of {', '.join(WORKLOADS)}"
    )
    parser.add_argument(
        "--ablations",
        default=",".join(ABLATIONS),
        help=f"comma list of {', '.join(ABLATIONS)} ('' or 'none': baseline only)",
    )
    parser.add_argument("--num-programs", type=int, default=16, help="programs per workload (default 16)")
    parser.add_argument(
        "--max-tokens", type=int, default=8, help="default max new tokens per gen (default 8)"
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per cell; the median is reported")
    parser.add_argument(
        "--warmup-programs",
        type=int,
        default=WARMUP_PROGRAMS,
        help=f"programs run (other inputs) before a cell's timed runs (default {WARMUP_PROGRAMS}; "
        "--num-programs also warms the worker threads and batch shapes the timed runs use)",
    )
    parser.add_argument(
        "--num-threads", default="auto", help="program threads (default: as run_batch's auto)"
    )
    parser.add_argument(
        "--driver",
        default="run_batch",
        choices=["run_batch", "threads"],
        help="run_batch: the program's run_batch (default); threads: a timed pool thread per program "
        "(per-program latency; how run_batch worked before issue 27)",
    )
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
    args.workload_names = _names(args.workloads, WORKLOADS, ALIASES, "workload", parser)
    if not args.workload_names:
        parser.error("no workloads selected")
    args.ablation_names = (
        [] if args.ablations == "none" else _names(args.ablations, ABLATIONS, {}, "ablation", parser)
    )
    if args.model is None:
        from radixlm.testing import default_model_path

        args.model = str(default_model_path())
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command, date, load_before = command_line(argv), utc_now(), load_before_run()
    t0 = time.perf_counter()
    results, runtime_info = run_all(args)
    total = time.perf_counter() - t0
    machine = machine_info(str(runtime_info.get("device", "")))
    machine["loadavg_before"], machine["loadavg_after"] = load_before, loadavg()

    print(
        f"\nmodel: {args.model}\ndevice: {runtime_info.get('device')} ({runtime_info.get('dtype')}), "
        f"{machine['device_name']}, torch {machine['torch']}"
    )
    print(
        f"{args.num_programs} programs per workload, max tokens per gen {args.max_tokens}, "
        f"median of {args.repeats} timed run(s), total {total:.1f}s\n"
    )
    print(format_table(results, args.ablation_names))
    print(
        "\nratio = programs/s of the configuration / programs/s of the baseline "
        "(< 1: slower than the baseline)."
    )
    for a in args.ablation_names:
        print(f"  {a}: {ABLATIONS[a]['what']}")
    configs = ["baseline", *args.ablation_names]
    errors = sum(r[c]["errors"] for r in results.values() for c in configs)
    if errors:
        print(f"WARNING: {errors} program(s) failed; see first_error in the JSON", file=sys.stderr)
    if args.json:
        payload = {
            "command": command,
            "argv": sys.argv,
            "date": date,
            "git_commit": git_commit(),
            "git_dirty": git_dirty(),
            "machine": machine,
            "runtime": runtime_info,
            "settings": {
                "model": args.model,
                "device": args.device,
                "num_programs": args.num_programs,
                "max_tokens": args.max_tokens,
                "workloads": args.workload_names,
                "ablations": args.ablation_names,
                "repeats": args.repeats,
                "num_threads": args.num_threads,
                "driver": args.driver,
                # which radixlm ran (gpu_session.sh's programs mode runs an older tree too)
                "radixlm_path": str(Path(rl.__file__).resolve().parent),
                "radixlm_label": os.environ.get("RADIXLM_LABEL", ""),
                "max_total_tokens": args.max_total_tokens,
                "warmup_programs": args.warmup_programs,
                "temperature": 0,
            },
            "configs": {
                "baseline": BASELINE["what"],
                **{a: ABLATIONS[a]["what"] for a in args.ablation_names},
            },
            "total_s": total,
            "results": results,
        }
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(payload, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
