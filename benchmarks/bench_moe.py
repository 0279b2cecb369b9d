"""Mixture-of-experts speed: radixlm (bf16, fp8) beside transformers eager on a Qwen3-30B-A3B shape.

    python benchmarks/bench_moe.py --out benchmarks/results/moe-gpu-h100-DATE.json
    python benchmarks/bench_moe.py --device cpu --tiny --prefill-len 512 --out /tmp/moe-smoke.json # CPU

The model (benchmarks/moe_folder.py): Qwen3-30B-A3B's config (hidden 2048, 128 experts, top-8,
expert intermediate 768, 32 query / 4 KV heads of 128, vocabulary 151936) with random bf16 weights
drawn on the device and saved as an ordinary sharded HF folder; `--num-layers` keeps the first N of
its 48 layers so the folder fits the disk and the runs the time budget (every layer is alike, so
per-layer costs scale). All engines load that one folder, one after another, in the same run.

Engines: radixlm (Triton attention and fused MoE, CUDA graphs), radixlm-fp8 (`quantization="fp8"`:
attention linears and experts block-quantised to e4m3 at load), hf-eager (transformers'
`generate`, sdpa attention, its default experts implementation).

Cases (fresh random prompts each run, greedy, fixed output length; the median of --reps runs):
  decode, batch b in --batch-sizes: t1 = time to 1 token, tN = to N = --output-len tokens;
      step = (tN - t1) / (N - 1); decode tok/s = b / step.
  prefill: one prompt of --prefill-len tokens, 1 new token: time, tok/s and TFLOP/s.
MBU = bytes a decode step must read / step / bandwidth (a device copy measured in the same run).
The bytes are those actually needed, not the checkpoint's size: per layer the attention weights,
the router and the experts the batch's tokens are routed to, plus the LM head, the final norm and
the batch's KV cache (mean context input + N / 2). At batch 1 that is top_k experts a layer; at
batch b the expected union of experts hit, E * (1 - (1 - k / E)^b), for routing spread evenly over
the experts (what random weights give; trained routers are less even, and hit fewer).
Prefill FLOPs = 2 * active params a token * T (attention, router, top_k experts) + 2 * T^2 *
q_dim a layer (QK^T and PV, causal half) + the LM head on one row.
"""

from __future__ import annotations

import argparse
import gc
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_offline import HFEngine, Prompts, RadixEngine, decode_step, median_time
from moe_folder import QWEN3_30B_A3B, TINY, build_folder
from run_info import command_line, git_commit, git_dirty, load_before_run, machine_info, utc_now
from serving import measure_bandwidth_gbs, measure_matmul_tflops


def byte_model(cfg: dict, elem: int, fp8: bool) -> dict:
    """Parameter counts and bytes of the parts a step reads (see the module doc)."""
    h, layers = cfg["hidden_size"], cfg["num_hidden_layers"]
    q_dim, kv_dim = cfg["num_attention_heads"] * cfg["head_dim"], cfg["num_key_value_heads"] * cfg["head_dim"]
    e, k, inter = cfg["num_experts"], cfg["num_experts_per_tok"], cfg["moe_intermediate_size"]
    attn = h * (q_dim + 2 * kv_dim) + q_dim * h
    expert = 3 * h * inter
    router = e * h
    norms = 2 * h + 2 * cfg["head_dim"]
    lm_head = cfg["vocab_size"] * h
    # fp8: attention linears and experts at one byte plus an fp32 scale per 128 x 128 block
    quant = (1 + 4 / (128 * 128)) if fp8 else elem
    return {
        "layers": layers,
        "num_experts": e,
        "top_k": k,
        "attn_bytes": attn * quant,
        "expert_bytes": expert * quant,
        "other_layer_bytes": (router + norms) * elem,
        "lm_head_bytes": (lm_head + h) * elem,
        "active_params_per_token": layers * (attn + router + k * expert) + lm_head,
        "total_params": layers * (attn + router + e * expert + norms) + 2 * lm_head + h,
        "kv_bytes_per_token": 2 * layers * kv_dim * elem,
        "q_dim": q_dim,
    }


def experts_hit(num_experts: int, top_k: int, batch: int) -> float:
    """Expected distinct experts a layer for `batch` tokens routed evenly, top_k each."""
    return num_experts * (1 - (1 - top_k / num_experts) ** batch)


def step_bytes(nums: dict, batch: int, context: float) -> float:
    per_layer = (
        nums["attn_bytes"]
        + nums["other_layer_bytes"]
        + experts_hit(nums["num_experts"], nums["top_k"], batch) * nums["expert_bytes"]
    )
    return nums["layers"] * per_layer + nums["lm_head_bytes"] + batch * context * nums["kv_bytes_per_token"]


def prefill_flops(nums: dict, t: int, vocab_h: int) -> float:
    attn_scores = 2 * nums["layers"] * t * t * nums["q_dim"]
    return 2 * (nums["active_params_per_token"] - vocab_h) * t + attn_scores + 2 * vocab_h


def run_engine(name, engine, args, prompts, nums, device, bandwidth, peak, vocab_h) -> list[dict]:
    rows, n = [], args.output_len
    for b in args.batch_sizes:
        engine.generate(prompts.batch(b, args.input_len), 2)  # warm-up: compiles, graphs, allocator
        t1, t1_all = median_time(
            lambda: engine.generate(prompts.batch(b, args.input_len), 1), args.reps, device
        )
        tn, tn_all = median_time(
            lambda: engine.generate(prompts.batch(b, args.input_len), n), args.reps, device
        )
        step = decode_step(name, b, t1, tn, n)
        read = step_bytes(nums, b, args.input_len + n / 2)
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
                "experts_hit_per_layer": experts_hit(nums["num_experts"], nums["top_k"], b),
                "step_bytes": read,
                "mbu": read / step / (bandwidth * 1e9) if step else None,
                "t1_s": t1_all,
                "tn_s": tn_all,
            }
        )
        r = rows[-1]
        if step is None:
            continue
        print(
            f"  {name:12s} decode b={b:<3d} step {step * 1e3:7.2f} ms  {b / step:8.1f} tok/s  "
            f"reads {read / 1e9:.2f} GB  MBU {r['mbu']:.1%}",
            flush=True,
        )
    t = args.prefill_len
    engine.generate(prompts.batch(1, t), 1)
    t1, t1_all = median_time(lambda: engine.generate(prompts.batch(1, t), 1), args.reps, device)
    tflops = prefill_flops(nums, t, vocab_h) / t1 / 1e12
    rows.append(
        {
            "engine": name,
            "case": "prefill",
            "batch_size": 1,
            "input_len": t,
            "ttft_ms": t1 * 1e3,
            "prefill_tok_s": t / t1,
            "prefill_tflops": tflops,
            "mfu": tflops / peak,
            "t1_s": t1_all,
        }
    )
    print(
        f"  {name:12s} prefill {t} tokens {t1 * 1e3:8.1f} ms  {t / t1:9.0f} tok/s  {tflops:6.1f} TFLOP/s",
        flush=True,
    )
    return rows


def format_markdown(result: dict) -> str:
    def f(x, spec: str) -> str:
        return "-" if x is None else format(x, spec)

    lines = [
        f"# MoE speed: {result['model']['name']}",
        "",
        f"card {result['card']}, copy bandwidth {result['bandwidth_gbs']:.0f} GB/s, bf16 matmul "
        f"{result['peak_tflops']:.0f} TFLOP/s; commit {result['run_info']['commit']}"
        f"{' (dirty)' if result['run_info']['dirty'] else ''}, {result['run_info']['date']}",
        "",
        "| engine | case | batch | TTFT ms | step ms | decode tok/s | experts hit / layer | MBU "
        "| prefill tok/s | TFLOP/s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["results"]:
        lines.append(
            f"| {r['engine']} | {r['case']} | {r['batch_size']} | {f(r['ttft_ms'], '.1f')} | "
            f"{f(r.get('decode_ms_per_step'), '.2f')} | {f(r.get('decode_tok_s'), '.1f')} | "
            f"{f(r.get('experts_hit_per_layer'), '.1f')} | {f(r.get('mbu'), '.1%')} | "
            f"{f(r.get('prefill_tok_s'), '.0f')} | {f(r.get('prefill_tflops'), '.1f')} |"
        )
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--tiny", action="store_true", help="a tiny config (CPU smoke run)")
    p.add_argument("--num-layers", type=int, default=None, help="keep the first N layers (default all 48)")
    p.add_argument("--engines", default="radixlm,radixlm-fp8,hf-eager")
    p.add_argument("--batch-sizes", type=lambda s: [int(b) for b in s.split(",")], default=[1, 64])
    p.add_argument("--input-len", type=int, default=512)
    p.add_argument("--output-len", type=int, default=64)
    p.add_argument("--prefill-len", type=int, default=8192)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--model-dir", default="/tmp/radixlm-bench-moe")
    p.add_argument("--keep-model", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="results JSON; the markdown table goes beside it (.md)")
    args = p.parse_args(argv)
    if args.output_len < 2:
        p.error("--output-len must be >= 2 (decode time is the difference of two lengths)")
    return args


def load_hf_model(auto_cls: Any, folder: Path, dtype: torch.dtype, device: str) -> Any:
    """Straight onto the device where accelerate is installed (device_map needs it): all 48
    layers are 61 GB, which the host cannot hold twice beside a folder in /dev/shm. Without
    it, loaded on the host and then moved."""
    import importlib.util

    kwargs = {"dtype": dtype, "attn_implementation": "sdpa"}
    if device != "cpu" and importlib.util.find_spec("accelerate") is not None:
        return auto_cls.from_pretrained(str(folder), device_map=device, **kwargs).eval()
    return auto_cls.from_pretrained(str(folder), **kwargs).to(device).eval()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = args.device
    load = load_before_run()
    cfg = dict(TINY if args.tiny else QWEN3_30B_A3B)
    if args.num_layers:
        cfg["num_hidden_layers"] = args.num_layers
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    dtype_name = str(dtype).removeprefix("torch.")
    elem = torch.empty((), dtype=dtype).element_size()
    info = machine_info(device)
    bandwidth = measure_bandwidth_gbs(device)
    peak = measure_matmul_tflops(device, dtype_name)
    folder = build_folder(cfg, args.model_dir, device, dtype, args.seed)
    vocab_h = cfg["vocab_size"] * cfg["hidden_size"]
    prompts = Prompts(cfg["vocab_size"], args.seed)
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    context = max(args.input_len + args.output_len, args.prefill_len + 1) + 16
    base = {
        "device": device,
        "dtype": dtype_name,
        "context_length": context,
        "max_prefill_tokens": max(16384, args.prefill_len),
        "chunked_prefill_size": max(8192, args.prefill_len),
    }
    rows, engine_info = [], {}
    for name in engines:
        fp8 = name == "radixlm-fp8"
        nums = byte_model(cfg, elem, fp8)
        t = time.perf_counter()
        if name == "hf-eager":
            from transformers import AutoModelForCausalLM

            model = load_hf_model(AutoModelForCausalLM, folder, dtype, device)
            engine = HFEngine(model, "hf-eager", device)
            engine_info[name] = {
                "experts_implementation": getattr(model.config, "_experts_implementation", None)
            }
        else:
            engine = RadixEngine(folder, {**base, **({"quantization": "fp8"} if fp8 else {})})
            keys = ("quantization", "fp8_gemm", "cuda_graph_batch_sizes", "max_total_tokens", "dtype")
            engine_info[name] = {k: engine.info.get(k) for k in keys}
        print(f"{name}: up in {time.perf_counter() - t:.1f} s {engine_info[name]}", flush=True)
        try:
            rows += run_engine(name, engine, args, prompts, nums, device, bandwidth, peak, vocab_h)
        finally:
            engine.close()
            del engine
            gc.collect()
            if device.startswith("cuda"):
                torch.cuda.empty_cache()
    if not args.keep_model:
        shutil.rmtree(folder, ignore_errors=True)
    nums = byte_model(cfg, elem, False)
    result = {
        "run_info": {
            "commit": git_commit(),
            "dirty": git_dirty(),
            "date": utc_now(),
            "machine": info,
            "load": load,
        },
        "command": command_line(argv),
        "card": info.get("gpu_name") or info["device_name"],
        "model": {
            "name": f"qwen3-30b-a3b-shape-{cfg['num_hidden_layers']}-layers-random"
            if not args.tiny
            else "tiny-moe",
            "config": cfg,
            "dtype": dtype_name,
            "total_params": nums["total_params"],
            "active_params_per_token": nums["active_params_per_token"],
        },
        "bandwidth_gbs": bandwidth,
        "peak_tflops": peak,
        "engines": engine_info,
        "results": rows,
    }
    table = format_markdown(result)
    print(table)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1))
        out.with_suffix(".md").write_text(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
