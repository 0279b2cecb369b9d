"""Tune the decode GEMV (runtime/kernels/triton/gemv_kernel.py) with fp8 block-scaled weights: the
tiles per (N, K) and M bucket, and the M up to which `ops.fp8_linear` takes it over activation
quantisation + the W8A8 GEMM; written into fp8_gemv_configs.json. Run as `tune_fp8_gemm.py --gemv`.
The dense (bf16) GEMV's tuner, tune_dense_gemv.py, shares its candidate rounds.

For every (N, K) and M bucket of the GEMV (1, 2, 4, 8, 16), in rounds that bound the number of
kernel compiles (each (BLOCK_M, BLOCK_N, BLOCK_K, warps, stages, DEFER_SUM) compiles once; SPLIT_K
is a launch argument):
  1. BLOCK_K 128 without pipelining (num_stages 1) over a few (BLOCK_N, warps) pairs, each with
     every SPLIT_K that leaves >= 2 K steps a split, and the table's current config;
  2. around the best (unless --quick): BLOCK_K 64 with twice the columns, and pipelined loads
     (num_stages 3);
  3. with --wide, at M <= 2: steps over several scale blocks (BLOCK_K 256, 512) with 8 to 32
     columns, each with and without the deferred K sum.
Each candidate is first checked against the reference on a NaN-poisoned output (a wrong one stops
the run), then timed with its split-K reduction: alone after an L2 flush (kernel_timing.time_ms),
or with --chain-mb N inside a CUDA graph of weight copies N MB together, back to back as in a
decode step (kernel_timing.chain_time_ms). The best is compared with what the W8A8 path costs at
the same M, timed the same way (the activation quantisation plus the GEMM with its config from
fp8_gemm_configs.json). The shape's threshold is the largest tuned M up to which the GEMV wins at
every tuned M (`_gemv_max_m_by_shape`; an earlier, larger one stands when the GEMV won at every M
of this run); `_gemv_max_m` (shapes without their own) is the smallest of those.
"""

from __future__ import annotations

import json
import sys
import time

import torch
from kernel_timing import (
    LLAMA_8B_SHAPES,
    chain_copies,
    check_and_time,
    load_kernel_modules,
    start_run,
    time_copies,
    write_table,
)

BLOCK_SIZE = (128, 128)

# (BLOCK_N, num_warps) pairs of the GEMV's first round, at BLOCK_K 128: 8 to 64 weight bytes a
# thread a step (>= 8: wide loads; more: more loads in flight, but more registers)
GEMV_FIRST_ROUND = ((16, 2), (16, 4), (32, 4), (64, 4), (32, 8), (64, 8))
GEMV_MAX_PRODUCTS = 256  # BLOCK_M * weight bytes a thread: the fp32 products a thread holds a step
GEMV_MAX_PROGRAMS = 16384


def gemv_split_ks(n: int, k: int, block_n: int, block_k: int) -> list[int]:
    """SPLIT_K values worth timing: powers of two leaving >= 2 K steps a split, within
    GEMV_MAX_PROGRAMS programs."""
    tiles, k_steps = -(-n // block_n), -(-k // block_k)
    splits = [1]
    while k_steps // (splits[-1] * 2) >= 2 and tiles * splits[-1] * 2 <= GEMV_MAX_PROGRAMS:
        splits.append(splits[-1] * 2)
    return splits


def gemv_fits(block_m: int, block_n: int, block_k: int, warps: int, defer: int = 0) -> bool:
    """Whether a tile keeps its registers: >= 8 weight elements a thread (wide loads), and within
    GEMV_MAX_PRODUCTS the step's fp32 products, as many again for a deferred sum's accumulator."""
    per_thread = block_n * block_k // (32 * warps)
    return per_thread >= 8 and block_m * per_thread * (2 if defer else 1) <= GEMV_MAX_PRODUCTS


# (BLOCK_N, BLOCK_K, num_warps) of the wide round (--wide, M <= 2): steps over several scale blocks
# (longer contiguous reads of each weight row) and 8 to 32 columns a program, each with and without
# the deferred K sum
GEMV_WIDE_ROUND = tuple((bn, bk, w) for bk in (128, 256, 512) for bn in (8, 16, 32) for w in (4, 8))


def tune_gemv_shape(
    ref, quant, gemm, gemv, n: int, k: int, ms: list[int], flush: torch.Tensor, args
) -> tuple[dict, dict]:
    """({M bucket: best config}, {M bucket: {"gemv_us", "w8a8_us", "config"}}) for one weight shape."""
    w = torch.randn(n, k, device="cuda") * 0.02
    w_q, w_s = ref.block_quant_fp8(w, BLOCK_SIZE)
    del w
    # --chain-mb: copies of the weight, together that many MB, timed back to back in a CUDA graph
    copies = chain_copies(args.chain_mb, w_q.numel())
    w_copies = [(w_q, w_s)] + [(w_q.clone(), w_s.clone()) for _ in range(copies - 1)]
    best: dict[str, dict] = {}
    measured: dict[str, dict] = {}
    for m in ms:
        x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
        expected = ref.w8a16_block_fp8_matmul(x, w_q, w_s, BLOCK_SIZE)
        out = torch.empty(m, n, device="cuda", dtype=torch.bfloat16)
        block_m = gemv.block_m_for(m)
        timed: dict[tuple, float] = {}
        t0 = time.time()

        def measure(cfg: dict) -> None:
            key = tuple(sorted(cfg.items()))
            if key in timed:
                return

            def run_copy(i: int, cfg=cfg):  # copy 0: the operands checked against the reference
                gemv.w8a16_block_fp8_matmul(x, *w_copies[i], BLOCK_SIZE, config=cfg, out=out)

            ms_run = check_and_time(
                run_copy, out, expected, f"(GEMV) N,K={n},{k} M={m} {cfg}", flush, args, 100.0, copies
            )
            if ms_run is not None:
                timed[key] = ms_run

        def config(block_n, block_k, split_k, warps, stages, defer=0) -> dict:
            return {
                "BLOCK_N": block_n,
                "BLOCK_K": block_k,
                "SPLIT_K": split_k,
                "num_warps": warps,
                "num_stages": stages,
                "DEFER_SUM": defer,
            }

        # round 1: BLOCK_K 128, no pipelining, (BLOCK_N, warps) x SPLIT_K
        for block_n, warps in GEMV_FIRST_ROUND:
            if gemv_fits(block_m, block_n, 128, warps):
                for split_k in gemv_split_ks(n, k, block_n, 128):
                    measure(config(block_n, 128, split_k, warps, 1))
        committed = gemv.choose_config(m, n, k, BLOCK_SIZE).to_dict()  # the table as the run started
        measure(committed)
        if not timed:
            raise SystemExit(f"no GEMV candidate ran for N,K={n},{k} M={m}")
        # round 2, around the best: half the K step with twice the columns (the same bytes a step,
        # half the K reduction), then loads pipelined through shared memory
        if not args.quick:
            first = dict(min(timed, key=timed.get))
            bn, split, warps = first["BLOCK_N"], first["SPLIT_K"], first["num_warps"]
            if 2 * bn <= 128 and gemv_fits(block_m, 2 * bn, 64, warps):
                measure(config(2 * bn, 64, split, warps, 1))
            measure(config(bn, 128, split, warps, 3))
        if args.wide and block_m <= 2:
            for block_n, block_k, warps in GEMV_WIDE_ROUND:
                for defer in (0, 1):
                    if gemv_fits(block_m, block_n, block_k, warps, defer):
                        for split_k in gemv_split_ks(n, k, block_n, block_k):
                            measure(config(block_n, block_k, split_k, warps, 1, defer))
        key_best = min(timed, key=timed.get)
        cfg_best, ms_best = dict(key_best), timed[key_best]
        ordered = {
            f: cfg_best[f] for f in ("BLOCK_N", "BLOCK_K", "SPLIT_K", "num_warps", "num_stages", "DEFER_SUM")
        }

        # what the W8A8 path costs here: the activation quantisation plus the GEMM
        w8a8_out = torch.empty(m, n, device="cuda", dtype=torch.bfloat16)

        def w8a8(i: int):
            a_q, a_s = quant.per_token_group_quant_fp8(x, BLOCK_SIZE[1])
            gemm.w8a8_block_fp8_matmul(a_q, a_s, *w_copies[i], BLOCK_SIZE, torch.bfloat16, out=w8a8_out)

        ms_w8a8 = time_copies(w8a8, copies, flush, args, 100.0)
        default = gemv.default_config(m, n, k, BLOCK_SIZE).to_dict()
        ms_default = timed.get(tuple(sorted(default.items())), float("nan"))
        ms_committed = timed[tuple(sorted(committed.items()))]
        weight_gbs = (w_q.numel() + 4 * w_s.numel()) / ms_best / 1e6
        print(
            f"GEMV N,K={n},{k} M={m:2d}: {ms_best * 1e3:7.1f} us ({weight_gbs:5.0f} GB/s of weights; default "
            f"{ms_default * 1e3:7.1f} us) vs W8A8 quant+gemm {ms_w8a8 * 1e3:7.1f} us: "
            f"{ms_w8a8 / ms_best:4.2f}x; the table's config {ms_committed * 1e3:7.1f} us "
            f"({len(timed)} configs, {time.time() - t0:.0f} s) {ordered}",
            flush=True,
        )
        best[str(m)] = ordered
        measured[str(m)] = {
            "gemv_us": ms_best * 1e3,
            "w8a8_us": ms_w8a8 * 1e3,
            "default_us": ms_default * 1e3,
            "table_us": ms_committed * 1e3,
            "table_config": committed,
            "gemv_weight_gbs": weight_gbs,
            "config": ordered,
            "configs_timed": len(timed),
        }
    return best, measured


def gemv_max_m(measured: dict[str, dict], baseline: str = "w8a8_us", margin: float = 0.0) -> int:
    """The largest tuned M up to which the GEMV beats the other path (`baseline`: its timing's key;
    by `margin`, a fraction) at every tuned M (0: never)."""
    max_m = 0
    for m in sorted(measured, key=int):
        if not measured[m]["gemv_us"] < (1 - margin) * measured[m][baseline]:
            break
        max_m = int(m)
    return max_m


def main_gemv(args) -> None:
    import triton

    ref, quant, gemm, gemv = load_kernel_modules(
        "reference", "triton.fp8_quant", "triton.fp8_gemm", "triton.fp8_gemv"
    )
    shapes = args.shapes or LLAMA_8B_SHAPES
    ms = sorted(args.m or gemv.M_BUCKETS)
    if ms[-1] > gemv.MAX_M or ms[0] < 1:
        sys.exit(f"--gemv tunes 1 <= M <= {gemv.MAX_M}, got {ms}")
    out_path = args.out or gemv.CONFIG_FILE
    card, flush, table, date = start_run("GEMV tuning", shapes, ms, out_path)
    results = {
        "card": card,
        "date": date,
        "torch": torch.__version__,
        "triton": triton.__version__,
        "shapes": {},
    }
    for n, k in shapes:  # the file is rewritten after each shape: a cut-off run keeps what it tuned
        key = f"{n},{k}"
        configs, measured = tune_gemv_shape(ref, quant, gemm, gemv, n, k, ms, flush, args)
        results["shapes"][key] = measured
        by_shape = dict(table.get("_gemv_max_m_by_shape", {}))
        tuned_max = gemv_max_m(measured)
        if tuned_max == max(ms) and key in by_shape:  # the GEMV won at every M tuned here: what an
            tuned_max = max(tuned_max, by_shape[key])  # earlier run found beyond them still stands
        by_shape[key] = tuned_max
        table["_comment"] = (
            f"Tuned by benchmarks/tune_fp8_gemm.py --gemv on {card}, {date}, torch {torch.__version__}, "
            f"triton {triton.__version__} (shapes {'; '.join(results['shapes'])}, M {ms}, timed "
            + (f"in CUDA graphs of {args.chain_mb} MB of weight copies" if args.chain_mb else "alone")
            + (", wide round" if args.wide else "")
            + "; entries of other shapes or M may be older). "
            'Keys: "_gemv_max_m": largest M that ops.fp8_linear sends to the GEMV (for shapes without '
            "their own; the smallest of the tuned shapes' values); "
            '"_gemv_max_m_by_shape": {"N,K": the largest tuned M up to which the GEMV beat activation '
            'quant + W8A8 GEMM at every tuned M}; "N,K" of the '
            "weight, then the M bucket (1, 2, 4, 8, 16; a given M uses the smallest bucket >= M)."
        )
        table["_block_size"] = list(BLOCK_SIZE)
        table["_gemv_max_m_by_shape"] = by_shape
        table["_gemv_max_m"] = min(by_shape.values())
        table.setdefault(key, {}).update(configs)
        write_table(gemm, out_path, table, ("_comment", "_block_size", "_gemv_max_m", "_gemv_max_m_by_shape"))
        if args.results:
            args.results.write_text(json.dumps(results, indent=1))
    print(
        f"GEMV thresholds (largest M where it beats W8A8): {table['_gemv_max_m_by_shape']}; "
        f"_gemv_max_m = {table['_gemv_max_m']}"
    )
    print("wrote", out_path)
