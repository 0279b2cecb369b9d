"""Online serving benchmark (after SGLang's `bench_serving` and Anyscale's LLMPerf).

    python benchmarks/serving.py                                  # tiny offline model, gsp workload,
                                                                  # in-process Engine
    python benchmarks/serving.py --ablate --json out.json         # also with the radix cache off, plus ratios
    python benchmarks/serving.py --dataset random --random-input-mean 256 --random-input-std 64 \\
        --random-output-mean 32 --random-output-std 8 --num-prompts 64 --request-rate 8 --max-concurrency 16
    python benchmarks/serving.py --backend http --url http://127.0.0.1:30000 --model /path/to/hf-folder

Backends: `engine` runs an in-process `Engine(model, device=..., dtype=...)` and drives its
tokenizer manager with asyncio on the engine's own event loop (requests are concurrent and
streamed, as an HTTP client's would be, minus HTTP). `http` streams the native `/generate`
route of a running `radixlm serve` with httpx (the server sends cumulative `output_ids`).
Prompts are sent as token ids, so the shared prefixes are exact and the prompt lengths are what
the dataset says. `--model` must name the served model's folder for `http` too (tokenizer
vocabulary, parameter count, KV shape).

Datasets (generated here from `--seed`; nothing is downloaded):
  random: input and output lengths ~ Normal(mean, std) (LLMPerf-style), rounded, clipped to >= 1;
      prompts are random token ids (special tokens excluded).
  generated-shared-prefix (gsp): --gsp-num-groups groups, each with its own random system prompt of
      --gsp-system-prompt-len tokens, and --gsp-prompts-per-group questions of --gsp-question-len
      random tokens; prompt = system prompt + question; every output --gsp-output-len tokens; the
      requests are shuffled (as SGLang's bench_serving does).
Every request has `ignore_eos` and `max_new_tokens` = its output length, temperature 0.

Load: `--request-rate R` (Poisson arrivals: exponential gaps of mean 1/R, same seed every run;
`inf` sends all at t=0) and/or `--max-concurrency N` (an asyncio semaphore). Per configuration
the whole workload runs once untimed (warm-up: allocator, batch shapes), then `--repeats` timed
runs, each after a cache flush (so each starts with an empty radix cache); with --ablate both
engines stay up and their timed runs alternate, so load from elsewhere hits both alike. The run
with the median duration is reported; all durations and the load average are kept.

Metrics (bench_serving's definitions):
  duration = first send to last completion; request throughput = completed / duration;
  input tok/s = sum prompt tokens / duration; output tok/s = sum output tokens / duration.
  TTFT = time from send to the first streamed chunk carrying tokens.
  ITL = gaps between later chunks, a chunk of k tokens contributing k gaps of gap/k (pooled).
  TPOT per request = (E2E - TTFT) / (output tokens - 1), for outputs of > 1 token.
  E2E = send to last chunk. Each is summarised as mean, median, p90, p99 (ms).
  cache hit rate = sum cached_tokens / sum prompt_tokens over the run (server's meta_info).
  MBU (decode) = bytes read per decode step / mean TPOT / memory bandwidth, where bytes per step
      = weight bytes + decode batch x mean context x KV bytes per token; decode batch = the mean
      number of requests in their decode phase (sum of (E2E - TTFT) / duration); mean context =
      mean prompt length + half the mean output length. Bandwidth: --mem-bandwidth-gbs, else
      measured here by copying a large tensor on the device (2 x bytes per copy). An estimate:
      with a tiny model on CPU, per-step overheads dominate and MBU is small.
  MFU (prefill) = 2 x non-embedding params x prompt tokens actually computed (prompt - cached),
      divided by the prefill time, over the peak: --peak-tflops, else the rate a square matmul
      micro-benchmark reaches here in the model dtype (an attainable, not a datasheet, peak).
      Prefill time = the union of the requests' [send, first token] intervals (time with at least
      one request waiting for its first token); it includes queueing and interleaved decode
      steps, so this MFU is a lower bound.
Weight bytes and parameter counts come from the model folder's safetensors headers.

`--ablate` (engine backend) runs the same requests again in this process on a second Engine with
`disable_radix_cache=True` and reports both runs plus the ratios (cache on / cache off) of
output throughput and of mean TTFT. On a shared-prefix workload this shows the radix cache's
effect. On CPU, `--cpu-threads 1` (OMP_NUM_THREADS for the engine's processes) keeps other load
on the machine from slowing the OpenMP-parallel steps down by an order of magnitude.
`--hf-baseline` (off by default) then runs the peer baseline in the same process on the same
prompts (token ids) and output lengths: Hugging Face transformers `generate` on the same model
folder, device and dtype (benchmarks/hf_baseline.py: greedy, min_new_tokens = max_new_tokens,
left-padded batches of --hf-batch-size, default --max-concurrency or all requests at once), after
the radixlm engines are shut down so the two never compete. `--hf-modes eager,static-compile`
(default eager; static-compile = `cache_implementation="static"`, compiled by transformers only on
GPU). HF gets the same warm-up + --repeats passes and the same --cpu-threads (torch threads). The
table then has an `hf_eager` column (throughput, E2E; HF has no streaming, so no TTFT/ITL) and
rows `output tok/s vs hf_eager` = radixlm output throughput / HF's; the JSON has `hf_baseline`
(per mode) and `ratios_vs_hf` (per mode, per radixlm run: output and total throughput ratios).
`--json OUT` writes everything, with the command line, date, git commit, machine and
torch version.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import math
import os
import random
import shlex
import struct
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np
import torch
from run_info import git_commit, git_dirty, loadavg, machine_info

DTYPE_BYTES = {
    "F64": 8,
    "F32": 4,
    "F16": 2,
    "BF16": 2,
    "I64": 8,
    "I32": 4,
    "I16": 2,
    "I8": 1,
    "U8": 1,
    "BOOL": 1,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
}
TORCH_DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}


# ---------------------------------------------------------------------- model facts
def model_facts(model_path: str) -> dict:
    """Parameter counts and bytes from the safetensors headers; KV shape from config.json."""
    from radixlm.runtime.config import ModelConfig

    folder = Path(model_path)
    params = embed = stored_bytes = 0
    for f in sorted(folder.glob("*.safetensors")):
        with open(f, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(n))
        for name, meta in header.items():
            if name == "__metadata__":
                continue
            count = math.prod(meta["shape"])
            params += count
            stored_bytes += count * DTYPE_BYTES.get(meta["dtype"], 4)
            if "embed_tokens" in name:
                embed += count
    cfg = ModelConfig.from_path(folder)
    return {
        "params": params,
        "embedding_params": embed,
        "non_embedding_params": params - embed,
        "stored_weight_bytes": stored_bytes,
        "num_layers": cfg.num_layers,
        "num_kv_heads": cfg.num_kv_heads,
        "head_dim": cfg.head_dim,
        "vocab_size": cfg.vocab_size,
        "config_dtype": cfg.torch_dtype,
    }


# ---------------------------------------------------------------------- datasets
def _special_ids(tokenizer: Any) -> set[int]:
    ids = set(getattr(tokenizer, "all_special_ids", None) or [])
    return {i for i in ids if isinstance(i, int)}


def _random_ids(rng: random.Random, n: int, vocab: int, banned: set[int]) -> list[int]:
    out = []
    while len(out) < n:
        t = rng.randrange(vocab)
        if t not in banned:
            out.append(t)
    return out


def build_dataset(args: argparse.Namespace, vocab: int, banned: set[int]) -> list[dict]:
    rng = random.Random(args.seed)
    reqs: list[dict] = []
    if args.dataset == "random":
        for _ in range(args.num_prompts):
            n_in = max(1, round(rng.gauss(args.random_input_mean, args.random_input_std)))
            n_out = max(1, round(rng.gauss(args.random_output_mean, args.random_output_std)))
            reqs.append({"input_ids": _random_ids(rng, n_in, vocab, banned), "output_len": n_out})
    else:
        for g in range(args.gsp_num_groups):
            system = _random_ids(rng, args.gsp_system_prompt_len, vocab, banned)
            for _ in range(args.gsp_prompts_per_group):
                question = _random_ids(rng, args.gsp_question_len, vocab, banned)
                reqs.append({"input_ids": system + question, "output_len": args.gsp_output_len, "group": g})
        rng.shuffle(reqs)
    return reqs


# ---------------------------------------------------------------------- request drivers
class EngineTarget:
    def __init__(self, model: str, options: dict) -> None:
        from radixlm import Engine

        self.engine = Engine(model, **options)
        info = self.engine.get_server_info()
        self.device, self.dtype = info.get("device", "cpu"), info.get("dtype", "float32")

    def run(self, coro: Any) -> Any:
        return self.engine._call(coro)  # the tokenizer manager lives on the engine's loop

    async def request(self, ids: list[int], params: dict, on_chunk: Any) -> dict:
        tm = self.engine.tokenizer_manager
        prepared = tm.prepare(None, ids, params)
        meta: dict = {}
        async for item in tm.generate(prepared, stream=True):
            on_chunk(len(item["output_ids"]))
            meta = item["meta_info"]
        return meta

    def flush(self) -> None:
        self.engine.flush_cache()

    def close(self) -> None:
        self.engine.shutdown()


class HttpTarget:
    def __init__(self, url: str) -> None:
        import httpx

        self.url = url.rstrip("/")
        self._httpx = httpx
        info = httpx.get(self.url + "/server_info", timeout=30).json()
        self.device, self.dtype = info.get("device", "cpu"), info.get("dtype", "float32")
        self.client = None

    def run(self, coro: Any) -> Any:
        async def wrapped() -> Any:
            limits = self._httpx.Limits(max_connections=None, max_keepalive_connections=None)
            async with self._httpx.AsyncClient(timeout=None, limits=limits) as client:
                self.client = client
                return await coro

        return asyncio.run(wrapped())

    async def request(self, ids: list[int], params: dict, on_chunk: Any) -> dict:
        body = {"input_ids": ids, "sampling_params": params, "stream": True}
        meta: dict = {}
        seen = 0
        async with self.client.stream("POST", self.url + "/generate", json=body) as resp:
            if resp.status_code != 200:
                raise RuntimeError(f"HTTP {resp.status_code}: {(await resp.aread())[:500]!r}")
            async for line in resp.aiter_lines():
                if not line.startswith("data: "):
                    continue
                data = line[6:]
                if data == "[DONE]":
                    break
                chunk = json.loads(data)
                if "error" in chunk:
                    raise RuntimeError(f"server error: {chunk['error']}")
                total = len(chunk["output_ids"])  # cumulative
                on_chunk(total - seen)
                seen = total
                meta = chunk["meta_info"]
        return meta

    def flush(self) -> None:
        self._httpx.post(self.url + "/flush_cache", timeout=60)

    def close(self) -> None:
        pass


async def _one(target: Any, req: dict, t0: float) -> dict:
    params = {"max_new_tokens": req["output_len"], "ignore_eos": True, "temperature": 0.0}
    rec: dict = {"start": time.perf_counter() - t0, "ttft": None, "itl": [], "chunks": 0}
    start = time.perf_counter()
    last = [start]

    def on_chunk(n_new: int) -> None:
        now = time.perf_counter()
        if n_new <= 0:
            return
        rec["chunks"] += 1
        if rec["ttft"] is None:
            rec["ttft"] = now - start
        else:
            rec["itl"].extend([(now - last[0]) / n_new] * n_new)
        last[0] = now

    try:
        meta = await target.request(req["input_ids"], params, on_chunk)
    except Exception as exc:  # reported, not fatal
        rec.update(ok=False, error=f"{type(exc).__name__}: {exc}")
        return rec
    rec.update(
        ok=True,
        e2e=last[0] - start,
        prompt_tokens=meta.get("prompt_tokens", len(req["input_ids"])),
        output_tokens=meta.get("completion_tokens", 0),
        cached_tokens=meta.get("cached_tokens", 0),
    )
    return rec


async def run_load(
    target: Any, reqs: list[dict], rate: float, max_concurrency: int | None, seed: int
) -> tuple[list[dict], float]:
    rng = random.Random(seed + 1)
    sem = asyncio.Semaphore(max_concurrency) if max_concurrency else None
    t0 = time.perf_counter()

    async def limited(req: dict) -> dict:
        if sem is None:
            return await _one(target, req, t0)
        async with sem:
            return await _one(target, req, t0)

    tasks = []
    for req in reqs:
        tasks.append(asyncio.ensure_future(limited(req)))
        if math.isfinite(rate) and rate > 0:
            await asyncio.sleep(rng.expovariate(rate))
    records = await asyncio.gather(*tasks)
    return list(records), time.perf_counter() - t0


# ---------------------------------------------------------------------- device micro-benchmarks
def sync_device(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def measure_bandwidth_gbs(device: str) -> float:
    """Copy a large tensor; bytes moved = 2 x size (read + write). Best of several copies."""
    nbytes = (1 << 30) if device.startswith("cuda") else (256 << 20)
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).fill_(1.0)
    dst = torch.empty_like(src)
    best = math.inf
    for _ in range(8):
        sync_device(device)
        t = time.perf_counter()
        dst.copy_(src)
        sync_device(device)
        best = min(best, time.perf_counter() - t)
    del src, dst
    return 2 * nbytes / best / 1e9


def measure_matmul_tflops(device: str, dtype: str) -> float:
    n = 8192 if device.startswith("cuda") else 1024
    dt = getattr(torch, dtype)
    if not device.startswith("cuda") and dt == torch.float16:
        dt = torch.float32
    a = torch.randn(n, n, device=device, dtype=dt)
    b = torch.randn(n, n, device=device, dtype=dt)
    for _ in range(2):
        a @ b
    best = math.inf
    for _ in range(5):
        sync_device(device)
        t = time.perf_counter()
        a @ b
        sync_device(device)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e12


# ---------------------------------------------------------------------- metrics
def _summary(values: list[float], scale: float = 1000.0) -> dict:
    if not values:
        return {"mean": None, "median": None, "p90": None, "p99": None}
    arr = np.asarray(values, dtype=np.float64) * scale
    return {
        "mean": float(arr.mean()),
        "median": float(np.percentile(arr, 50)),
        "p90": float(np.percentile(arr, 90)),
        "p99": float(np.percentile(arr, 99)),
    }


def _union_length(intervals: list[tuple[float, float]]) -> float:
    total, end = 0.0, -math.inf
    for a, b in sorted(intervals):
        if b <= end:
            continue
        total += b - max(a, end)
        end = b
    return total


def compute_metrics(
    records: list[dict],
    duration: float,
    facts: dict,
    dtype: str,
    bandwidth_gbs: float,
    peak_tflops: float | None,
) -> dict:
    ok = [r for r in records if r.get("ok") and r["ttft"] is not None]
    n_in = sum(r["prompt_tokens"] for r in ok)
    n_out = sum(r["output_tokens"] for r in ok)
    n_cached = sum(r["cached_tokens"] for r in ok)
    tpots = [(r["e2e"] - r["ttft"]) / (r["output_tokens"] - 1) for r in ok if r["output_tokens"] > 1]
    itls = [x for r in ok for x in r["itl"]]
    m: dict[str, Any] = {
        "completed": len(ok),
        "failed": len(records) - len(ok),
        "errors": sorted({r["error"] for r in records if not r.get("ok")})[:5],
        "duration_s": duration,
        "total_input_tokens": n_in,
        "total_output_tokens": n_out,
        "total_cached_tokens": n_cached,
        "request_throughput": len(ok) / duration,
        "input_throughput": n_in / duration,
        "output_throughput": n_out / duration,
        "total_throughput": (n_in + n_out) / duration,
        "ttft_ms": _summary([r["ttft"] for r in ok]),
        "itl_ms": _summary(itls),
        "tpot_ms": _summary(tpots),
        "e2e_ms": _summary([r["e2e"] for r in ok]),
        "concurrency": sum(r["e2e"] for r in ok) / duration,
        "cache_hit_rate": n_cached / n_in if n_in else 0.0,
    }
    # MBU (decode)
    wbytes = TORCH_DTYPE_BYTES.get(dtype, 4)
    weight_bytes = facts["params"] * wbytes
    kv_per_token = 2 * facts["num_layers"] * facts["num_kv_heads"] * facts["head_dim"] * wbytes
    decode_batch = sum(r["e2e"] - r["ttft"] for r in ok) / duration if ok else 0.0
    mean_ctx = (n_in / len(ok) + 0.5 * n_out / len(ok)) if ok else 0.0
    bytes_per_step = weight_bytes + decode_batch * mean_ctx * kv_per_token
    mean_tpot_s = (m["tpot_ms"]["mean"] or 0) / 1000
    achieved = bytes_per_step / mean_tpot_s / 1e9 if mean_tpot_s else None
    m["mbu"] = {
        "weight_bytes": weight_bytes,
        "kv_bytes_per_token": kv_per_token,
        "decode_batch": decode_batch,
        "mean_context": mean_ctx,
        "bytes_per_step": bytes_per_step,
        "achieved_gbs": achieved,
        "bandwidth_gbs": bandwidth_gbs,
        "mbu": achieved / bandwidth_gbs if achieved and bandwidth_gbs else None,
    }
    # MFU (prefill)
    computed = n_in - n_cached
    prefill_time = _union_length([(r["start"], r["start"] + r["ttft"]) for r in ok])
    flops = 2 * facts["non_embedding_params"] * computed
    achieved_tf = flops / prefill_time / 1e12 if prefill_time else None
    m["mfu"] = {
        "computed_prompt_tokens": computed,
        "prefill_time_s": prefill_time,
        "flops": flops,
        "achieved_tflops": achieved_tf,
        "peak_tflops": peak_tflops,
        "mfu": achieved_tf / peak_tflops if achieved_tf and peak_tflops else None,
    }
    return m


# ---------------------------------------------------------------------- reporting
def _fmt(x: Any, digits: int = 2) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def _safe(get: Any, m: dict) -> Any:
    """A metric the column doesn't have (HF baseline: no TTFT, MBU, ...) shows as '-'."""
    try:
        return get(m)
    except (KeyError, TypeError):
        return None


def format_table(runs: dict[str, dict], hf: dict[str, dict] | None = None) -> str:
    """One column per radixlm run, then one per HF baseline mode (`hf_eager`, ...)."""
    hf = hf or {}
    cols = {**runs, **hf}
    names = list(cols)
    rows: list[list[str]] = []

    def add(label: str, get: Any, digits: int = 2) -> None:
        rows.append([label] + [_fmt(_safe(get, cols[n]), digits) for n in names])

    add("completed / failed", lambda m: f"{m['completed']} / {m['failed']}")
    add("duration (s)", lambda m: m["duration_s"], 3)
    add("durations of all runs (s)", lambda m: " ".join(f"{d:.3f}" for d in m["durations_all_s"]))
    add("request throughput (req/s)", lambda m: m["request_throughput"])
    add("input throughput (tok/s)", lambda m: m["input_throughput"], 1)
    add("output throughput (tok/s)", lambda m: m["output_throughput"], 1)
    add("cache hit rate", lambda m: m["cache_hit_rate"], 3)
    for key, label in (("ttft_ms", "TTFT"), ("itl_ms", "ITL"), ("tpot_ms", "TPOT"), ("e2e_ms", "E2E")):
        for stat in ("mean", "median", "p90", "p99"):
            add(f"{label} {stat} (ms)", lambda m, k=key, s=stat: m[k][s])
    add("concurrency (mean)", lambda m: m["concurrency"])
    add("decode MBU", lambda m: m["mbu"]["mbu"], 4)
    add("decode achieved GB/s", lambda m: m["mbu"]["achieved_gbs"], 3)
    add("prefill MFU", lambda m: m["mfu"]["mfu"], 4)
    add("prefill achieved TFLOP/s", lambda m: m["mfu"]["achieved_tflops"], 4)
    for hf_name, h in hf.items():  # radixlm / HF, per column; the HF column itself is 1
        add(f"output tok/s vs {hf_name} (x)", lambda m, h=h: m["output_throughput"] / h["output_throughput"])
    head = ["metric"] + names
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]

    def line(cells: list[str]) -> str:
        return (
            "| "
            + " | ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))
            + " |"
        )

    sep = "|" + "|".join("-" * (w + 2) if i == 0 else "-" * (w + 1) + ":" for i, w in enumerate(widths)) + "|"
    return "\n".join([line(head), sep, *(line(r) for r in rows)])


# ---------------------------------------------------------------------- main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--backend", choices=["engine", "http"], default="engine")
    p.add_argument("--url", default="http://127.0.0.1:30000")
    p.add_argument("--model", default=None, help="model folder (default: the offline tiny model)")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--max-total-tokens", type=int, default=None)
    p.add_argument(
        "--dataset", choices=["generated-shared-prefix", "gsp", "random"], default="generated-shared-prefix"
    )
    p.add_argument("--num-prompts", type=int, default=32, help="random dataset")
    p.add_argument("--random-input-mean", type=float, default=256)
    p.add_argument("--random-input-std", type=float, default=64)
    p.add_argument("--random-output-mean", type=float, default=32)
    p.add_argument("--random-output-std", type=float, default=8)
    p.add_argument("--gsp-num-groups", type=int, default=4)
    p.add_argument("--gsp-prompts-per-group", type=int, default=8)
    p.add_argument("--gsp-system-prompt-len", type=int, default=512)
    p.add_argument("--gsp-question-len", type=int, default=32)
    p.add_argument("--gsp-output-len", type=int, default=32)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--request-rate", type=float, default=math.inf)
    p.add_argument("--max-concurrency", type=int, default=None)
    p.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="timed runs per configuration after one untimed warm-up run; "
        "the median-duration run is reported",
    )
    p.add_argument(
        "--ablate", action="store_true", help="engine backend: rerun with disable_radix_cache=True"
    )
    p.add_argument(
        "--cpu-threads",
        type=int,
        default=None,
        help="set OMP_NUM_THREADS for the engine's processes (CPU: with other load on the machine, "
        "OpenMP threads oversubscribing the cores can slow steps down many times)",
    )
    p.add_argument(
        "--hf-baseline",
        action="store_true",
        help="also run Hugging Face transformers generate on the same prompts (after the radixlm runs)",
    )
    p.add_argument(
        "--hf-modes",
        default="eager",
        help="comma list of eager, static-compile (static cache; compiled by transformers on GPU only)",
    )
    p.add_argument(
        "--hf-batch-size",
        type=int,
        default=None,
        help="HF generate batch size (default: --max-concurrency, else all requests in one batch)",
    )
    p.add_argument("--mem-bandwidth-gbs", type=float, default=None)
    p.add_argument("--peak-tflops", type=float, default=None)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    if args.dataset == "gsp":
        args.dataset = "generated-shared-prefix"
    if args.ablate and args.backend != "engine":
        p.error("--ablate needs --backend engine (the cache is a server option)")
    from hf_baseline import MODES as HF_MODES

    args.hf_modes = [m.strip() for m in args.hf_modes.split(",") if m.strip()]
    if not args.hf_modes or any(m not in HF_MODES for m in args.hf_modes):
        p.error(f"--hf-modes: choose from {', '.join(HF_MODES)}")
    if args.hf_batch_size is not None and args.hf_batch_size < 1:
        p.error("--hf-batch-size must be >= 1")
    return args


def run_hf(args: argparse.Namespace, reqs: list[dict], device: str, dtype: str) -> dict[str, dict]:
    """The HF generate peer on the same prompts, device and dtype; one entry per --hf-modes."""
    from hf_baseline import run_hf_baseline

    batch = args.hf_batch_size or args.max_concurrency or len(reqs)
    out = {}
    for mode in args.hf_modes:
        print(
            f"[hf] {mode}: batch size {min(batch, len(reqs))}, {len(reqs)} requests",
            file=sys.stderr,
            flush=True,
        )
        out["hf_" + mode.replace("-", "_")] = run_hf_baseline(
            args.model,
            [r["input_ids"] for r in reqs],
            [r["output_len"] for r in reqs],
            batch_size=batch,
            mode=mode,
            device=device,
            dtype=dtype,
            repeats=args.repeats,
            threads=args.cpu_threads,
        )
    return out


def run_configs(targets: dict[str, Any], reqs: list[dict], args: argparse.Namespace) -> dict[str, tuple]:
    """Warm each target up with the whole workload (untimed), then --repeats rounds; in each round
    every target runs once from an empty cache (interleaved, so load from elsewhere on the machine
    spreads over the configurations alike). Per target: the median-duration run, all durations
    and the load average around each run."""

    def once(target: Any) -> tuple[list[dict], float]:
        target.flush()
        return target.run(run_load(target, reqs, args.request_rate, args.max_concurrency, args.seed))

    for target in targets.values():
        once(target)
    results: dict[str, list] = {name: [] for name in targets}
    loads: dict[str, list] = {name: [] for name in targets}
    for _ in range(args.repeats):
        for name, target in targets.items():
            results[name].append(once(target))
            loads[name].append(loadavg())
    out = {}
    for name, rs in results.items():
        order = sorted(range(len(rs)), key=lambda i: rs[i][1])
        records, duration = rs[order[len(order) // 2]]
        out[name] = (records, duration, [d for _, d in rs], loads[name])
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.model is None:
        from radixlm.testing import default_model_path

        args.model = default_model_path()
    from radixlm.runtime.tokenizer import load_tokenizer

    facts = model_facts(args.model)
    tokenizer = load_tokenizer(args.model)
    banned = _special_ids(tokenizer)
    vocab = min(facts["vocab_size"], len(tokenizer))
    reqs = build_dataset(args, vocab, banned)
    if args.cpu_threads:
        os.environ["OMP_NUM_THREADS"] = str(args.cpu_threads)  # inherited by the spawned scheduler
    options: dict[str, Any] = {"device": args.device, "dtype": args.dtype}
    if args.max_total_tokens:
        options["max_total_tokens"] = args.max_total_tokens

    configs = [("cache_on" if args.backend == "engine" else "server", {})] + (
        [("cache_off", {"disable_radix_cache": True})] if args.ablate else []
    )
    runs: dict[str, dict] = {}
    device = dtype = "cpu"
    targets: dict[str, Any] = {}
    try:
        for name, extra in configs:
            targets[name] = (
                EngineTarget(args.model, {**options, **extra})
                if args.backend == "engine"
                else HttpTarget(args.url)
            )
        first = next(iter(targets.values()))
        device, dtype = first.device, first.dtype
        measured = run_configs(targets, reqs, args)
    finally:
        for target in targets.values():
            target.close()
    # the peer after radixlm is shut down, so they never share the machine
    hf = run_hf(args, reqs, device, dtype) if args.hf_baseline else {}
    # after the runs, so the engines' own work doesn't compete with the micro-benchmarks
    bandwidth = args.mem_bandwidth_gbs or measure_bandwidth_gbs(device)
    peak = args.peak_tflops or measure_matmul_tflops(device, dtype)
    for name, extra in configs:
        records, duration, durations, loads = measured[name]
        runs[name] = compute_metrics(records, duration, facts, dtype, bandwidth, peak)
        runs[name]["options"] = {**options, **extra}
        runs[name]["durations_all_s"] = durations
        runs[name]["loadavg_after_each_run"] = loads  # other load on the machine skews timings

    ratios = None
    if "cache_off" in runs:
        on, off = runs["cache_on"], runs["cache_off"]
        ratios = {
            "output_throughput_on_over_off": on["output_throughput"] / off["output_throughput"],
            "request_throughput_on_over_off": on["request_throughput"] / off["request_throughput"],
            "mean_ttft_on_over_off": (
                on["ttft_ms"]["mean"] / off["ttft_ms"]["mean"] if off["ttft_ms"]["mean"] else None
            ),
        }
    ratios_vs_hf = {
        hf_name: {
            name: {
                "output_throughput": m["output_throughput"] / h["output_throughput"],
                "total_throughput": m["total_throughput"] / h["total_throughput"],
            }
            for name, m in runs.items()
        }
        for hf_name, h in hf.items()
    } or None
    machine = machine_info(device or "cpu")
    settings = {k: (None if isinstance(v, float) and math.isinf(v) else v) for k, v in vars(args).items()}
    settings["request_rate"] = "inf" if math.isinf(args.request_rate) else args.request_rate
    print(
        f"radixlm serving benchmark: backend={args.backend} model={args.model} device={device} dtype={dtype}"
    )
    print(
        f"dataset={args.dataset} requests={len(reqs)} request_rate={settings['request_rate']} "
        f"max_concurrency={args.max_concurrency} machine={machine['device_name']}"
    )
    print(
        f"memory bandwidth {bandwidth:.1f} GB/s "
        f"({'given' if args.mem_bandwidth_gbs else 'measured: tensor copy'}), "
        f"peak {peak:.4f} TFLOP/s ({'given' if args.peak_tflops else f'measured: matmul, {dtype}'}), "
        f"params {facts['params']:,} (non-embedding {facts['non_embedding_params']:,})"
    )
    print(format_table(runs, hf))
    for hf_name, per_run in (ratios_vs_hf or {}).items():
        print(
            f"ratios (radixlm / {hf_name}, output throughput): "
            + ", ".join(f"{name} {r['output_throughput']:.2f}x" for name, r in per_run.items())
        )
    if ratios:
        print(
            "ratios (cache on / cache off): output throughput "
            f"{ratios['output_throughput_on_over_off']:.2f}x, "
            f"mean TTFT {_fmt(ratios['mean_ttft_on_over_off'])}x"
        )
    for name, m in runs.items():
        if m["errors"]:
            print(f"{name}: errors: {m['errors']}", file=sys.stderr)
    if args.json:
        out = {
            "command": shlex.join([sys.executable, *sys.argv]),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "git_commit": git_commit(),
            "git_dirty": git_dirty(),
            "machine": machine,
            "device": device,
            "dtype": dtype,
            "settings": settings,
            "omp_num_threads_env": os.environ.get("OMP_NUM_THREADS"),
            "model": facts,
            "num_requests": len(reqs),
            "mem_bandwidth_gbs": bandwidth,
            "mem_bandwidth_source": "given" if args.mem_bandwidth_gbs else "measured",
            "peak_tflops": peak,
            "peak_tflops_source": "given" if args.peak_tflops else "measured",
            "runs": runs,
            "ratios": ratios,
            "hf_baseline": hf or None,
            "ratios_vs_hf": ratios_vs_hf,
        }
        Path(args.json).write_text(json.dumps(out, indent=2))
    return 0 if all(m["failed"] == 0 for m in runs.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
