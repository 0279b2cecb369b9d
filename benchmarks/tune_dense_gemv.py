"""Tune the dense GEMV (runtime/kernels/triton/dense_gemv.py) on one GPU against cuBLAS and write
dense_gemv_configs.json: per weight shape (N, K) and M bucket, the fastest tiles, and the largest M
up to which the GEMV beat cuBLAS at every tuned M (`_max_m_by_shape`, what `ops.dense_linear`
dispatches on; 0 where cuBLAS won at M = 1).

    python benchmarks/tune_dense_gemv.py                       # Llama-3.1-8B shapes, M = 1, 2, 4
    python benchmarks/tune_dense_gemv.py --shapes 4096,4096 --m 1 2 4 8 --out /tmp/dense.json

Operands are bf16 (the table speaks for 2-byte weights), fresh random data. Each candidate is
checked against fp64 on a NaN-poisoned output, then timed as tune_gemv.py times the fp8 GEMV:
the L2 evicted before every call (one layer's weights, 33 to 235 MB in bf16, must come from device
memory as in a forward pass), CUDA events, the median of `--reps`. Candidates, in two rounds to
bound compiles (SPLIT_K is a launch argument, the rest compile): BLOCK_K 64 and 128 elements with
the fp8 GEMV's first-round (BLOCK_N, warps) pairs and every SPLIT_K that leaves >= 2 K steps a
split; then, around the best, software-pipelined loads (num_stages 3) and BLOCK_K 256 with half
the columns. cuBLAS is `F.linear(x, w)` on the same operands, timed the same way. The GEMV must
beat it by MARGIN to be taken: in between, the two are the same within timing noise.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from kernel_timing import (
    LLAMA_8B_SHAPES,
    chain_copies,
    check_and_time,
    load_kernel_modules,
    parse_shape,
    start_run,
    time_copies,
    write_table,
)
from tune_gemv import GEMV_FIRST_ROUND, GEMV_WIDE_ROUND, gemv_fits, gemv_max_m, gemv_split_ks

MARGIN = 0.03  # the GEMV must be this much faster than cuBLAS at an M for the table to send it there
DEFAULT_MS = (1, 2, 4)  # batch-1 decode, and speculative / jump-forward verify rows of one request


def tune_shape(gemv, fp8_gemv, n: int, k: int, ms: list[int], flush: torch.Tensor, args) -> tuple[dict, dict]:
    """({M bucket: best tiles}, {M bucket: {"gemv_us", "cublas_us", ...}}) for one [N, K] weight."""
    w = (torch.randn(n, k, device="cuda") * 0.02).to(torch.bfloat16)
    # --chain-mb: copies of the weight, together that many MB, timed back to back in a CUDA graph
    copies = chain_copies(args.chain_mb, 2 * w.numel())
    ws = [w] + [w.clone() for _ in range(copies - 1)]
    best: dict[str, dict] = {}
    measured: dict[str, dict] = {}
    for m in ms:
        x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
        expected = x.double() @ w.double().t()
        out = torch.empty(m, n, device="cuda", dtype=torch.bfloat16)
        block_m = fp8_gemv.block_m_for(m)  # the kernel's rows a program (gemv_kernel.py's, as fp8's)
        timed: dict[tuple, float] = {}
        t0 = time.time()

        def measure(block_n, block_k, split_k, warps, stages, defer=0) -> None:
            cfg = {"BLOCK_N": block_n, "BLOCK_K": block_k, "SPLIT_K": split_k}
            cfg |= {"num_warps": warps, "num_stages": stages, "DEFER_SUM": defer}
            key = tuple(cfg.items())
            if key in timed or not gemv_fits(block_m, block_n, block_k, warps, defer):
                return

            def run_copy(i: int, cfg=cfg):  # copy 0: the operands checked against fp64
                gemv.dense_gemv(x, ws[i], config=cfg, out=out)

            result = check_and_time(
                run_copy, out, expected, f"N,K={n},{k} M={m} {cfg}", flush, args, 100.0, copies
            )
            if result is not None:
                timed[key] = result

        for block_k in (64, 128):
            for block_n, warps in GEMV_FIRST_ROUND:
                for split_k in gemv_split_ks(n, k, block_n, block_k):
                    measure(block_n, block_k, split_k, warps, 1)
        if not timed:
            raise SystemExit(f"no dense GEMV candidate ran for N,K={n},{k} M={m}")
        if not args.quick:
            first = dict(min(timed, key=timed.get))
            bn, bk, split, warps = first["BLOCK_N"], first["BLOCK_K"], first["SPLIT_K"], first["num_warps"]
            measure(bn, bk, split, warps, 3)
            if bn >= 32:
                measure(bn // 2, 2 * bk, split, warps, 1)
        if args.wide and block_m <= 2:  # tune_gemv.py's wide round, in elements (twice the bytes)
            for block_n, block_k, warps in GEMV_WIDE_ROUND:
                for defer in (0, 1):
                    for split_k in gemv_split_ks(n, k, block_n, block_k):
                        measure(block_n, block_k, split_k, warps, 1, defer)
        cfg_best = dict(min(timed, key=timed.get))
        ms_best = timed[tuple(cfg_best.items())]
        cublas_out = torch.empty(m, n, device="cuda", dtype=torch.bfloat16)
        ms_cublas = time_copies(
            lambda i: torch.matmul(x, ws[i].t(), out=cublas_out), copies, flush, args, 100.0
        )
        gbs = 2 * n * k / ms_best / 1e6
        print(
            f"dense GEMV N,K={n},{k} M={m:2d}: {ms_best * 1e3:7.1f} us ({gbs:5.0f} GB/s) vs cuBLAS "
            f"{ms_cublas * 1e3:7.1f} us ({2 * n * k / ms_cublas / 1e6:5.0f} GB/s): "
            f"{ms_cublas / ms_best:4.2f}x "
            f"({len(timed)} configs, {time.time() - t0:.0f} s) {cfg_best}",
            flush=True,
        )
        best[str(m)] = cfg_best
        measured[str(m)] = {
            "gemv_us": ms_best * 1e3,
            "cublas_us": ms_cublas * 1e3,
            "gemv_weight_gbs": gbs,
            "config": cfg_best,
            "configs_timed": len(timed),
        }
    return best, measured


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shapes", nargs="+", type=parse_shape, metavar="N,K", help="default: Llama-3.1-8B's")
    p.add_argument("--m", nargs="+", type=int, help=f"M values (default {DEFAULT_MS})")
    p.add_argument("--out", type=Path, help="table to update (default: dense_gemv_configs.json in the tree)")
    p.add_argument("--results", type=Path, help="also write the timings here (JSON)")
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--quick", action="store_true", help="the first round only")
    p.add_argument(
        "--chain-mb",
        type=int,
        default=0,
        help="time inside a CUDA graph of weight copies together this many MB (tune_gemv.py's)",
    )
    p.add_argument("--wide", action="store_true", help="M <= 2: tune_gemv.py's wide round too")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("tune_dense_gemv.py needs a CUDA GPU: run it on the machine whose table you want")
    import triton

    gemm, fp8_gemv, gemv = load_kernel_modules("triton.fp8_gemm", "triton.fp8_gemv", "triton.dense_gemv")
    shapes = args.shapes or LLAMA_8B_SHAPES
    ms = sorted(args.m or DEFAULT_MS)
    if ms[0] < 1 or ms[-1] > gemv.MAX_M:
        sys.exit(f"the dense GEMV takes 1 <= M <= {gemv.MAX_M}, got {ms}")
    out_path = args.out or gemv.CONFIG_FILE
    card, flush, table, date = start_run("dense GEMV tuning", shapes, ms, out_path)
    results = {"card": card, "date": date, "torch": torch.__version__, "triton": triton.__version__}
    results["shapes"] = {}
    for n, k in shapes:  # rewritten after each shape: a cut-off run keeps what it tuned
        key = f"{n},{k}"
        configs, measured = tune_shape(gemv, fp8_gemv, n, k, ms, flush, args)
        results["shapes"][key] = measured
        table["_comment"] = (
            f"Tuned by benchmarks/tune_dense_gemv.py on {card}, {date}, torch {torch.__version__}, "
            f"triton {triton.__version__}, bf16 weights (shapes {'; '.join(results['shapes'])}, M {ms}). "
            "Keys: '_max_m_by_shape': {'N,K': the largest tuned M up to which the GEMV beat cuBLAS "
            f"by {MARGIN:.0%} at every tuned M}}; 'N,K', then the M bucket (the smallest >= M)."
        )
        table["_max_m_by_shape"] = {
            **table.get("_max_m_by_shape", {}),
            key: gemv_max_m(measured, "cublas_us", MARGIN),
        }
        table[key] = {**table.get(key, {}), **configs}
        write_table(gemm, out_path, table, ("_comment", "_max_m_by_shape"))
        if args.results:
            args.results.write_text(json.dumps(results, indent=1))
    print("thresholds (largest M where the GEMV beats cuBLAS):", table["_max_m_by_shape"])
    print("wrote", out_path)


if __name__ == "__main__":
    main()
