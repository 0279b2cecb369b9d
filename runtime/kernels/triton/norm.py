"""RMSNorm and fused residual-add + RMSNorm, one program per row.

Rounding matches the eager model (runtime/layers/decoder_blocks.py RMSNorm, itself Hugging Face's order):
statistics in fp32, the normalised row rounded to the input dtype, then `weight * normed`
computed in fp32 from the two dtype values and rounded once -- exactly what torch does for a
half-precision elementwise product, so the gain step is bit-identical to eager. The sum of
squares is reduced in a different order than torch's, so rare last-bit differences remain.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from radixlm.runtime.kernels.triton import pdl

MAX_HIDDEN = 16384  # one row is held in registers; larger rows would spill


def _launch_params(hidden: int) -> tuple[int, int]:
    block = triton.next_power_of_2(hidden)
    assert block <= MAX_HIDDEN, f"hidden size {hidden} > {MAX_HIDDEN}"
    # ~8 to 32 fp32 elements per thread keeps the row in registers without spilling
    return block, min(16, max(1, block // 512))


@triton.jit
def _inv_rms(r, N, eps):
    """r: one row in fp32 (masked lanes 0) -> rsqrt(mean(r^2) + eps)."""
    return tl.math.rsqrt(tl.sum(r * r, 0) / N + eps)


@triton.jit
def _rmsnorm_kernel(
    x_ptr, w_ptr, out_ptr, stride_x, stride_o, N, eps, BLOCK: tl.constexpr, USE_PDL: tl.constexpr
):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    mask = offs < N
    w = tl.load(w_ptr + offs, mask=mask, other=0.0).to(tl.float32)  # a weight: before the wait (pdl.py)
    if USE_PDL:
        tl.extra.cuda.gdc_wait()
        tl.extra.cuda.gdc_launch_dependents()
    x = tl.load(x_ptr + row * stride_x + offs, mask=mask, other=0.0)
    r = x.to(tl.float32)
    normed = (r * _inv_rms(r, N, eps)).to(x.dtype).to(tl.float32)  # rounded before the gain
    tl.store(out_ptr + row * stride_o + offs, (w * normed).to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _fused_add_rmsnorm_kernel(
    x_ptr, res_ptr, w_ptr, stride_x, stride_r, N, eps, BLOCK: tl.constexpr, USE_PDL: tl.constexpr
):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    mask = offs < N
    w = tl.load(w_ptr + offs, mask=mask, other=0.0).to(tl.float32)  # a weight: before the wait (pdl.py)
    if USE_PDL:
        tl.extra.cuda.gdc_wait()
        tl.extra.cuda.gdc_launch_dependents()
    x = tl.load(x_ptr + row * stride_x + offs, mask=mask, other=0.0)
    res = tl.load(res_ptr + row * stride_r + offs, mask=mask, other=0.0)
    # like torch's half-precision add: exact fp32 sum, rounded once to the dtype
    h = (x.to(tl.float32) + res.to(tl.float32)).to(x.dtype)
    tl.store(res_ptr + row * stride_r + offs, h, mask=mask)
    r = h.to(tl.float32)
    normed = (r * _inv_rms(r, N, eps)).to(x.dtype).to(tl.float32)  # rounded before the gain
    tl.store(x_ptr + row * stride_x + offs, (w * normed).to(x.dtype), mask=mask)


def rmsnorm(
    x: torch.Tensor, weight: torch.Tensor, eps: float, out: torch.Tensor | None = None
) -> torch.Tensor:
    """x [T, hidden] (last dim contiguous), weight [hidden] -> out [T, hidden] in x's dtype."""
    assert x.dim() == 2 and x.stride(1) == 1 and weight.is_contiguous()
    if out is None:
        out = torch.empty_like(x)
    rows, hidden = x.shape
    if rows == 0:
        return out
    block, warps = _launch_params(hidden)
    _rmsnorm_kernel[(rows,)](
        x,
        weight,
        out,
        x.stride(0),
        out.stride(0),
        hidden,
        eps,
        BLOCK=block,
        num_warps=warps,
        **pdl.launch_options(x, rows),
    )
    return out


def fused_add_rmsnorm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """In place: residual <- x + residual (rounded to the dtype); x <- rmsnorm(residual).
    Returns (x, residual). Both [T, hidden] with contiguous rows, same dtype."""
    assert x.shape == residual.shape and x.dtype == residual.dtype and x.dim() == 2
    assert x.stride(1) == 1 and residual.stride(1) == 1 and weight.is_contiguous()
    rows, hidden = x.shape
    if rows == 0:
        return x, residual
    block, warps = _launch_params(hidden)
    _fused_add_rmsnorm_kernel[(rows,)](
        x,
        residual,
        weight,
        x.stride(0),
        residual.stride(0),
        hidden,
        eps,
        BLOCK=block,
        num_warps=warps,
        **pdl.launch_options(x, rows),
    )
    return x, residual
