"""Tune the fused MoE kernel (runtime/kernels/triton/fused_moe.py) on one GPU and write the best tile
config per shape and token-count bucket to a JSON file in the format of fused_moe_configs.json.

    python benchmarks/tune_fused_moe.py                                   # Qwen3-30B-A3B, bf16 and fp8
    python benchmarks/tune_fused_moe.py --tp 2 --tokens 1 64 8192 --out /tmp/moe.json
    python benchmarks/tune_fused_moe.py --shape 8,4096,14336,2 --weights w16   # Mixtral-8x7B, bf16

A shape is (experts, hidden, intermediate, top_k) (default Qwen3-30B-A3B's 128, 2048, 768, 8); --tp
divides the intermediate as tensor parallelism does (the key holds one rank's I). For every shape,
weight kind (w16: bf16; fp8: e4m3 with 128 x 128 block scales) and token count (default the table's
buckets, 1 ... 8192), each candidate (BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, num_warps, num_stages) in a
grid that fits the shared memory runs the whole `fused_moe` call (sort, both GEMMs, the fp8
activation quantisation, the top-k sum) once, its output checked against the reference (a NaN
fails too), then is timed: warm-up calls, then `--reps` calls each timed by CUDA events after an
L2 flush (kernel_timing.time_ms), the median kept. Routing is a random softmax top-k over random
logits: experts get tokens as evenly as random routing gives them, which is what the serving
decode of a trained model sees only roughly, so the table is a starting point.

The output file is updated, not replaced: shapes and buckets not tuned in this run keep their
entries, and it is rewritten after each token count, so a cut-off run keeps what it tuned. Its
"_comment" records the card, date and versions.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import sys
from pathlib import Path

import torch
from kernel_timing import load_kernel_modules, rel_err, time_ms

BLOCK_SIZE = (128, 128)
SMEM_LIMIT = 220 * 1024  # bytes of shared memory a config's pipeline may take (H100: 227 KB per block)
QWEN3_30B = (128, 2048, 768, 8)


def parse_shape(s: str) -> tuple[int, int, int, int]:
    e, h, i, k = (int(x) for x in s.split(","))
    return e, h, i, k


def candidates(fm, t: int, e: int, top_k: int, fp8: bool) -> list:
    """The grid for T tokens: row tiles no taller than what an expert gets (plus one size), every
    BLOCK_N / BLOCK_K pair whose pipeline fits (fp8: BLOCK_K dividing block_k)."""
    rows = t * top_k / e
    block_ms = [m for m in (16, 32, 64, 128) if m <= max(16, 2 * rows)]
    block_ks = (128,) if fp8 else (64, 128)
    out = []
    # each distinct (tiles, warps, stages) compiles both kernels once and is reused across T, so the
    # grid is kept to what the defaults and SGLang's / vLLM's shipped tables mostly choose from
    block_ns = (32, 64, 128) if rows <= 16 else (64, 128)  # thin decode tiles: more programs
    for bm, bn, bk, warps, stages in itertools.product(block_ms, block_ns, block_ks, (4, 8), (3, 4)):
        elem = 1 if fp8 else 2
        smem = stages * (bm * bk + 2 * bk * bn) * elem  # A tile and the gate and up B tiles
        if smem > SMEM_LIMIT:
            continue
        for group_m in (1,) if bm == 16 else (8,):
            out.append(fm.FusedMoeConfig(bm, bn, bk, group_m, warps, stages))
    return out


def tune(fm, ref, quant, shape, t: int, fp8: bool, flush: torch.Tensor, args) -> tuple[dict, float]:
    e, h, inter, top_k = shape
    gen = torch.Generator(device="cuda").manual_seed(t)
    x = torch.randn(t, h, generator=gen, device="cuda", dtype=torch.bfloat16)
    w13 = torch.randn(e, 2 * inter, h, generator=gen, device="cuda", dtype=torch.bfloat16) * 0.02
    w2 = torch.randn(e, h, inter, generator=gen, device="cuda", dtype=torch.bfloat16) * 0.02
    weights, ids = ref.moe_topk(torch.randn(t, e, generator=gen, device="cuda"), top_k, True)
    s13 = s2 = None
    if fp8:
        pairs13 = [ref.block_quant_fp8(w13[i], BLOCK_SIZE) for i in range(e)]
        pairs2 = [ref.block_quant_fp8(w2[i], BLOCK_SIZE) for i in range(e)]
        w13, s13 = torch.stack([q for q, _ in pairs13]), torch.stack([s for _, s in pairs13])
        w2, s2 = torch.stack([q for q, _ in pairs2]), torch.stack([s for _, s in pairs2])
    expected = ref.fused_moe(x, w13, w2, weights, ids, s13, s2, BLOCK_SIZE if fp8 else None)
    best, best_ms = None, float("inf")
    from triton.runtime.errors import OutOfResources

    for cfg in candidates(fm, t, e, top_k, fp8):

        def run(cfg=cfg):
            return fm.fused_moe(x, w13, w2, weights, ids, s13, s2, BLOCK_SIZE if fp8 else None, config=cfg)

        try:
            out = run()
            torch.cuda.synchronize()
        except OutOfResources:
            continue
        err = rel_err(out, expected)
        if not err < (1.5e-2 if fp8 else 1e-2):  # NaN fails too
            raise SystemExit(f"CORRECTNESS FAILURE {cfg} at T={t}: rel err {err:.3e}")
        ms = time_ms(run, flush, args.warmup, args.reps, budget_ms=100.0)
        if ms < best_ms:
            best, best_ms = cfg, ms
    default = fm.default_config(t, e, top_k, fp8, BLOCK_SIZE)
    default_ms = time_ms(
        lambda: fm.fused_moe(x, w13, w2, weights, ids, s13, s2, BLOCK_SIZE if fp8 else None, config=default),
        flush,
        args.warmup,
        args.reps,
        budget_ms=100.0,
    )
    print(
        f"  T={t:5d} {'fp8' if fp8 else 'w16'}: best {best_ms * 1e3:8.1f} us {best.to_dict()}  "
        f"(default {default_ms * 1e3:8.1f} us)",
        flush=True,
    )
    return best.to_dict(), best_ms


def main(argv: list[str] | None = None) -> int:
    import triton

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shape", type=parse_shape, action="append", help="E,H,I,top_k (repeatable)")
    p.add_argument("--tp", type=int, default=1, help="tensor-parallel size: I / tp per rank")
    p.add_argument("--weights", choices=["w16", "fp8", "both"], default="both")
    p.add_argument("--tokens", type=int, nargs="*", default=None)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("tuning needs a CUDA device")
    ref, quant, gemm, fm = load_kernel_modules(
        "reference", "triton.fp8_quant", "triton.fp8_gemm", "triton.fused_moe"
    )
    out_path = args.out or fm.CONFIG_FILE
    table = dict(fm.load_configs(out_path)) if Path(out_path).exists() else {}
    card = torch.cuda.get_device_name()
    date = datetime.date.today().isoformat()
    flush = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")
    kinds = {"w16": [False], "fp8": [True], "both": [False, True]}[args.weights]
    tokens = sorted(args.tokens or fm.TOKEN_BUCKETS)
    for e, h, inter, top_k in args.shape or [QWEN3_30B]:
        if inter % args.tp:
            sys.exit(f"intermediate {inter} does not split over tp {args.tp}")
        shape = (e, h, inter // args.tp, top_k)
        for fp8 in kinds:
            key = fm.config_key(e, h, inter // args.tp, top_k, fp8)
            print(f"{key} on {card}", flush=True)
            for t in tokens:
                best, _ = tune(fm, ref, quant, shape, t, fp8, flush, args)
                table.setdefault(key, {})[str(t)] = best
                table["_comment"] = (
                    f"Tuned by benchmarks/tune_fused_moe.py on {card}, {date}, torch {torch.__version__}, "
                    f"triton {triton.__version__} (entries of other shapes or buckets may be older). Keys: "
                    "\"E=..,H=..,I=..,topk=..,w16|fp8\" (I: one rank's share of the expert's intermediate "
                    "size), then the token-count bucket (T uses the smallest bucket >= T, else the largest)."
                )
                table["_block_size"] = list(BLOCK_SIZE)
                head = {k: table[k] for k in ("_comment", "_block_size")}
                rest = {k: v for k, v in table.items() if k not in head}
                Path(out_path).write_text(gemm.dump_configs({**head, **rest}))
    print("wrote", out_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
