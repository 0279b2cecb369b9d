"""Tune the block-wise W8A8 FP8 GEMM (runtime/kernels/triton/fp8_gemm.py) on one GPU and write the
best tile config per (N, K) and M bucket to a JSON file in the format of fp8_gemm_configs.json;
with --gemv, tune the W8A16 GEMV (fp8_gemv.py) instead and write fp8_gemv_configs.json, including
the M up to which `ops.fp8_linear` should take it.

    python benchmarks/tune_fp8_gemm.py                                   # Llama-3.1-8B shapes, all buckets
    python benchmarks/tune_fp8_gemm.py --shapes 6144,4096 --m 1 16 128 --out /tmp/cfg.json
    python benchmarks/tune_fp8_gemm.py --gemv                            # the GEMV, M = 1, 2, 4, 8, 16
    python benchmarks/tune_fp8_gemm.py --scaled-mm                       # where cuBLAS takes over

For every (N, K) (default the Llama-3.1-8B linear layers: qkv 6144,4096; o_proj 4096,4096;
gate_up 28672,4096; down 4096,14336) and every M bucket (1, 2, 4, ..., 4096), each candidate
(BLOCK_M, BLOCK_N, GROUP_M, num_warps, num_stages) is first checked against the reference on the
same operands, then timed: warm-up calls, then `--reps` calls each timed by CUDA events, the median
kept. Before every timed call a 256 MB buffer is read (outside the timed region), which evicts
L2 (kernel_timing.evict_l2), so each call reads its weights from device memory as a layer of a
forward pass would (one layer's fp8 weights, 16 to 117 MB, would otherwise sit in the 50 MB L2 at
small N*K). Operands are fresh random data (never zeros), quantised by the reference quantisers.

The output file is updated, not replaced: shapes not tuned in this run keep their entries. Its
"_comment" records the card, date and versions. The block size is (128, 128) (`_block_size`).

--gemv: the W8A16 GEMV's configs and its dispatch threshold (tune_gemv.py, which says how).

--scaled-mm: for every (N, K) and M bucket from 16 up, the Triton GEMM (its config from the table)
against cuBLAS' block-scaled `_scaled_mm` (runtime/kernels/cublas_fp8.py) on the same quantised
operands, each checked against the reference and timed as above (the activation quantisation is the
same kernel on either path and is left out). The shape's threshold is the smallest tuned M from
which cuBLAS is faster by SCALED_MM_MARGIN at every larger tuned M (`_scaled_mm_min_m_by_shape`,
null: never);
`_scaled_mm_min_m` (shapes without their own) is the largest of those. Written into
fp8_gemm_configs.json. Exits with a message, writing nothing, where this torch lacks the path.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from kernel_timing import (
    HOLD_CYCLES,
    LLAMA_8B_SHAPES,
    check_and_time,
    load_kernel_modules,
    parse_shape,
    rel_err,
    start_run,
    time_ms,
    write_table,
)

BLOCK_SIZE = (128, 128)
SMEM_LIMIT = 220 * 1024  # bytes of shared memory a config's pipeline may take (H100: 227 KB per block)


def candidates(m: int, block_n: int, quick: bool) -> list[dict]:
    """Tile configs worth timing at this M: BLOCK_M from 16 up to M's next power of two (64 too
    for small M: Hopper's warpgroup MMA works on 64 rows; at least 64 for M >= 512), BLOCK_N
    dividing block_n, shared memory within the limit, no 8 warps on small tiles, GROUP_M only
    where there are several row tiles."""
    m_pow2 = 1 << max(0, (m - 1).bit_length())
    block_ms = [
        bm for bm in (16, 32, 64, 128) if (bm <= max(16, m_pow2) or bm == 64) and bm * 8 >= min(m_pow2, 512)
    ]
    block_ns = [bn for bn in (32, 64, 128) if block_n % bn == 0]
    stages = (3, 4) if quick else (3, 4, 5)
    out = []
    for bm in block_ms:
        for bn in block_ns:
            for warps in (4, 8):
                if warps == 8 and bm * bn < 64 * 128:
                    continue
                for st in stages:
                    if st * (bm + bn) * BLOCK_SIZE[1] > SMEM_LIMIT:
                        continue
                    for group_m in (1,) if m <= bm else (8,) if quick else (1, 8):
                        out.append(
                            {
                                "BLOCK_M": bm,
                                "BLOCK_N": bn,
                                "GROUP_M": group_m,
                                "num_warps": warps,
                                "num_stages": st,
                            }
                        )
    return out


def tune_shape(ref, gemm, n: int, k: int, ms: list[int], flush: torch.Tensor, args) -> dict[str, dict]:
    w = torch.randn(n, k, device="cuda") * 0.02
    b_q, b_s = ref.block_quant_fp8(w, BLOCK_SIZE)
    del w
    best: dict[str, dict] = {}
    for m in ms:
        a_q, a_s = ref.per_token_group_quant_fp8(torch.randn(m, k, device="cuda"), BLOCK_SIZE[1])
        expected = ref.w8a8_block_fp8_matmul(a_q, a_s, b_q, b_s, BLOCK_SIZE, torch.float32)
        out = torch.empty(m, n, device="cuda", dtype=torch.bfloat16)
        results = []
        t0 = time.time()
        for cfg in candidates(m, BLOCK_SIZE[0], args.quick):

            def run(_copy: int, cfg=cfg):  # one operand set: copy 0
                gemm.w8a8_block_fp8_matmul(
                    a_q, a_s, b_q, b_s, BLOCK_SIZE, torch.bfloat16, config=cfg, out=out
                )

            ms_run = check_and_time(
                run, out, expected, f"N,K={n},{k} M={m} {cfg}", flush, args, budget_ms=200.0
            )
            if ms_run is not None:
                results.append((ms_run, cfg))
        results.sort(key=lambda r: r[0])
        ms_best, cfg_best = results[0]
        default = gemm.default_config(m, n, k, BLOCK_SIZE).to_dict()
        ms_default = next((t for t, c in results if c == default), float("nan"))
        tflops = 2 * m * n * k / ms_best / 1e9
        print(
            f"N,K={n},{k} M={m:5d}: {ms_best * 1e3:8.1f} us {tflops:7.1f} TFLOP/s "
            f"(default {ms_default * 1e3:8.1f} us; {len(results)} configs, {time.time() - t0:.0f} s) "
            f"{cfg_best}",
            flush=True,
        )
        best[str(m)] = cfg_best
    return best


SCALED_MM_MS = (16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)
# cuBLAS must be this much faster to take over: near the crossing the two are within a few percent
# in isolation, and in a decode step at M = 64 the cuBLAS path was the slower (H100, 2026-11-26:
# 7.09 vs 6.86 ms a step at batch 64 with it taking qkv and down from M = 16)
SCALED_MM_MARGIN = 1.1


def scaled_mm_min_m(measured: dict[str, dict], margin: float = SCALED_MM_MARGIN) -> int | None:
    """The smallest tuned M from which cuBLAS beat the Triton GEMM by `margin` at every larger tuned
    M (None: it did not at the largest)."""
    min_m = None
    for m in sorted(measured, key=int, reverse=True):
        if not measured[m]["cublas_us"] * margin < measured[m]["triton_us"]:
            break
        min_m = int(m)
    return min_m


def main_scaled_mm(args) -> None:
    import triton

    ref, gemm, cublas = load_kernel_modules("reference", "triton.fp8_gemm", "cublas_fp8")
    reason = cublas.unsupported_reason(torch.device("cuda"))
    if reason is not None:
        sys.exit(f"cuBLAS block-scaled GEMM unavailable here: {reason}")
    shapes = args.shapes or LLAMA_8B_SHAPES
    ms = sorted(args.m or SCALED_MM_MS)
    out_path = args.out or gemm.CONFIG_FILE
    card, flush, table, date = start_run("Triton vs cuBLAS block-scaled", shapes, ms, out_path)
    results = {}
    for n, k in shapes:
        w = torch.randn(n, k, device="cuda") * 0.02
        b_q, b_s = ref.block_quant_fp8(w, BLOCK_SIZE)
        del w
        measured = {}
        for m in ms:
            a_q, a_s = ref.per_token_group_quant_fp8(torch.randn(m, k, device="cuda"), BLOCK_SIZE[1])
            a_q_pad, a_s_mmajor = cublas.pad_operands(a_q, a_s)
            expected = ref.w8a8_block_fp8_matmul(a_q, a_s, b_q, b_s, BLOCK_SIZE, torch.float32)
            out = torch.empty(m, n, device="cuda", dtype=torch.bfloat16)

            def triton_run(_copy: int):  # one operand set: copy 0
                gemm.w8a8_block_fp8_matmul(a_q, a_s, b_q, b_s, BLOCK_SIZE, torch.bfloat16, out=out)

            t_triton = check_and_time(
                triton_run, out, expected, f"triton N,K={n},{k} M={m}", flush, args, 200.0
            )
            err = rel_err(cublas.block_scaled_mm(a_q_pad, a_s_mmajor, b_q, b_s)[:m], expected)
            if not err < 1e-2:
                raise SystemExit(f"CORRECTNESS FAILURE cublas N,K={n},{k} M={m}: rel err {err:.3e}")

            def cublas_only():
                cublas.block_scaled_mm(a_q_pad, a_s_mmajor, b_q, b_s)

            t_cublas = time_ms(
                cublas_only, flush, args.warmup, args.reps, budget_ms=200.0, hold_cycles=HOLD_CYCLES
            )
            flops = 2 * m * n * k
            measured[str(m)] = {
                "triton_us": t_triton * 1e3,
                "cublas_us": t_cublas * 1e3,
                "triton_tflops": flops / t_triton / 1e9,
                "cublas_tflops": flops / t_cublas / 1e9,
            }
            print(
                f"N,K={n},{k} M={m:5d}: "
                f"triton {t_triton * 1e3:8.1f} us {flops / t_triton / 1e9:7.1f} TFLOP/s | "
                f"cublas {t_cublas * 1e3:8.1f} us {flops / t_cublas / 1e9:7.1f} TFLOP/s | "
                f"{t_triton / t_cublas:4.2f}x",
                flush=True,
            )
        results[f"{n},{k}"] = measured
    by_shape = dict(table.get("_scaled_mm_min_m_by_shape", {}))
    by_shape.update({key: scaled_mm_min_m(measured) for key, measured in results.items()})
    known = [v for v in by_shape.values() if v is not None]
    table["_scaled_mm_min_m_by_shape"] = by_shape
    table["_scaled_mm_min_m"] = max(known) if len(known) == len(by_shape) else None
    table["_scaled_mm_comment"] = (
        f"Measured by benchmarks/tune_fp8_gemm.py --scaled-mm on {card}, {date}, "
        f"torch {torch.__version__}: "
        '"_scaled_mm_min_m_by_shape": {"N,K": the smallest tuned M from which cuBLAS block-scaled '
        f"_scaled_mm beat this Triton GEMM by {SCALED_MM_MARGIN}x at every larger tuned M (null: never)}}; "
        '"_scaled_mm_min_m": for '
        "other shapes (the largest of those; null if any is null)."
    )
    write_table(
        gemm,
        out_path,
        table,
        ("_comment", "_block_size", "_scaled_mm_comment", "_scaled_mm_min_m", "_scaled_mm_min_m_by_shape"),
    )
    if args.results:
        args.results.write_text(
            json.dumps(
                {
                    "card": card,
                    "date": date,
                    "torch": torch.__version__,
                    "triton": triton.__version__,
                    "shapes": results,
                },
                indent=1,
            )
        )
    print(f"cuBLAS from M: {by_shape}; _scaled_mm_min_m = {table['_scaled_mm_min_m']}")
    print("wrote", out_path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--shapes",
        nargs="+",
        type=parse_shape,
        metavar="N,K",
        help="weight shapes to tune (default: the Llama-3.1-8B linear layers)",
    )
    parser.add_argument("--m", nargs="+", type=int, help="M values (default: the config buckets)")
    parser.add_argument(
        "--out",
        type=Path,
        help="JSON to update (default: runtime/kernels/triton/"
        "fp8_gemm_configs.json, with --gemv fp8_gemv_configs.json)",
    )
    parser.add_argument(
        "--gemv",
        action="store_true",
        help="tune the W8A16 GEMV (fp8_gemv.py) and its dispatch threshold instead of the W8A8 GEMM",
    )
    parser.add_argument(
        "--scaled-mm",
        action="store_true",
        help="measure from which M cuBLAS' block-scaled GEMM beats the Triton GEMM; record it",
    )
    parser.add_argument(
        "--results", type=Path, help="--gemv / --scaled-mm: also write the timings here (JSON)"
    )
    parser.add_argument("--reps", type=int, default=30, help="timed calls per config (median kept)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed calls per config first")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="fewer candidates (stages 3-4, GROUP_M 8 only; --gemv: the first round only)",
    )
    parser.add_argument(
        "--chain-mb",
        type=int,
        default=0,
        help="--gemv: time each config inside a CUDA graph of weight copies together this many MB, "
        "back to back (PDL where the kernel takes it), not alone after an L2 flush",
    )
    parser.add_argument(
        "--wide",
        action="store_true",
        help="--gemv, M <= 2: also time steps over several scale blocks (BLOCK_K 256, 512) and the "
        "deferred K sum",
    )
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit(
            "tune_fp8_gemm.py needs a CUDA GPU (torch.cuda.is_available() is False); "
            "run it on the machine whose configs you want"
        )
    if args.gemv:
        from tune_gemv import main_gemv

        main_gemv(args)
        return
    if args.scaled_mm:
        main_scaled_mm(args)
        return
    import triton

    ref, gemm = load_kernel_modules("reference", "triton.fp8_gemm")
    shapes = args.shapes or LLAMA_8B_SHAPES
    ms = args.m or list(gemm.M_BUCKETS)
    out_path = args.out or gemm.CONFIG_FILE
    card, flush, table, date = start_run("", shapes, ms, out_path)
    tuned: dict[str, dict] = {}
    for n, k in shapes:  # the file is rewritten after each shape: a cut-off run keeps what it tuned
        tuned[f"{n},{k}"] = tune_shape(ref, gemm, n, k, ms, flush, args)
        table["_comment"] = (
            f"Tuned by benchmarks/tune_fp8_gemm.py on {card}, {date}, torch {torch.__version__}, "
            f"triton {triton.__version__} (shapes {'; '.join(tuned)}, M {ms}; entries of other "
            'shapes or M may be older). Keys: "N,K" of the weight, then the M bucket (a given M '
            "uses the smallest bucket >= M, else the largest)."
        )
        table["_block_size"] = list(BLOCK_SIZE)
        table.setdefault(f"{n},{k}", {}).update(tuned[f"{n},{k}"])
        write_table(
            gemm, out_path, table, ("_comment", "_block_size")
        )  # metadata first, shapes in their order
    print("wrote", out_path)


if __name__ == "__main__":
    main()
