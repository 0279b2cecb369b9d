"""Tune the block-wise W8A8 FP8 GEMM (runtime/kernels/triton/fp8_gemm.py) on one GPU and write the
best tile config per (N, K) and M bucket to a JSON file in the format of fp8_gemm_configs.json.

    python benchmarks/tune_fp8_gemm.py                                   # Llama-3.1-8B shapes, all buckets
    python benchmarks/tune_fp8_gemm.py --shapes 6144,4096 --m 1 16 128 --out /tmp/cfg.json

For every (N, K) (default the Llama-3.1-8B linear layers: qkv 6144,4096; o_proj 4096,4096;
gate_up 28672,4096; down 4096,14336) and every M bucket (1, 2, 4, ..., 4096), each candidate
(BLOCK_M, BLOCK_N, GROUP_M, num_warps, num_stages) is first checked against the reference on the
same operands, then timed: warm-up calls, then `--reps` calls each timed by CUDA events, the median
kept. Before every timed call a 256 MB buffer is zeroed (outside the timed region), which evicts
L2, so each call reads its weights from device memory as a layer of a forward pass would (one
layer's fp8 weights, 16 to 117 MB, would otherwise sit in the 50 MB L2 at small N*K). Operands are
fresh random data (never zeros), quantised by the reference quantisers.

The output file is updated, not replaced: shapes not tuned in this run keep their entries. Its
"_comment" records the card, date and versions. The block size is (128, 128) (`_block_size`).
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from pathlib import Path

import torch
from kernel_timing import LLAMA_8B_SHAPES, load_kernel_modules, parse_shape, time_ms

BLOCK_SIZE = (128, 128)
HOLD_CYCLES = 20_000_000  # ~10 ms of GPU clock cycles: longer than queueing the timed calls takes
SMEM_LIMIT = 220 * 1024  # bytes of shared memory a config's pipeline may take (H100: 227 KB per block)


def candidates(m: int, block_n: int, quick: bool) -> list[dict]:
    """Tile configs worth timing at this M: BLOCK_M from 16 up to M's next power of two (64 too
    for small M: Hopper's warpgroup MMA works on 64 rows; at least 64 for M >= 512), BLOCK_N
    dividing block_n, shared memory within the limit, no 8 warps on small tiles, GROUP_M only
    where there are several row tiles."""
    m_pow2 = 1 << max(0, (m - 1).bit_length())
    block_ms = [bm for bm in (16, 32, 64, 128)
                if (bm <= max(16, m_pow2) or bm == 64) and bm * 8 >= min(m_pow2, 512)]
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
                    for group_m in ((1,) if m <= bm else (8,) if quick else (1, 8)):
                        out.append({"BLOCK_M": bm, "BLOCK_N": bn, "GROUP_M": group_m,
                                    "num_warps": warps, "num_stages": st})
    return out


def tune_shape(ref, gemm, n: int, k: int, ms: list[int], flush: torch.Tensor, args) -> dict[str, dict]:
    from triton.runtime.errors import OutOfResources

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
            def run(cfg=cfg):
                gemm.w8a8_block_fp8_matmul(a_q, a_s, b_q, b_s, BLOCK_SIZE, torch.bfloat16, config=cfg, out=out)
            try:
                out.fill_(float("nan"))
                run()
                torch.cuda.synchronize()
            except OutOfResources as exc:
                print(f"  skip {cfg}: {exc}", file=sys.stderr)
                continue
            err = float((out.double() - expected.double()).norm() / expected.double().norm())
            if not err < 1e-2:  # NaN fails too
                raise SystemExit(f"CORRECTNESS FAILURE N,K={n},{k} M={m} {cfg}: rel err {err:.3e}")
            results.append((time_ms(run, flush, args.warmup, args.reps, budget_ms=200.0, hold_cycles=HOLD_CYCLES), cfg))
        results.sort(key=lambda r: r[0])
        ms_best, cfg_best = results[0]
        default = gemm.default_config(m, n, k, BLOCK_SIZE).to_dict()
        ms_default = next((t for t, c in results if c == default), float("nan"))
        tflops = 2 * m * n * k / ms_best / 1e9
        print(f"N,K={n},{k} M={m:5d}: {ms_best * 1e3:8.1f} us {tflops:7.1f} TFLOP/s "
              f"(default {ms_default * 1e3:8.1f} us; {len(results)} configs, {time.time() - t0:.0f} s) {cfg_best}",
              flush=True)
        best[str(m)] = cfg_best
    return best


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", nargs="+", type=parse_shape, metavar="N,K",
                        help="weight shapes to tune (default: the Llama-3.1-8B linear layers)")
    parser.add_argument("--m", nargs="+", type=int, help="M values (default: the config buckets)")
    parser.add_argument("--out", type=Path, help="JSON to update (default: runtime/kernels/triton/fp8_gemm_configs.json)")
    parser.add_argument("--reps", type=int, default=30, help="timed calls per config (median kept)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed calls per config first")
    parser.add_argument("--quick", action="store_true", help="fewer candidates (stages 3-4, GROUP_M 8 only)")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("tune_fp8_gemm.py needs a CUDA GPU (torch.cuda.is_available() is False); "
                 "run it on the machine whose configs you want")
    import triton

    ref, gemm = load_kernel_modules("reference", "triton.fp8_gemm")
    shapes = args.shapes or LLAMA_8B_SHAPES
    ms = args.m or list(gemm.M_BUCKETS)
    out_path = args.out or gemm.CONFIG_FILE
    card = torch.cuda.get_device_name(0)
    print(f"card: {card} | torch {torch.__version__} | triton {triton.__version__} | shapes {shapes} | M {ms}")
    torch.manual_seed(0)
    flush = torch.empty(256 * 1024 * 1024, dtype=torch.uint8, device="cuda")
    try:
        table = json.loads(Path(out_path).read_text())
    except (OSError, ValueError):
        table = {}
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    tuned: dict[str, dict] = {}
    for n, k in shapes:  # the file is rewritten after each shape: a cut-off run keeps what it tuned
        tuned[f"{n},{k}"] = tune_shape(ref, gemm, n, k, ms, flush, args)
        table["_comment"] = (f"Tuned by benchmarks/tune_fp8_gemm.py on {card}, {date}, torch {torch.__version__}, "
                             f"triton {triton.__version__} (shapes {'; '.join(tuned)}, M {ms}; entries of other "
                             "shapes or M may be older). Keys: \"N,K\" of the weight, then the M bucket (a given M "
                             "uses the smallest bucket >= M, else the largest).")
        table["_block_size"] = list(BLOCK_SIZE)
        table.setdefault(f"{n},{k}", {}).update(tuned[f"{n},{k}"])
        # metadata first, then shapes in their original order
        ordered = {key: table[key] for key in ("_comment", "_block_size")}
        ordered.update((key, v) for key, v in table.items() if key not in ordered)
        Path(out_path).write_text(gemm.dump_configs(ordered))
    print("wrote", out_path)


if __name__ == "__main__":
    main()
