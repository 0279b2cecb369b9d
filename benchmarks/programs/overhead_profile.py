"""Where run_batch's and fork's time goes (issue 27): overhead.py's programs, instrumented.

    python benchmarks/programs/overhead_profile.py                  # N=32, 7 samples per variant
    python benchmarks/programs/overhead_profile.py --yappi /path/to/site-packages --out prof.json

Instrumentation is monkeypatching in this process only (nothing in lang/ or client/ changes): each
wrapper adds perf_counter spans to a shared log. Per variant (run_batch auto, run_batch
num_threads=1, fork, a lone run, Engine.generate; and, sequentially, N Engine.generate calls,
N RuntimeClient.generate calls on one thread, and the same each on a fresh thread, which is what
the executor does), medians over samples of:

  wall                the whole call
  cache_step          SglFunction.cache (trace + the pre-cache request), run_batch only
  trace               the tracer alone
  precache_rt         the pre-cache request's round trip (cache_prefix), run_batch and fork
  executor_init       StateExecutor.__init__, summed over programs
  threads             threads started (threading.Thread.start), and their summed start cost
  sockets             new DEALER sockets made (RuntimeClient._socket with no socket on this thread)
                      and their summed cost
  gen_rt              RuntimeClient.generate round trips of the max_new_tokens>0 calls: mean,
                      and send spread (first send -> last send: do they reach the server together?)
  first_send          wall start -> the first gen's send
  last_reply          wall start -> the last gen's reply
  tm_prepare          TokenizerManager.prepare (tokenising + validation, on the event loop), summed
  tokenize            the tokenizer call inside prepare, summed
  (the radix cache stays warm, as in overhead.py, unless --flush)
  prefill_batches     scheduler prefill batches run during the call (server_info delta), and
                      requests finished: their ratio is the mean prefill batch

With --yappi (a site-packages folder holding yappi, e.g. a separate venv's), it also profiles
each variant with yappi (wall clock, all threads) and keeps the top functions by own time.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # overhead.py beside this file

import overhead as bench

import radixlm as rl
from radixlm.client.runtime_client import RuntimeClient
from radixlm.lang import program as lang_program
from radixlm.lang import tracer as lang_tracer
from radixlm.lang.backend.runtime import RuntimeEndpoint
from radixlm.lang.interpreter import StateExecutor

LOG: dict[str, list] = defaultdict(list)
LOCK = threading.Lock()


def _record(key: str, value: Any) -> None:
    with LOCK:
        LOG[key].append(value)


def _span(key: str, fn):
    def wrapped(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            _record(key, (t0, time.perf_counter()))

    return wrapped


def install(rt: Any) -> None:
    """Wrap the functions we time (class attributes, so every instance is covered)."""
    StateExecutor.__init__ = _span("executor_init", StateExecutor.__init__)
    threading.Thread.start = _span("thread_start", threading.Thread.start)
    lang_program.SglFunction.cache = _span("cache_step", lang_program.SglFunction.cache)
    lang_tracer.trace_prefix = _span("trace", lang_tracer.trace_prefix)
    RuntimeEndpoint.cache_prefix = _span("precache_rt", RuntimeEndpoint.cache_prefix)

    orig_socket = RuntimeClient._socket

    def socket(self):
        if getattr(self._local, "sock", None) is not None:
            return orig_socket(self)
        t0 = time.perf_counter()
        sock = orig_socket(self)
        _record("socket_new", (t0, time.perf_counter()))
        return sock

    RuntimeClient._socket = socket

    orig_generate = RuntimeClient.generate

    def generate(self, prompt=None, sampling_params=None, *args, **kwargs):
        t0 = time.perf_counter()
        try:
            return orig_generate(self, prompt, sampling_params, *args, **kwargs)
        finally:
            if (sampling_params or {}).get("max_new_tokens", 1) > 0:
                _record("gen_rt", (t0, time.perf_counter()))

    RuntimeClient.generate = generate

    tm = rt.engine.tokenizer_manager
    tm.prepare = _span("tm_prepare", tm.prepare)

    class TimedTokenizer:
        def __init__(self, inner: Any) -> None:
            self._inner = inner

        def __call__(self, *args, **kwargs):
            t0 = time.perf_counter()
            try:
                return self._inner(*args, **kwargs)
            finally:
                _record("tokenize", (t0, time.perf_counter()))

        def __getattr__(self, name: str) -> Any:
            return getattr(self._inner, name)

    tm.tokenizer = TimedTokenizer(tm.tokenizer)


def _summed_ms(key: str) -> float:
    return 1e3 * sum(b - a for a, b in LOG.get(key, []))


def sample(rt: Any, fn: Any, qs: list[str], do_flush: bool) -> dict:
    if do_flush:
        bench.flush(rt)
    before = rt.engine.get_server_info()
    LOG.clear()
    t0 = time.perf_counter()
    fn(rt, qs)
    t1 = time.perf_counter()
    snap = {k: list(v) for k, v in LOG.items()}
    after = rt.engine.get_server_info()
    gens = sorted(snap.get("gen_rt", []))
    out = {
        "wall_ms": 1e3 * (t1 - t0),
        "cache_step_ms": _summed_ms("cache_step"),
        "trace_ms": _summed_ms("trace"),
        "precache_rt_ms": _summed_ms("precache_rt"),
        "executor_init_ms": _summed_ms("executor_init"),
        "executors": len(snap.get("executor_init", [])),
        "threads_started": len(snap.get("thread_start", [])),
        "thread_start_ms": _summed_ms("thread_start"),
        "sockets_new": len(snap.get("socket_new", [])),
        "socket_new_ms": _summed_ms("socket_new"),
        "gens": len(gens),
        "gen_rt_mean_ms": 1e3 * statistics.fmean(b - a for a, b in gens) if gens else 0.0,
        "gen_send_spread_ms": 1e3 * (gens[-1][0] - gens[0][0]) if gens else 0.0,
        "first_send_ms": 1e3 * (gens[0][0] - t0) if gens else 0.0,
        "last_reply_ms": 1e3 * (max(b for _, b in gens) - t0) if gens else 0.0,
        "tm_prepare_ms": _summed_ms("tm_prepare"),
        "tokenize_ms": _summed_ms("tokenize"),
        "tokenize_calls": len(snap.get("tokenize", [])),
        "requests": after["finished_requests"] - before["finished_requests"],
        "prefill_batches": after["prefill_batches"] - before["prefill_batches"],
    }
    return out


def profile_variant(rt: Any, fn: Any, qs: list[str], samples: int, do_flush: bool) -> dict:
    fn(rt, bench.questions(len(qs), offset=100_000))  # warm-up
    if not do_flush:
        fn(rt, qs)  # the timed prompts' KV in the cache
    rows = [sample(rt, fn, qs, do_flush) for _ in range(samples)]
    return {k: statistics.median(r[k] for r in rows) for k in rows[0]} | {
        "wall_ms_all": [round(r["wall_ms"], 1) for r in rows]
    }


def yappi_top(rt: Any, fn: Any, qs: list[str], yappi_path: str, samples: int, top: int = 25) -> list:
    sys.path.append(yappi_path)
    import yappi

    fn(rt, bench.questions(len(qs), offset=100_000))
    yappi.set_clock_type("wall")
    yappi.clear_stats()
    yappi.start(builtins=True, profile_threads=True)
    for _ in range(samples):
        fn(rt, qs)
    yappi.stop()
    stats = yappi.get_func_stats()
    stats.sort("tsub", "desc")
    rows = []
    for st in list(stats)[:top]:
        rows.append(
            {
                "func": f"{Path(st.module).name}:{st.lineno} {st.name}",
                "calls_per_sample": st.ncall / samples,
                "own_ms_per_sample": 1e3 * st.tsub / samples,
                "total_ms_per_sample": 1e3 * st.ttot / samples,
            }
        )
    yappi.clear_stats()
    return rows


def client_reuse(rt: Any, qs: list[str]) -> None:
    """The N prompts as sequential RuntimeClient.generate calls on this thread (one socket)."""
    client = rt.endpoint.client
    for q in qs:
        client.generate(bench.prompt_text(q), {"max_new_tokens": 1, **bench.SAMPLING})


def client_fresh_thread(rt: Any, qs: list[str]) -> None:
    """The same calls, each on a new thread (so a new DEALER socket), as the executor does."""
    client = rt.endpoint.client
    for q in qs:
        t = threading.Thread(
            target=client.generate, args=(bench.prompt_text(q), {"max_new_tokens": 1, **bench.SAMPLING})
        )
        t.start()
        t.join()


def engine_sequential(rt: Any, qs: list[str]) -> None:
    """The N prompts as sequential Engine.generate calls (no ZeroMQ client, no DSL)."""
    for q in qs:
        rt.engine.generate(bench.prompt_text(q), {"max_new_tokens": 1, **bench.SAMPLING})


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="default: radixlm.testing.default_model_path()")
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--samples", type=int, default=7)
    p.add_argument("--flush", action="store_true", help="flush the radix cache before each sample")
    p.add_argument("--yappi", default=None, help="a site-packages folder holding yappi")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    if args.model is None:
        from radixlm.testing import default_model_path

        args.model = default_model_path()
    rt = rl.Runtime(args.model, device="cpu")
    variants = {
        "run": bench.variant_run,
        "engine": bench.variant_engine,
        "run_batch": bench.VARIANTS["run_batch"],
        "run_batch_t1": bench.VARIANTS["run_batch_t1"],
        "fork": bench.variant_fork,
        "engine_seq": engine_sequential,
        "client_reuse": client_reuse,
        "client_fresh_thread": client_fresh_thread,
    }
    results: dict[str, Any] = {}
    try:
        install(rt)
        for name, fn in variants.items():
            qs = bench.questions(1 if name == "run" else args.size)
            results[name] = profile_variant(rt, fn, qs, args.samples, args.flush)
            shown = {k: round(v, 2) for k, v in results[name].items() if k != "wall_ms_all"}
            print(f"{name}: " + json.dumps(shown))
        if args.yappi:
            for name in ("run_batch", "run_batch_t1", "fork"):
                qs = bench.questions(args.size)
                results[name]["yappi_top"] = yappi_top(rt, variants[name], qs, args.yappi, 3)
                print(f"\n{name} yappi (wall, all threads, per sample): own ms / total ms / calls")
                for row in results[name]["yappi_top"][:15]:
                    print(
                        f"  {row['own_ms_per_sample']:8.1f} {row['total_ms_per_sample']:8.1f} "
                        f"{row['calls_per_sample']:7.0f}  {row['func']}"
                    )
    finally:
        rt.shutdown()
    if args.out:
        Path(args.out).write_text(json.dumps({"size": args.size, "results": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
