"""Block-scaled W8A8 FP8 GEMM through cuBLAS (`torch._scaled_mm`): the prefill-sized-M path.

The same math as the Triton kernel (runtime/kernels/triton/fp8_gemm.py) and its oracle
`reference.w8a8_block_fp8_matmul`: a_q [M, K] e4m3 with one fp32 scale per token and group of 128
along K, b_q [N, K] e4m3 with one fp32 scale per 128 x 128 block, out = (a_q * a_s) @ (b_q * b_s)^T
with fp32 accumulation. cuBLAS (12.9 and later) runs this "1x128 by 128x128" scaling natively on
Hopper, with warp-specialised kernels that overlap the per-block promotion of the partial sums
with the tensor-core work; our Triton kernel must wait for each K step's `tl.dot` before scaling
it, and at M = 4096 reached about half of cuBLAS' per-tensor fp8 rate on an H100
(benchmarks/results/fp8-gemm-gpu-h100-2026-11-26.log). At decode-sized M both are bound by the
weight bytes and the Triton kernels (GEMV, GEMM) stay: `ops.fp8_linear` takes this path from the M
measured by `benchmarks/tune_fp8_gemm.py --scaled-mm` (stored in fp8_gemm_configs.json).

Not every torch / CUDA build has it (it needs CUDA 12.9+ and a torch whose `_scaled_mm` accepts
block-wise fp32 scales), so `unsupported_reason` runs one small product per device, checked
against the reference, before the first use; the answer is kept for the process. It must run
outside CUDA-graph capture: `ops.prepare_fp8` calls it at model load.

Layouts torch requires: scale_a [M, K/128] with M the contiguous dimension (stride (1, M): what
`ops.fp8_linear` asks the quantisation kernel to write); b = b_q.t() ([K, N] column-major, free) with
scale_b = b_s.t() ([K/128, N/128], the checkpoint's row-major [N/128, K/128] seen transposed).
cuBLAS also needs each column of scale_a 16-byte aligned, so M must be a multiple of 4 (measured
on an H100: every other M from 1 to 8193 was refused with CUBLAS_STATUS_NOT_SUPPORTED): callers
pad the rows (`padded_rows`), and the product's extra rows are dropped.
"""

from __future__ import annotations

import torch

BLOCK = 128  # the only block shape cuBLAS scales by: 1 x 128 for activations, 128 x 128 for weights
M_MULTIPLE = 4  # rows of a_q: a column of the M-major scale_a must be 16-byte aligned

_support: dict[tuple[str, int | None], str | None] = {}  # device -> None (works) or why not


def shape_ok(n: int, k: int, block_size: tuple[int, int]) -> bool:
    """Whether an [N, K] weight with this block size can take this path (128 x 128 blocks, whole
    blocks along N and K: cuBLAS takes no partial scale blocks)."""
    return tuple(block_size) == (BLOCK, BLOCK) and n % BLOCK == 0 and k % BLOCK == 0 and n > 0 and k > 0


def padded_rows(m: int) -> int:
    """M rounded up to what cuBLAS takes (a multiple of M_MULTIPLE)."""
    return -(-m // M_MULTIPLE) * M_MULTIPLE


def empty_operands(
    m: int, k: int, dtype: torch.dtype, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Buffers for an [M, K] activation in cuBLAS's layout: (a_q [rows, K], a_scale [rows, K/128]
    M-major: a transposed view of a [K/128, rows] buffer), rows = `padded_rows(M)`. The padding
    rows are set (zeros, scale 1); the caller writes the first M rows, e.g. by quantising into
    a_q[:M] and a_scale[:M], and drops the product's extra rows."""
    rows = padded_rows(m)
    a_q = torch.empty((rows, k), dtype=dtype, device=device)
    a_scale = torch.empty((k // BLOCK, rows), dtype=torch.float32, device=device).t()
    if rows > m:
        a_q[m:].zero_()
        a_scale[m:].fill_(1.0)
    return a_q, a_scale


def pad_operands(a_q: torch.Tensor, a_scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(a_q, a_scale) from the row-major ones of the quantisation kernel, copied into cuBLAS's
    layout (`empty_operands`): for benchmarks and tests; `ops.fp8_linear` quantises into it directly."""
    m, k = a_q.shape
    q, s = empty_operands(m, k, a_q.dtype, a_q.device)
    q[:m] = a_q
    s[:m] = a_scale
    return q, s


def block_scaled_mm(
    a_q: torch.Tensor,
    a_scale: torch.Tensor,
    b_q: torch.Tensor,
    b_scale: torch.Tensor,
    out_dtype: torch.dtype = torch.bfloat16,
) -> torch.Tensor:
    """a_q [M, K] e4m3 (row-major; M a multiple of M_MULTIPLE) with a_scale fp32 [M, K/128], M-major
    (stride (1, M)); b_q [N, K] e4m3 (row-major) with b_scale fp32 [N/128, K/128] (row-major) ->
    [M, N] in out_dtype."""
    m, k = a_q.shape
    n = b_q.shape[0]
    assert m % M_MULTIPLE == 0, f"cuBLAS takes M a multiple of {M_MULTIPLE} (pad the rows), got {m}"
    assert shape_ok(n, k, (BLOCK, BLOCK)), (
        f"cuBLAS block scaling needs N and K multiples of {BLOCK}: {n}, {k}"
    )
    assert a_scale.shape == (m, k // BLOCK) and (m == 1 or a_scale.stride(0) == 1), (
        f"a_scale must be [M, K/128] with M contiguous, got {tuple(a_scale.shape)} strides {a_scale.stride()}"
    )
    assert b_scale.shape == (n // BLOCK, k // BLOCK) and b_scale.is_contiguous(), tuple(b_scale.shape)
    return torch._scaled_mm(a_q, b_q.t(), scale_a=a_scale, scale_b=b_scale.t(), out_dtype=out_dtype)


def _key(device: torch.device) -> tuple[str, int | None]:
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        return ("cuda", torch.cuda.current_device())
    return (device.type, device.index)


def probed(device: torch.device) -> bool:
    """Whether `unsupported_reason` has already answered for this device (then it is free to call)."""
    return _key(device) in _support


def unsupported_reason(device: torch.device) -> str | None:
    """None when `block_scaled_mm` works on this device, else why not (the first line of the error,
    or a wrong result). Probed once per device with a [256, 512] x [384, 512]^T product of random
    data against the reference; must not be called during CUDA-graph capture."""
    key = _key(device)
    if key not in _support:
        _support[key] = _probe(torch.device(device))
    return _support[key]


def _probe(device: torch.device) -> str | None:
    if device.type != "cuda":
        return "not a CUDA device"
    if torch.version.hip is not None:
        return "ROCm build"
    if torch.cuda.get_device_capability(device) < (9, 0):
        return f"compute capability {torch.cuda.get_device_capability(device)} < 9.0"
    from radixlm.runtime.kernels import reference

    gen = torch.Generator(device=device).manual_seed(0)
    m, n, k = 256, 384, 512
    x = torch.randn(m, k, device=device, generator=gen)
    w = torch.randn(n, k, device=device, generator=gen) * 0.05
    a_q, a_s = reference.per_token_group_quant_fp8(x, BLOCK)
    b_q, b_s = reference.block_quant_fp8(w, (BLOCK, BLOCK))
    try:
        out = block_scaled_mm(*pad_operands(a_q, a_s), b_q, b_s.contiguous(), torch.bfloat16)
        torch.cuda.synchronize(device)
    except (RuntimeError, NotImplementedError, TypeError, ValueError) as exc:
        return f"torch._scaled_mm refused block-wise scales: {str(exc).strip().splitlines()[0]}"
    expected = reference.w8a8_block_fp8_matmul(a_q, a_s, b_q, b_s, (BLOCK, BLOCK), torch.float32)
    err = float((out.double() - expected.double()).norm() / expected.double().norm())
    if not err < 1e-2:  # the kernel tests' tolerance (bf16 output); NaN fails too
        return f"torch._scaled_mm with block-wise scales disagrees with the reference (rel err {err:.2e})"
    return None
