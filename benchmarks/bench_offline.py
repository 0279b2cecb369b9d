"""Batch-shape speed of radixlm beside Hugging Face transformers: same weights, same card, same run.

    python benchmarks/bench_offline.py --shape llama-3.1-8b --out results.json      # GPU
    python benchmarks/bench_offline.py --shape tiny --device cpu --out smoke.json   # CPU smoke test

The model: `--shape llama-3.1-8b` builds HF `LlamaForCausalLM` with the Llama-3.1-8B config
and random N(0, 0.02) weights (norm gains 1) directly on the device, runs the HF cases,
saves it as an ordinary HF folder (safetensors plus this repo's offline tokenizer files) in
`--model-dir`, frees it, and loads that folder into radixlm: both engines run the same weights.

Cases. Every prompt is fresh random token ids, so no case is served from another's cache,
and every output has a fixed length (greedy; `ignore_eos`, or HF's `min_new_tokens`).
  decode (batch b in --batch-sizes, --input-len prompt tokens, N = --output-len new tokens):
      t1 = wall time to generate 1 token, tN = to generate N, each the median of --reps runs;
      decode ms/step = (tN - t1) / (N - 1), empty when tN <= t1 (noise larger than the N - 1
      steps); TTFT = t1; output tok/s = b * N / tN;
      decode tok/s = b / step; MBU = (weight bytes + b * mean context * KV bytes per token)
      / step / bandwidth, mean context = input + N / 2. (The method of the HF baseline in
      ../shared/reference/gpu-baselines.md, applied to both engines.)
  prefill (one prompt of --prefill-len tokens, 1 new token): TFLOP/s = FLOPs / t1 with
      FLOPs = 2 * decoder-linear params * T + 2 * lm_head params (one row of logits)
      + 2 * L * hidden * T^2 (QK^T and PV, causal half); MFU = TFLOP/s / measured matmul peak.
Engines: radixlm (Triton kernels and CUDA graphs on GPU), hf-eager (generate with the default
dynamic cache, sdpa attention), hf-static-compile (`cache_implementation="static"`: transformers
compiles the decode step; batch 1 only; GPU only), and with --ablations our own runtime with
a feature off: radixlm-no-overlap (no overlap scheduling), radixlm-no-cuda-graph,
radixlm-torch-kernels (reference kernels, no graphs); and FP8 variants: radixlm-fp8 (decoder
weights block-quantised to e4m3 at load), radixlm-fp8-triton (the same with the Triton W8A8 GEMM at
every M, no cuBLAS block-scaled GEMM), radixlm-fp8-no-gemv (no W8A16 GEMV: activation quantisation
and the W8A8 GEMM at every M), radixlm-fp8-kv (plus the fp8 KV cache), radixlm-fp8-lm-head (plus
an fp8 LM head), whose MBU counts the fp8 bytes (and prefill MFU the bf16 peak);
radixlm-no-dense-gemv (bf16 linears on cuBLAS at every M: no Triton GEMV at decode);
radixlm-no-pdl and radixlm-fp8-no-pdl (no programmatic dependent launch at batch 1), radixlm-pdl-16
(PDL up to 16 rows);
radixlm-tp2 (tensor parallel over two GPUs; MBU against one card's bandwidth, so up to 2x).
Each decode row also carries the scheduler's own per-step account: loop iteration, launch + wait,
and on CUDA the device's busy time per step and the share of decode time it sat idle between
steps waiting for the host.
Bandwidth (a large device copy, read + write) and the matmul peak are measured in the same run.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import shutil
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run_info import machine_info, result_header
from serving import measure_bandwidth_gbs, measure_matmul_tflops, sync_device

from radixlm.testing import save_model_folder

SHAPES: dict[str, dict] = {
    "llama-3.1-8b": dict(
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        vocab_size=128256,
        max_position_embeddings=131072,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        rope_parameters={
            "rope_type": "llama3",
            "rope_theta": 500000.0,
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
    ),
    "llama-1b": dict(
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        vocab_size=128256,
        max_position_embeddings=131072,
        rope_parameters={"rope_type": "default", "rope_theta": 500000.0},
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
    ),
    "tiny": dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=8192,
        max_position_embeddings=4096,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
    ),
}


# engine name -> the environment its scheduler process starts with (every other engine: none of it)
ENV_ABLATIONS = {
    "radixlm-fp8-no-gemv": {"RADIXLM_FP8_GEMV_MAX_M": "0"},
    "radixlm-no-dense-gemv": {"RADIXLM_DENSE_GEMV": "0"},
    "radixlm-no-pdl": {"RADIXLM_PDL": "0"},
    "radixlm-fp8-no-pdl": {"RADIXLM_PDL": "0"},
    "radixlm-pdl-16": {"RADIXLM_PDL": "16"},
    "radixlm-fused-silu": {"RADIXLM_FUSED_SILU_GEMV": "1"},
    "radixlm-fp8-fused-silu": {"RADIXLM_FUSED_SILU_GEMV": "1"},
    # another fp8 GEMV table, e.g. the committed one beside a table just tuned (BENCH_FP8_GEMV_TABLE)
    "radixlm-fp8-gemv-table": {"RADIXLM_FP8_GEMV_CONFIGS": os.environ.get("BENCH_FP8_GEMV_TABLE", "")},
    # the same for the dense (bf16) GEMV's table (BENCH_DENSE_GEMV_TABLE)
    "radixlm-gemv-table": {"RADIXLM_DENSE_GEMV_CONFIGS": os.environ.get("BENCH_DENSE_GEMV_TABLE", "")},
}


def median_time(fn: Callable[[], Any], reps: int, device: str) -> tuple[float, list[float]]:
    times = []
    for _ in range(reps):
        sync_device(device)
        t = time.perf_counter()
        fn()
        sync_device(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times), times


def decode_step(name: str, b: int, t1: float, tn: float, n: int) -> float | None:
    """The decode step: the slope between a 1-token and an n-token run. When the noise on either
    median is larger than the (n - 1) steps between them the slope means nothing (it can be
    negative), so there is no step time and the run says so rather than report one."""
    if tn > t1:
        return (tn - t1) / (n - 1)
    print(
        f"  {name:24s} decode b={b:<3d} the {n}-token run was not slower than the 1-token run "
        f"({tn * 1e3:.2f} vs {t1 * 1e3:.2f} ms): no step time; raise --output-len or --reps",
        flush=True,
    )
    return None


class Prompts:
    """Fresh random prompts: ids in [16, vocab) so no special token appears."""

    def __init__(self, vocab: int, seed: int) -> None:
        self.gen = torch.Generator().manual_seed(seed)
        self.vocab = vocab

    def batch(self, b: int, n: int) -> list[list[int]]:
        return torch.randint(16, self.vocab, (b, n), generator=self.gen).tolist()


# ---------------------------------------------------------------------- shapes and FLOPs
def model_numbers(cfg: dict, dtype: torch.dtype) -> dict:
    h, inter, layers = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]
    heads, kv_heads = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    head_dim = h // heads
    decoder_linear = layers * (h * (heads + 2 * kv_heads) * head_dim + heads * head_dim * h + 3 * h * inter)
    embed = cfg["vocab_size"] * h
    lm_head = 0 if cfg["tie_word_embeddings"] else embed
    norms = layers * 2 * h + h
    params = decoder_linear + embed + lm_head + norms
    elem = torch.empty((), dtype=dtype).element_size()
    return {
        "params": params,
        "decoder_linear_params": decoder_linear,
        "lm_head_params": embed,
        "weight_bytes": params * elem,
        "kv_bytes_per_token": 2 * layers * kv_heads * head_dim * elem,
        "num_layers": layers,
        "hidden_size": h,
    }


def fp8_numbers(nums: dict, weights: bool, kv: bool, lm_head: bool = False) -> dict:
    """Bytes per decode step with fp8 decoder linears (1 byte per weight plus one fp32 scale
    per 128 x 128 block; embeddings, LM head and norms stay 16-bit), an fp8 LM head and/or an
    fp8 KV cache: the byte count MBU is measured against for those runs."""
    out = dict(nums)
    elem = nums["weight_bytes"] / nums["params"]
    fp8_params = nums["decoder_linear_params"] * weights + nums["lm_head_params"] * lm_head
    if fp8_params:
        out["weight_bytes"] = nums["weight_bytes"] - fp8_params * elem + fp8_params * (1 + 4 / (128 * 128))
    if kv:
        out["kv_bytes_per_token"] = nums["kv_bytes_per_token"] / elem
    return out


def prefill_flops(nums: dict, t: int) -> float:
    return (
        2 * nums["decoder_linear_params"] * t
        + 2 * nums["lm_head_params"]
        + 2 * nums["num_layers"] * nums["hidden_size"] * t * t
    )


# ---------------------------------------------------------------------- engines
class HFEngine:
    def __init__(self, model: Any, mode: str, device: str) -> None:
        self.model, self.mode, self.device = model, mode, device

    def generate(self, prompts: list[list[int]], n: int) -> None:
        ids = torch.tensor(prompts, device=self.device)
        extra = {"cache_implementation": "static"} if self.mode == "hf-static-compile" else {}
        with torch.inference_mode():
            out = self.model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=n,
                min_new_tokens=n,
                do_sample=False,
                pad_token_id=0,
                **extra,
            )
        assert out.shape[1] == ids.shape[1] + n, "HF generated a different length"

    def close(self) -> None:
        pass


class RadixEngine:
    def __init__(self, folder: Path, options: dict) -> None:
        from radixlm import Engine

        self.engine = Engine(str(folder), **options)
        self.info = self.engine.get_server_info()

    def step_counters(self) -> tuple[int, float, float, float, float]:
        info = self.engine.get_server_info()
        return (
            info["decode_steps"],
            info["decode_iter_s"],
            info["decode_forward_s"],
            info.get("decode_gpu_busy_s") or 0.0,
            info.get("decode_gpu_idle_s") or 0.0,
        )

    def generate(self, prompts: list[list[int]], n: int) -> None:
        outs = self.engine.generate(
            input_ids=prompts, sampling_params={"max_new_tokens": n, "temperature": 0, "ignore_eos": True}
        )
        assert all(len(o["output_ids"]) == n for o in outs), "radixlm generated a different length"

    def close(self) -> None:
        self.engine.shutdown()


def run_cases(
    name: str,
    engine: Any,
    args: argparse.Namespace,
    prompts: Prompts,
    nums: dict,
    device: str,
    bandwidth: float,
    peak: float,
    batch_sizes: list[int],
    prefill: bool,
) -> list[dict]:
    rows = []
    n = args.output_len
    for b in batch_sizes:
        engine.generate(prompts.batch(b, args.input_len), 1)  # warm-up: kernel compiles, allocator, graphs
        engine.generate(prompts.batch(b, args.input_len), n)
        reps = args.reps if b == 1 else max(1, args.reps - 1)
        t1, t1_all = median_time(lambda: engine.generate(prompts.batch(b, args.input_len), 1), reps, device)
        before = engine.step_counters() if hasattr(engine, "step_counters") else None
        tn, tn_all = median_time(lambda: engine.generate(prompts.batch(b, args.input_len), n), reps, device)
        overhead = None
        if before is not None:  # the scheduler's own account of its decode steps in the tN runs
            after = engine.step_counters()
            steps, iter_s, fwd_s, busy_s, idle_s = (a - b_ for a, b_ in zip(after, before))
            overhead = {
                "steps": steps,
                "iter_ms": 1e3 * iter_s / max(steps, 1),
                "forward_ms": 1e3 * fwd_s / max(steps, 1),
                "scheduler_overhead": 1 - fwd_s / iter_s if iter_s else None,
                "gpu_busy_ms": 1e3 * busy_s / max(steps, 1) if busy_s else None,
                "gpu_idle_share": idle_s / (idle_s + busy_s) if busy_s else None,
            }
        step = decode_step(name, b, t1, tn, n)
        step_bytes = nums["weight_bytes"] + b * (args.input_len + n / 2) * nums["kv_bytes_per_token"]
        rows.append(
            {
                "engine": name,
                "case": "decode",
                "batch_size": b,
                "input_len": args.input_len,
                "output_len": n,
                "ttft_ms": t1 * 1e3,
                "decode_ms_per_step": step * 1e3 if step else None,
                "decode_tok_s": b / step if step else None,
                "output_tok_s": b * n / tn,
                "mbu": step_bytes / step / (bandwidth * 1e9) if step else None,
                "prefill_tflops": None,
                "mfu": None,
                "cache_hit_rate": None,
                "wall_s": tn,
                "t1_s": t1_all,
                "tn_s": tn_all,
                "scheduler": overhead,
            }
        )
        if step is None:
            continue
        print(
            f"  {name:24s} decode b={b:<3d} ttft {t1 * 1e3:8.1f} ms  step {step * 1e3:7.2f} ms  "
            f"{b / step:9.1f} tok/s  MBU {rows[-1]['mbu']:.1%}"
            + (
                f"  (scheduler: iter {overhead['iter_ms']:.2f} ms, "
                f"launch+wait {overhead['forward_ms']:.2f} ms"
                + (
                    f", device idle {overhead['gpu_idle_share']:.1%}"
                    if overhead["gpu_idle_share"] is not None
                    else ""
                )
                + ")"
                if overhead
                else ""
            ),
            flush=True,
        )
    if prefill:
        t = args.prefill_len
        engine.generate(prompts.batch(1, t), 1)
        t1, t1_all = median_time(lambda: engine.generate(prompts.batch(1, t), 1), args.reps + 2, device)
        tflops = prefill_flops(nums, t) / t1 / 1e12
        rows.append(
            {
                "engine": name,
                "case": "prefill",
                "batch_size": 1,
                "input_len": t,
                "output_len": 1,
                "ttft_ms": t1 * 1e3,
                "decode_ms_per_step": None,
                "decode_tok_s": None,
                "output_tok_s": None,
                "mbu": None,
                "prefill_tflops": tflops,
                "mfu": tflops / peak,
                "cache_hit_rate": None,
                "wall_s": t1,
                "prefill_tok_s": t / t1,
                "t1_s": t1_all,
            }
        )
        print(
            f"  {name:24s} prefill {t} tokens {t1 * 1e3:8.1f} ms  {tflops:7.1f} TFLOP/s  "
            f"MFU {tflops / peak:.1%}",
            flush=True,
        )
    return rows


# ---------------------------------------------------------------------- model folder
def build_hf_model(shape: str, dtype: torch.dtype, device: str, seed: int) -> Any:
    from radixlm.testing import random_llama

    return random_llama(SHAPES[shape], dtype, device, seed)


# ---------------------------------------------------------------------- main
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shape", choices=sorted(SHAPES), default="llama-3.1-8b")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default=None, help="default bfloat16 on GPU, float32 on CPU")
    p.add_argument("--batch-sizes", default="1,32,64")
    p.add_argument("--input-len", type=int, default=512)
    p.add_argument("--output-len", type=int, default=128)
    p.add_argument("--prefill-len", type=int, default=8192)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--engines", default="radixlm,hf-eager,hf-static-compile")
    p.add_argument(
        "--ablations",
        default="",
        help="comma list: no-overlap, no-cuda-graph, torch-kernels, fp8, fp8-triton, fp8-no-gemv, fp8-kv, "
        "fp8-lm-head, no-dense-gemv, no-pdl, pdl-16, fp8-no-pdl, fused-silu, fp8-fused-silu, fp8-gemv-table "
        "(the fp8 GEMV table at $BENCH_FP8_GEMV_TABLE), gemv-table (the dense one at "
        "$BENCH_DENSE_GEMV_TABLE), tp2, spec-ngram, spec-lookahead",
    )
    p.add_argument("--model-dir", default="/tmp/radixlm-bench-model")
    p.add_argument("--keep-model", action="store_true", help="leave the saved folder (e.g. for serving.py)")
    p.add_argument("--mem-bandwidth-gbs", type=float, default=None)
    p.add_argument("--peak-tflops", type=float, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="JSON results path")
    args = p.parse_args(argv)
    if args.output_len < 2:
        p.error("--output-len must be >= 2 (decode time is the difference of two lengths)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = args.device
    dtype_name = args.dtype or ("bfloat16" if device.startswith("cuda") else "float32")
    dtype = getattr(torch, dtype_name)
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    ablations = [a.strip() for a in args.ablations.split(",") if a.strip()]
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    nums = model_numbers(SHAPES[args.shape], dtype)
    info = machine_info(device)
    bandwidth = args.mem_bandwidth_gbs or measure_bandwidth_gbs(device)
    peak = args.peak_tflops or measure_matmul_tflops(device, dtype_name)
    print(
        f"{info['device_name']}: copy bandwidth {bandwidth:.0f} GB/s, "
        f"{dtype_name} matmul {peak:.0f} TFLOP/s; "
        f"model {args.shape} ({nums['params'] / 1e9:.2f} B params, {nums['weight_bytes'] / 1e9:.2f} GB)",
        flush=True,
    )
    prompts = Prompts(SHAPES[args.shape]["vocab_size"], args.seed)
    rows: list[dict] = []
    folder = Path(args.model_dir)

    t = time.perf_counter()
    hf = build_hf_model(args.shape, dtype, device, args.seed)
    print(f"built random HF model in {time.perf_counter() - t:.1f} s", flush=True)
    if "hf-eager" in engines:
        rows += run_cases(
            "hf-eager",
            HFEngine(hf, "hf-eager", device),
            args,
            prompts,
            nums,
            device,
            bandwidth,
            peak,
            batch_sizes,
            prefill=True,
        )
    if "hf-static-compile" in engines and device.startswith("cuda"):
        t = time.perf_counter()
        rows += run_cases(
            "hf-static-compile",
            HFEngine(hf, "hf-static-compile", device),
            args,
            prompts,
            nums,
            device,
            bandwidth,
            peak,
            [1],
            prefill=False,
        )
        print(f"  (hf-static-compile including its compile: {time.perf_counter() - t:.0f} s)", flush=True)
    t = time.perf_counter()
    save_model_folder(hf, folder)
    print(f"saved the weights to {folder} in {time.perf_counter() - t:.1f} s", flush=True)
    del hf
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()

    context = max(args.input_len + args.output_len, args.prefill_len + 1) + 16
    base = {
        "device": device,
        "dtype": dtype_name,
        "context_length": context,
        "max_prefill_tokens": max(16384, args.prefill_len),
        "chunked_prefill_size": max(8192, args.prefill_len),
    }
    configs = []
    if "radixlm" in engines:
        configs.append(("radixlm", {}, batch_sizes, True))
    if "fp8" in ablations:
        configs.append(("radixlm-fp8", {"quantization": "fp8"}, batch_sizes, True))
    if "fp8-triton" in ablations:  # fp8 with the Triton GEMM at every M (no cuBLAS block-scaled GEMM)
        configs.append(
            ("radixlm-fp8-triton", {"quantization": "fp8", "fp8_gemm_backend": "triton"}, batch_sizes, True)
        )
    if "fp8-no-gemv" in ablations:  # fp8 without the W8A16 GEMV (quant + W8A8 at every M), decode only
        configs.append(("radixlm-fp8-no-gemv", {"quantization": "fp8"}, batch_sizes, False))
    if "fp8-kv" in ablations:
        configs.append(
            ("radixlm-fp8-kv", {"quantization": "fp8", "kv_cache_dtype": "fp8_e4m3"}, batch_sizes, False)
        )
    if "tp2" in ablations:  # the same model over two GPUs (NCCL), against one
        configs.append(("radixlm-tp2", {"tp_size": 2}, batch_sizes, True))
    for alg in ("ngram", "lookahead"):  # speculative decoding: its cost where drafts rarely hold
        if f"spec-{alg}" in ablations:
            configs.append((f"radixlm-spec-{alg}", {"speculative_algorithm": alg}, batch_sizes, False))
    if "no-dense-gemv" in ablations:  # bf16 linears on cuBLAS at every M (no Triton GEMV at decode)
        configs.append(("radixlm-no-dense-gemv", {}, batch_sizes, False))
    if "fp8-lm-head" in ablations:  # fp8 weights and an fp8 LM head
        fp8_head = {"quantization": "fp8", "lm_head_quantization": "fp8"}
        configs.append(("radixlm-fp8-lm-head", fp8_head, batch_sizes, False))
    if "no-pdl" in ablations:  # no programmatic dependent launch (on at batch 1 by default)
        configs.append(("radixlm-no-pdl", {}, batch_sizes, False))
    if "pdl-16" in ablations:  # PDL up to 16 rows, not only at batch 1
        configs.append(("radixlm-pdl-16", {}, batch_sizes, False))
    if "fp8-no-pdl" in ablations:
        configs.append(("radixlm-fp8-no-pdl", {"quantization": "fp8"}, batch_sizes, False))
    if "fused-silu" in ablations:  # the down projection's GEMV computing silu_and_mul itself
        configs.append(("radixlm-fused-silu", {}, batch_sizes, False))
    if "fp8-fused-silu" in ablations:
        configs.append(("radixlm-fp8-fused-silu", {"quantization": "fp8"}, batch_sizes, False))
    for name, table_env, extra in (
        ("gemv-table", "BENCH_DENSE_GEMV_TABLE", {}),
        ("fp8-gemv-table", "BENCH_FP8_GEMV_TABLE", {"quantization": "fp8"}),
    ):
        if name in ablations:
            if not os.environ.get(table_env):
                sys.exit(f"the {name} ablation reads its table's path from ${table_env}")
            configs.append((f"radixlm-{name}", extra, batch_sizes, False))
    if "no-overlap" in ablations:
        configs.append(("radixlm-no-overlap", {"overlap_schedule": "off"}, batch_sizes, False))
    if "no-cuda-graph" in ablations:
        configs.append(("radixlm-no-cuda-graph", {"disable_cuda_graph": True}, batch_sizes, False))
    if "torch-kernels" in ablations:
        configs.append(("radixlm-torch-kernels", {"attention_backend": "torch"}, batch_sizes, True))
    engine_info = {}
    for name, extra, sizes, prefill in configs:
        t = time.perf_counter()
        # kernel choices reach the scheduler process through its environment (read when it starts)
        for var in {var for env in ENV_ABLATIONS.values() for var in env}:
            os.environ.pop(var, None)
        os.environ.update(ENV_ABLATIONS.get(name, {}))
        engine = RadixEngine(folder, {**base, **extra})
        engine_info[name] = {
            k: engine.info.get(k)
            for k in (
                "attention_backend",
                "cuda_graph_batch_sizes",
                "overlap_schedule",
                "quantization",
                "fp8_gemm",
                "kv_cache_dtype",
                "max_total_tokens",
                "dtype",
                "device",
                "speculative_algorithm",
            )
        }
        print(f"{name}: engine up in {time.perf_counter() - t:.1f} s ({engine_info[name]})", flush=True)
        try:
            engine_nums = fp8_numbers(
                nums, "quantization" in extra, "kv_cache_dtype" in extra, "lm_head_quantization" in extra
            )
            rows += run_cases(
                name, engine, args, prompts, engine_nums, device, bandwidth, peak, sizes, prefill
            )
            if "speculative_algorithm" in extra:  # how often drafts held over every case
                done = engine.engine.get_server_info()
                keys = ("spec_proposed_tokens", "spec_accepted_tokens", "generated_tokens")
                engine_info[name].update({k: done.get(k) for k in keys})
        finally:
            engine.close()
    if not args.keep_model:
        shutil.rmtree(folder, ignore_errors=True)

    result = {
        **result_header(argv, info),
        "model": {
            "name": f"{args.shape}-random",
            "params": nums["params"],
            "dtype": dtype_name,
            "weight_bytes": nums["weight_bytes"],
            "kv_bytes_per_token": nums["kv_bytes_per_token"],
            "config": SHAPES[args.shape],
        },
        "bandwidth_gbs": bandwidth,
        "peak_tflops": peak,
        "engines": engine_info,
        "results": rows,
    }
    print(format_table(result))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1))
    return 0


def format_table(result: dict) -> str:
    rows = result["results"]
    hf = {(r["case"], r["batch_size"]): r for r in rows if r["engine"] == "hf-eager"}
    lines = [
        f"card: {result['card']}  model: {result['model']['name']} ({result['model']['dtype']})",
        "| engine | case | batch | TTFT ms | step ms | decode tok/s | output tok/s | MBU | TFLOP/s | MFU "
        "| vs hf-eager |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def f(x: Any, spec: str) -> str:
        return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)

    for r in rows:
        base = hf.get((r["case"], r["batch_size"]))
        ratio = None
        if base is not None and r["engine"] != "hf-eager":
            if r["case"] == "prefill":
                ratio = base["ttft_ms"] / r["ttft_ms"]
            elif base["decode_ms_per_step"] and r["decode_ms_per_step"]:
                ratio = base["decode_ms_per_step"] / r["decode_ms_per_step"]
        lines.append(
            f"| {r['engine']} | {r['case']} | {r['batch_size']} | {f(r['ttft_ms'], '.1f')} | "
            f"{f(r['decode_ms_per_step'], '.2f')} | {f(r['decode_tok_s'], '.1f')} | "
            f"{f(r['output_tok_s'], '.1f')} | {f(r['mbu'], '.1%')} | {f(r['prefill_tflops'], '.1f')} | "
            f"{f(r['mfu'], '.1%')} | {f(ratio, '.2f')}{'x' if ratio else ''} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
