"""Per-token-group FP8 (e4m3) quantisation of activations, the input side of the block-wise W8A8
linear layers (runtime/kernels/triton/fp8_gemm.py).

Same math as `reference.per_token_group_quant_fp8`: for each row and each group of `group_size`
consecutive elements along K, scale = max(amax, FP8_EPS) / FP8_MAX and q = clamp(x / scale,
+-FP8_MAX) cast to e4m3 (round to nearest even). Both divisions are IEEE round-to-nearest
(`div_rn`; a plain `/` lowers to an approximate division on NVIDIA GPUs), so on a GPU the scales
and q are bit-identical to the reference's fp32 torch math. The last group of a row may be
partial: its missing lanes are masked (loaded as 0, which cannot raise the amax).

One program quantises GROUPS consecutive groups of one row (a [GROUPS, BLOCK_G] tile, one
amax per tile row), so a long row is not split into a launch of one tiny program per group.

`silu_and_mul_quant_fp8` is the gated MLP's activation fused with this quantisation: the down
projection's W8A8 input straight from the gate_up projection's output.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

# the conventions of reference.py's FP8 section (tests check they agree); not imported from there
# so that this module, like the other kernel modules, needs only torch and triton
FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = float(torch.finfo(FP8_DTYPE).max)  # 448
FP8_EPS = 1e-10

TILE_ELEMS = 2048  # elements one program holds: GROUPS * BLOCK_G


@triton.jit
def _quantize_groups(x, mask, q_ptrs, s_ptrs, s_mask, eps, fp8_max):
    """x [GROUPS, BLOCK_G] fp32 (masked lanes 0) -> e4m3 at q_ptrs and one scale a group at s_ptrs."""
    amax = tl.max(tl.abs(x), axis=1)  # [GROUPS]; masked lanes are 0
    scale = tl.math.div_rn(tl.maximum(amax, eps), fp8_max)
    y = tl.math.div_rn(x, scale[:, None])
    y = tl.minimum(tl.maximum(y, -fp8_max), fp8_max)
    tl.store(q_ptrs, y.to(q_ptrs.dtype.element_ty), mask=mask)
    tl.store(s_ptrs, scale, mask=s_mask)


@triton.jit
def _per_token_group_quant_fp8_kernel(
    x_ptr,
    q_ptr,
    s_ptr,
    stride_x,
    stride_q,
    stride_sm,
    stride_sg,
    K,
    num_groups,
    group_size,
    eps,
    fp8_max,
    GROUPS: tl.constexpr,  # groups per program
    BLOCK_G: tl.constexpr,  # next power of two >= group_size
):
    row = tl.program_id(0).to(tl.int64)
    groups = tl.program_id(1) * GROUPS + tl.arange(0, GROUPS)  # [GROUPS]
    lane = tl.arange(0, BLOCK_G)  # [BLOCK_G]
    offs = groups[:, None] * group_size + lane[None, :]  # [GROUPS, BLOCK_G] column in the row
    mask = (lane[None, :] < group_size) & (offs < K) & (groups[:, None] < num_groups)
    x = tl.load(x_ptr + row * stride_x + offs, mask=mask, other=0.0).to(tl.float32)
    _quantize_groups(
        x,
        mask,
        q_ptr + row * stride_q + offs,
        s_ptr + row * stride_sm + groups * stride_sg,
        groups < num_groups,
        eps,
        fp8_max,
    )


@triton.jit
def _silu_and_mul_quant_fp8_kernel(
    gu_ptr,
    q_ptr,
    s_ptr,
    stride_gu,
    stride_q,
    stride_sm,
    stride_sg,
    INTER,
    num_groups,
    group_size,
    eps,
    fp8_max,
    GROUPS: tl.constexpr,
    BLOCK_G: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    groups = tl.program_id(1) * GROUPS + tl.arange(0, GROUPS)
    lane = tl.arange(0, BLOCK_G)
    offs = groups[:, None] * group_size + lane[None, :]
    mask = (lane[None, :] < group_size) & (offs < INTER) & (groups[:, None] < num_groups)
    gate = tl.load(gu_ptr + row * stride_gu + offs, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(gu_ptr + row * stride_gu + INTER + offs, mask=mask, other=0.0).to(tl.float32)
    # activation.py's formula, rounded to the input dtype as its output is: the same values the
    # unfused silu_and_mul -> quant pair quantises
    h = (gate / (1.0 + tl.exp(-gate)) * up).to(gu_ptr.dtype.element_ty).to(tl.float32)
    _quantize_groups(
        h,
        mask,
        q_ptr + row * stride_q + offs,
        s_ptr + row * stride_sm + groups * stride_sg,
        groups < num_groups,
        eps,
        fp8_max,
    )


def _launch(
    kernel,
    src: torch.Tensor,
    m: int,
    k: int,
    group_size: int,
    out_q: torch.Tensor | None,
    out_scale: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run one of the two kernels over the [M, K] values it quantises (read from src): checked (or
    new) outputs, one program per row and GROUPS groups."""
    assert group_size >= 1
    num_groups = triton.cdiv(k, group_size)
    if out_q is None:
        out_q = torch.empty((m, k), dtype=FP8_DTYPE, device=src.device)
    if out_scale is None:
        out_scale = torch.empty((m, num_groups), dtype=torch.float32, device=src.device)
    assert out_q.shape == (m, k) and out_q.dtype == FP8_DTYPE and (k <= 1 or out_q.stride(1) == 1)
    assert out_scale.shape == (m, num_groups) and out_scale.dtype == torch.float32
    if m == 0 or k == 0:
        return out_q, out_scale
    block_g = triton.next_power_of_2(group_size)
    groups = min(triton.next_power_of_2(num_groups), max(1, TILE_ELEMS // block_g))
    kernel[(m, triton.cdiv(num_groups, groups))](
        src,
        out_q,
        out_scale,
        src.stride(0),
        out_q.stride(0),
        out_scale.stride(0),
        out_scale.stride(1),
        k,
        num_groups,
        group_size,
        FP8_EPS,
        FP8_MAX,
        GROUPS=groups,
        BLOCK_G=block_g,
        num_warps=4,
    )
    return out_q, out_scale


def per_token_group_quant_fp8(
    x: torch.Tensor,
    group_size: int = 128,
    out_q: torch.Tensor | None = None,
    out_scale: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """x [M, K] (bf16/fp16/fp32, last dim contiguous) -> (q e4m3 [M, K], scale fp32 [M, ceil(K / group_size)])
    with x ~= q * scale per group. out_q / out_scale, when given, must have those shapes and dtypes
    (last dim of out_q contiguous; any strides for out_scale) and are written in place."""
    assert x.dim() == 2 and x.stride(1) == 1, "x must be [M, K] with a contiguous last dim"
    assert x.dtype in (torch.bfloat16, torch.float16, torch.float32), x.dtype
    return _launch(_per_token_group_quant_fp8_kernel, x, x.shape[0], x.shape[1], group_size, out_q, out_scale)


def silu_and_mul_quant_fp8(
    gate_up: torch.Tensor,
    group_size: int = 128,
    out_q: torch.Tensor | None = None,
    out_scale: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The gated MLP's activation and the down projection's input quantisation in one pass:
    gate_up [M, 2I] -> per_token_group_quant_fp8(silu_and_mul(gate_up)), the same values as the two
    kernels (activation.py, then the above), without writing and re-reading the [M, I] activation
    (at a prefill of 8192 tokens of Llama-3.1-8B, 235 MB of bf16 each way, every layer)."""
    assert gate_up.dim() == 2 and gate_up.shape[1] % 2 == 0 and gate_up.stride(1) == 1, (
        "gate_up must be [M, 2I] with a contiguous last dim"
    )
    assert gate_up.dtype in (torch.bfloat16, torch.float16, torch.float32), gate_up.dtype
    return _launch(
        _silu_and_mul_quant_fp8_kernel,
        gate_up,
        gate_up.shape[0],
        gate_up.shape[1] // 2,
        group_size,
        out_q,
        out_scale,
    )
