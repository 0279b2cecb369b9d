"""FP8 linear layers at Llama-3.1-8B shapes on one GPU: the block-wise W8A8 Triton kernels
(runtime/kernels/triton/fp8_quant.py + fp8_gemm.py) and, at decode-sized M, the W8A16 GEMV
(fp8_gemv.py), beside torch's per-tensor `_scaled_mm` and a bf16 `torch.matmul`.

    python benchmarks/bench_fp8_gemm.py --out fp8_gemm.json
    python benchmarks/bench_fp8_gemm.py --shapes 6144,4096 --m 1 4096

For each weight shape (N, K) (default: qkv 6144,4096; o_proj 4096,4096; gate_up 28672,4096; down
4096,14336) and M in {1, 2, 4, 8, 16, 128, 4096, 8192}, on the same random bf16 x [M, K] and w [N, K]:
  * triton gemm: `w8a8_block_fp8_matmul` on activations already quantised (per-token groups of
    128) and 128x128-block weights, bf16 output, its tile config from `choose_config`;
  * triton quant+gemm: the same with `per_token_group_quant_fp8` of x in the timed region (what a
    linear layer costs);
  * gemv (M <= fp8_gemv.MAX_M = 16): `w8a16_block_fp8_matmul` on the unquantised bf16 x and the same
    fp8 weights, bf16 output, its config from `fp8_gemv.choose_config` (split-K reduction included:
    what a linear layer costs on that path). Reported also as GB/s of weight bytes (e4m3 bytes plus
    the fp32 block scales, beside quant+gemm's on the same bytes): at these M the weights are
    nearly all the traffic;
  * cublas block: cuBLAS' block-scaled `torch._scaled_mm` (runtime/kernels/cublas_fp8.py) on the
    same block-quantised operands as the Triton GEMM (activation scales M-major, rows padded to a
    multiple of 4 as cuBLAS needs), gemm only, where this torch / CUDA has it (else the row says
    why not);
  * scaled_mm: `torch._scaled_mm` with per-tensor fp32 scales (activations quantised beforehand,
    outside the timed region), a_q [M, K] row-major, b_q = w_q.t() (column-major, as cuBLAS
    needs), bf16 output. Some torch versions need M padded to a multiple of 16: when the call
    with the true M fails, M is zero-padded and the row says so (`padded_m`);
  * bf16 matmul: `x @ w.t()`, the unquantised baseline.
TFLOP/s = 2*M*N*K / time. Relative Frobenius errors against the fp32 product of the unquantised
bf16 x and w (`err_vs_fp32`: quantisation plus kernel), and for the Triton kernels also against
their reference on the same operands (`err_vs_reference`: the kernel alone;
reference.w8a8_block_fp8_matmul, reference.w8a16_block_fp8_matmul).

Timing: warm-up calls, then many calls each timed by CUDA events, median kept; before every timed
call a 256 MB buffer is read outside the timed region, which evicts L2 (kernel_timing.evict_l2), so
weights come from device memory as in a forward pass (one layer's weights differ from the next's).
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path

import torch
from kernel_timing import LLAMA_8B_SHAPES, load_kernel_modules, parse_shape, rel_err, time_ms

SHAPE_NAMES = {(6144, 4096): "qkv", (4096, 4096): "o_proj", (28672, 4096): "gate_up", (4096, 14336): "down"}
MS = [1, 2, 4, 8, 16, 128, 4096, 8192]
BLOCK_SIZE = (128, 128)


def per_tensor_quant(t: torch.Tensor, fp8_dtype, fp8_max: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(q, scale) with t ~= q * scale, one fp32 scale (a 0-dim device tensor) for the tensor."""
    scale = t.abs().amax().float().clamp(min=1e-12) / fp8_max
    q = (t.float() / scale).clamp(-fp8_max, fp8_max).to(fp8_dtype)
    return q, scale


def scaled_mm_fn(a_q: torch.Tensor, a_scale: torch.Tensor, b_q_t: torch.Tensor, b_scale: torch.Tensor):
    """A callable running torch._scaled_mm at a_q's M, or at M padded to a multiple of 16 when this
    torch refuses the true M. Returns (fn, padded_m or None, error text or None)."""
    m = a_q.shape[0]

    def call(a):
        return torch._scaled_mm(a, b_q_t, scale_a=a_scale, scale_b=b_scale, out_dtype=torch.bfloat16)

    try:
        call(a_q)
        torch.cuda.synchronize()
        return (lambda: call(a_q)), None, None
    except RuntimeError as exc:
        first_error = str(exc).splitlines()[0]
    padded = -(-m // 16) * 16
    if padded == m:
        return None, None, first_error
    a_pad = torch.zeros(padded, a_q.shape[1], dtype=a_q.dtype, device=a_q.device)
    a_pad[:m] = a_q
    try:
        call(a_pad)
        torch.cuda.synchronize()
    except RuntimeError as exc:
        return None, padded, str(exc).splitlines()[0]
    return (lambda: call(a_pad)[:m]), padded, None


def bench_shape(ref, quant, gemm, gemv, cublas, n: int, k: int, m: int, flush: torch.Tensor, args) -> dict:
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    w = (torch.randn(n, k, device="cuda") * 0.02).to(torch.bfloat16)
    flops = 2 * m * n * k
    exact = x.float() @ w.float().t()  # fp32 (torch's default: no TF32 for fp32 matmul)
    row: dict = {"name": SHAPE_NAMES.get((n, k), ""), "N": n, "K": k, "M": m}

    def tflops(ms: float) -> float:
        return flops / ms / 1e9

    def weight_gbs(ms: float) -> float:
        return weight_bytes / ms / 1e6

    # (a) block-wise W8A8 Triton kernels
    w_q, w_s = ref.block_quant_fp8(w, BLOCK_SIZE)
    weight_bytes = w_q.numel() * w_q.element_size() + w_s.numel() * w_s.element_size()
    a_q, a_s = quant.per_token_group_quant_fp8(x, BLOCK_SIZE[1])
    cfg = gemm.choose_config(m, n, k, BLOCK_SIZE)
    out = torch.full((m, n), float("nan"), device="cuda", dtype=torch.bfloat16)
    gemm.w8a8_block_fp8_matmul(a_q, a_s, w_q, w_s, BLOCK_SIZE, torch.bfloat16, out=out)
    row["config"] = cfg.to_dict()
    row["triton_err_vs_fp32"] = rel_err(out, exact)
    row["triton_err_vs_reference"] = rel_err(out, ref.w8a8_block_fp8_matmul(a_q, a_s, w_q, w_s, BLOCK_SIZE))

    def gemm_only():
        gemm.w8a8_block_fp8_matmul(a_q, a_s, w_q, w_s, BLOCK_SIZE, torch.bfloat16, out=out)

    def quant_gemm():
        q, s = quant.per_token_group_quant_fp8(x, BLOCK_SIZE[1])
        gemm.w8a8_block_fp8_matmul(q, s, w_q, w_s, BLOCK_SIZE, torch.bfloat16, out=out)

    row["triton_gemm_ms"] = time_ms(gemm_only, flush, args.warmup, args.reps)
    row["triton_quant_gemm_ms"] = time_ms(quant_gemm, flush, args.warmup, args.reps)
    row["triton_quant_ms"] = time_ms(
        lambda: quant.per_token_group_quant_fp8(x, BLOCK_SIZE[1]), flush, args.warmup, args.reps
    )

    # (a') W8A16 GEMV on the unquantised x, at decode-sized M
    if m <= gemv.MAX_M:
        gcfg = gemv.choose_config(m, n, k, BLOCK_SIZE)
        gout = torch.full((m, n), float("nan"), device="cuda", dtype=torch.bfloat16)
        gemv.w8a16_block_fp8_matmul(x, w_q, w_s, BLOCK_SIZE, out=gout)
        row["gemv_config"] = gcfg.to_dict()
        row["gemv_err_vs_fp32"] = rel_err(gout, exact)
        row["gemv_err_vs_reference"] = rel_err(gout, ref.w8a16_block_fp8_matmul(x, w_q, w_s, BLOCK_SIZE))
        row["gemv_ms"] = time_ms(
            lambda: gemv.w8a16_block_fp8_matmul(x, w_q, w_s, BLOCK_SIZE, out=gout),
            flush,
            args.warmup,
            args.reps,
        )
    else:
        row["gemv_config"] = None
        row["gemv_ms"] = row["gemv_err_vs_fp32"] = row["gemv_err_vs_reference"] = float("nan")

    # (a'') cuBLAS block-scaled GEMM on the same operands
    reason = cublas.unsupported_reason(torch.device("cuda"))
    row["cublas_block_error"] = reason
    if reason is None and cublas.shape_ok(n, k, BLOCK_SIZE):
        a_q_pad, a_s_mmajor = cublas.pad_operands(a_q, a_s)  # rows padded to a multiple of 4
        bout = cublas.block_scaled_mm(a_q_pad, a_s_mmajor, w_q, w_s)[:m]
        row["cublas_block_err_vs_fp32"] = rel_err(bout, exact)
        row["cublas_block_err_vs_reference"] = rel_err(
            bout, ref.w8a8_block_fp8_matmul(a_q, a_s, w_q, w_s, BLOCK_SIZE)
        )
        row["cublas_block_ms"] = time_ms(
            lambda: cublas.block_scaled_mm(a_q_pad, a_s_mmajor, w_q, w_s), flush, args.warmup, args.reps
        )
    else:
        row["cublas_block_ms"] = row["cublas_block_err_vs_fp32"] = row["cublas_block_err_vs_reference"] = (
            float("nan")
        )

    # (b) per-tensor torch._scaled_mm
    ta_q, ta_s = per_tensor_quant(x, ref.FP8_DTYPE, ref.FP8_MAX)
    tw_q, tw_s = per_tensor_quant(w, ref.FP8_DTYPE, ref.FP8_MAX)
    fn, padded, error = scaled_mm_fn(ta_q, ta_s, tw_q.t(), tw_s)
    row["scaled_mm_padded_m"] = padded
    if fn is None:
        row["scaled_mm_error"] = error
        row["scaled_mm_ms"] = row["scaled_mm_err_vs_fp32"] = float("nan")
    else:
        row["scaled_mm_err_vs_fp32"] = rel_err(fn(), exact)
        row["scaled_mm_ms"] = time_ms(fn, flush, args.warmup, args.reps)

    # (c) bf16 matmul
    row["bf16_err_vs_fp32"] = rel_err(x @ w.t(), exact)
    row["bf16_ms"] = time_ms(lambda: x @ w.t(), flush, args.warmup, args.reps)

    for key in ("triton_gemm", "triton_quant_gemm", "gemv", "cublas_block", "scaled_mm", "bf16"):
        row[key + "_tflops"] = tflops(row[key + "_ms"])
    row["weight_bytes"] = weight_bytes
    for key in ("triton_quant_gemm", "gemv"):
        row[key + "_weight_gbs"] = weight_gbs(row[key + "_ms"])
    return row


def _num(value: float, fmt: str, width: int) -> str:
    """value formatted, or '-' (right-aligned) where it was not measured (NaN)."""
    return f"{'-':>{width}}" if value != value else f"{value:{width}{fmt}}"


def print_table(rows: list[dict]) -> None:
    print()
    print(
        f"{'':27}| {'TFLOP/s':^63} | {'weight GB/s':^17} | {'rel err vs fp32':^29} | {'vs reference':^29} "
        f"| {'us':^33}"
    )
    print(
        f"{'layer':8} {'N':>6} {'K':>6} {'M':>4} | {'gemm':>9} {'quant+gemm':>10} {'gemv':>9} "
        f"{'cublas blk':>10} {'scaled_mm':>10} {'bf16':>9} | {'q+gemm':>8} {'gemv':>8} | "
        f"{'triton':>9} {'gemv':>9} {'scaled_mm':>9} | "
        f"{'triton':>9} {'gemv':>9} {'cublas':>9} | {'gemm':>6} {'q+gemm':>6} {'gemv':>6} {'cublas':>6} "
        f"{'quant':>5}"
    )
    for r in rows:
        pad = "*" if r["scaled_mm_padded_m"] else " "
        print(
            f"{r['name']:8} {r['N']:6d} {r['K']:6d} {r['M']:4d} | {r['triton_gemm_tflops']:9.1f} "
            f"{r['triton_quant_gemm_tflops']:10.1f} {_num(r['gemv_tflops'], '.1f', 9)} "
            f"{_num(r['cublas_block_tflops'], '.1f', 10)} "
            f"{r['scaled_mm_tflops']:9.1f}{pad} {r['bf16_tflops']:9.1f} | "
            f"{r['triton_quant_gemm_weight_gbs']:8.0f} {_num(r['gemv_weight_gbs'], '.0f', 8)} | "
            f"{r['triton_err_vs_fp32']:9.2e} {_num(r['gemv_err_vs_fp32'], '.2e', 9)} "
            f"{r['scaled_mm_err_vs_fp32']:9.2e} | {r['triton_err_vs_reference']:9.2e} "
            f"{_num(r['gemv_err_vs_reference'], '.2e', 9)} "
            f"{_num(r['cublas_block_err_vs_reference'], '.2e', 9)} | "
            f"{r['triton_gemm_ms'] * 1e3:6.1f} {r['triton_quant_gemm_ms'] * 1e3:6.1f} "
            f"{_num(r['gemv_ms'] * 1e3, '.1f', 6)} {_num(r['cublas_block_ms'] * 1e3, '.1f', 6)} "
            f"{r['triton_quant_ms'] * 1e3:5.1f}"
        )
    if any(r["scaled_mm_padded_m"] for r in rows):
        print(
            "* scaled_mm ran with M zero-padded to a multiple of 16 (this torch refused the true M); "
            "TFLOP/s counts the true M"
        )
    errors = {r.get("scaled_mm_error") for r in rows} - {None}
    for e in errors:
        print("scaled_mm failed:", e)
    for e in {r.get("cublas_block_error") for r in rows} - {None}:
        print("cuBLAS block-scaled GEMM not measured:", e)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--shapes",
        nargs="+",
        type=parse_shape,
        metavar="N,K",
        help="weight shapes (default: the Llama-3.1-8B linear layers)",
    )
    parser.add_argument("--m", nargs="+", type=int, default=MS, help=f"M values (default {MS})")
    parser.add_argument("--reps", type=int, default=50, help="timed calls per measurement (median kept)")
    parser.add_argument("--warmup", type=int, default=10, help="untimed calls first")
    parser.add_argument("--out", type=Path, help="write the results here as JSON")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("bench_fp8_gemm.py needs a CUDA GPU (torch.cuda.is_available() is False)")
    if torch.cuda.get_device_capability() < (8, 9):
        sys.exit(
            f"bench_fp8_gemm.py needs fp8 support (compute capability 8.9+); "
            f"{torch.cuda.get_device_name(0)} is {torch.cuda.get_device_capability()}"
        )
    import triton

    ref, quant, gemm, gemv, cublas = load_kernel_modules(
        "reference", "triton.fp8_quant", "triton.fp8_gemm", "triton.fp8_gemv", "cublas_fp8"
    )
    info = {
        "device": torch.cuda.get_device_name(0),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
    }
    try:  # the commit the numbers belong to (benchmarks/run_info.py, beside this script)
        import run_info

        info["git_commit"], info["git_dirty"] = run_info.git_commit(), run_info.git_dirty()
    except ImportError:
        pass
    print("card:", info["device"], "| torch", info["torch"], "| triton", info["triton"])
    torch.manual_seed(0)
    flush = torch.empty(256 * 1024 * 1024, dtype=torch.uint8, device="cuda")
    rows = []
    for n, k in args.shapes or LLAMA_8B_SHAPES:
        for m in args.m:
            row = bench_shape(ref, quant, gemm, gemv, cublas, n, k, m, flush, args)
            gemv_text = (
                f", gemv {row['gemv_tflops']:.1f} ({row['gemv_weight_gbs']:.0f} GB/s of weights vs "
                f"quant+gemm {row['triton_quant_gemm_weight_gbs']:.0f})"
                if m <= gemv.MAX_M
                else ""
            )
            print(
                f"{row['name']} N={n} K={k} M={m}: triton {row['triton_gemm_tflops']:.1f} TFLOP/s "
                f"(quant+gemm {row['triton_quant_gemm_tflops']:.1f}){gemv_text}, cublas block "
                f"{row['cublas_block_tflops']:.1f}, scaled_mm "
                f"{row['scaled_mm_tflops']:.1f}, bf16 {row['bf16_tflops']:.1f}",
                flush=True,
            )
            rows.append(row)
            torch.cuda.empty_cache()
    print_table(rows)
    if args.out:
        args.out.write_text(json.dumps({"info": info, "results": rows}, indent=1, default=str))
        print("wrote", args.out)


if __name__ == "__main__":
    main()
