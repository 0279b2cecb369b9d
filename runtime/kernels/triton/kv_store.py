"""Scatter the new tokens' K and V into the paged KV pool: one launch for both buffers.

Program t copies row t of k and v (all KV heads) to slot `slots[t]` of k_buffer/v_buffer,
casting to the buffer's dtype; an fp8 buffer stores value / scale, saturated at +-448. Slots
are distinct within a batch (the allocator hands each slot out once), so programs never race
on a destination row.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def store_pool_rows(dst_ptr, x, inv_scale, mask, FP8: tl.constexpr):
    """Stores x at dst_ptr cast to the pool's dtype; an fp8 pool gets x * (1 / scale) in fp32,
    saturated at +-448 (e4m3fn has no infinity: an unsaturated overflow would become NaN).
    The one definition of the pool cast: rotary.rotary_and_store_kv uses it too, so the fused
    kernel writes the same bits as this one."""
    if FP8:
        x = tl.clamp(x.to(tl.float32) * inv_scale, -448.0, 448.0)
    tl.store(dst_ptr, x.to(dst_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _store_kv_kernel(
    k_ptr,
    v_ptr,
    kb_ptr,
    vb_ptr,
    slots_ptr,
    stride_kt,
    stride_kh,
    stride_vt,
    stride_vh,
    stride_kbt,
    stride_kbh,
    stride_vbt,
    stride_vbh,
    inv_k_scale,
    inv_v_scale,
    num_kv_heads,
    HEAD_DIM: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_D: tl.constexpr,
    FP8: tl.constexpr,
):
    t = tl.program_id(0).to(tl.int64)
    slot = tl.load(slots_ptr + t).to(tl.int64)
    offs_h = tl.arange(0, BLOCK_H)
    offs_d = tl.arange(0, BLOCK_D)
    mask = (offs_h[:, None] < num_kv_heads) & (offs_d[None, :] < HEAD_DIM)
    k = tl.load(k_ptr + t * stride_kt + offs_h[:, None] * stride_kh + offs_d[None, :], mask=mask)
    v = tl.load(v_ptr + t * stride_vt + offs_h[:, None] * stride_vh + offs_d[None, :], mask=mask)
    store_pool_rows(
        kb_ptr + slot * stride_kbt + offs_h[:, None] * stride_kbh + offs_d[None, :], k, inv_k_scale, mask, FP8
    )
    store_pool_rows(
        vb_ptr + slot * stride_vbt + offs_h[:, None] * stride_vbh + offs_d[None, :], v, inv_v_scale, mask, FP8
    )


def store_kv(
    k: torch.Tensor,
    v: torch.Tensor,
    k_buffer: torch.Tensor,
    v_buffer: torch.Tensor,
    slots: torch.Tensor,
    k_scale: float = 1.0,
    v_scale: float = 1.0,
) -> None:
    """k, v [T, Hkv, D] (row-strided views allowed; head dim contiguous) -> k_buffer[slots],
    v_buffer[slots] ([S, Hkv, D]). slots [T] int, distinct. Scales apply to fp8 buffers."""
    num_tokens, num_kv_heads, head_dim = k.shape
    assert v.shape == k.shape and slots.shape[0] == num_tokens
    assert k_buffer.shape[1:] == k.shape[1:] and v_buffer.shape[1:] == k.shape[1:]
    for t in (k, v, k_buffer, v_buffer):
        assert t.stride(2) == 1, "head dim must be contiguous"
    if num_tokens == 0:
        return
    block_h, block_d = triton.next_power_of_2(num_kv_heads), triton.next_power_of_2(head_dim)
    _store_kv_kernel[(num_tokens,)](
        k,
        v,
        k_buffer,
        v_buffer,
        slots,
        k.stride(0),
        k.stride(1),
        v.stride(0),
        v.stride(1),
        k_buffer.stride(0),
        k_buffer.stride(1),
        v_buffer.stride(0),
        v_buffer.stride(1),
        1.0 / k_scale,
        1.0 / v_scale,
        num_kv_heads,
        HEAD_DIM=head_dim,
        BLOCK_H=block_h,
        BLOCK_D=block_d,
        FP8=k_buffer.dtype == torch.float8_e4m3fn,
        num_warps=4 if block_h * block_d >= 1024 else 2,
    )
