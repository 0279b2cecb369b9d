"""Rotate-half (NeoX / Hugging Face Llama) rotary embedding of q and k, in place, one launch.

For each token t at position p and each head: with x1 = x[:D/2], x2 = x[D/2:],
    x'[:D/2] = x1 * cos[p, :D/2] - x2 * sin[p, :D/2]
    x'[D/2:] = x2 * cos[p, D/2:] + x1 * sin[p, D/2:]
which is x * cos + rotate_half(x) * sin. The math is fp32 with the fp32 cos/sin tables and is
rounded once to x's dtype. Hugging Face's eager rotary first rounds cos/sin to the dtype and
rounds each product and the sum, so half-precision results can differ from it in the last bit;
fp32 agrees to rounding.

`rotary_and_store_kv` fuses the rotation with the K/V store of kv_store.py (one launch per
layer instead of two; at batch-1 decode the launches, not the bytes, are the cost). It shares
the rotation (`_rope_halves`) and the pool cast (`kv_store.store_pool_rows`) with the two
separate kernels, so it writes the same bits they do.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from radixlm.runtime.kernels.triton import pdl
from radixlm.runtime.kernels.triton.kv_store import store_pool_rows


@triton.jit
def _rope_halves(x1, x2, cos1, cos2, sin1, sin2):
    """The rotated halves of x = [x1, x2]: fp32 math, rounded once to x's dtype. Every kernel
    here rotates through this one expression, so the fused rotary + KV store writes the same
    bits as the rotary kernel followed by the store kernel."""
    a, b = x1.to(tl.float32), x2.to(tl.float32)
    r1 = (a * cos1[None, :] - b * sin1[None, :]).to(x1.dtype)
    r2 = (b * cos2[None, :] + a * sin2[None, :]).to(x1.dtype)
    return r1, r2


@triton.jit
def _load_tables(cos_ptr, sin_ptr, pos, stride_cos, stride_sin, HALF: tl.constexpr, BLOCK_HALF: tl.constexpr):
    """Both halves of the cos and sin rows of position `pos`, in fp32 (lanes >= HALF are 0)."""
    offs_d = tl.arange(0, BLOCK_HALF)
    mask_d = offs_d < HALF
    cos1 = tl.load(cos_ptr + pos * stride_cos + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    cos2 = tl.load(cos_ptr + pos * stride_cos + HALF + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    sin1 = tl.load(sin_ptr + pos * stride_sin + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    sin2 = tl.load(sin_ptr + pos * stride_sin + HALF + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    return cos1, cos2, sin1, sin2


@triton.jit
def _rotate_heads(
    x_ptr,
    stride_h,
    num_heads,
    cos1,
    cos2,
    sin1,
    sin2,
    HALF: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_HALF: tl.constexpr,
):
    """Rotates heads [0, num_heads) of one token (x_ptr at its first element), in place."""
    offs_h = tl.arange(0, BLOCK_H)
    offs_d = tl.arange(0, BLOCK_HALF)
    mask = (offs_h[:, None] < num_heads) & (offs_d[None, :] < HALF)
    ptr1 = x_ptr + offs_h[:, None] * stride_h + offs_d[None, :]
    x1 = tl.load(ptr1, mask=mask, other=0.0)
    x2 = tl.load(ptr1 + HALF, mask=mask, other=0.0)
    r1, r2 = _rope_halves(x1, x2, cos1, cos2, sin1, sin2)
    tl.store(ptr1, r1, mask=mask)
    tl.store(ptr1 + HALF, r2, mask=mask)


@triton.jit
def _rotary_kernel(
    pos_ptr,
    q_ptr,
    k_ptr,
    cos_ptr,
    sin_ptr,
    stride_qt,
    stride_qh,
    stride_kt,
    stride_kh,
    stride_cos,
    stride_sin,
    num_q_heads,
    num_k_heads,
    HALF: tl.constexpr,
    BLOCK_HQ: tl.constexpr,
    BLOCK_HK: tl.constexpr,
    BLOCK_HALF: tl.constexpr,
):
    t = tl.program_id(0).to(tl.int64)
    pos = tl.load(pos_ptr + t).to(tl.int64)
    cos1, cos2, sin1, sin2 = _load_tables(cos_ptr, sin_ptr, pos, stride_cos, stride_sin, HALF, BLOCK_HALF)
    _rotate_heads(
        q_ptr + t * stride_qt, stride_qh, num_q_heads, cos1, cos2, sin1, sin2, HALF, BLOCK_HQ, BLOCK_HALF
    )
    _rotate_heads(
        k_ptr + t * stride_kt, stride_kh, num_k_heads, cos1, cos2, sin1, sin2, HALF, BLOCK_HK, BLOCK_HALF
    )


def apply_rotary(
    positions: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    cos_cache: torch.Tensor,
    sin_cache: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """In place on q [T, H, D] and k [T, Hkv, D] (row-strided views allowed; the head dim must be
    contiguous). positions [T] int; cos_cache/sin_cache [P, D] (fp32). Returns (q, k)."""
    num_tokens, num_q_heads, head_dim = q.shape
    num_k_heads = k.shape[1]
    assert k.shape[0] == num_tokens and k.shape[2] == head_dim and head_dim % 2 == 0
    assert q.stride(2) == 1 and k.stride(2) == 1 and q.dtype == k.dtype
    assert cos_cache.shape[1] == head_dim and cos_cache.stride(1) == 1 and sin_cache.stride(1) == 1
    if num_tokens == 0:
        return q, k
    half = head_dim // 2
    _rotary_kernel[(num_tokens,)](
        positions,
        q,
        k,
        cos_cache,
        sin_cache,
        q.stride(0),
        q.stride(1),
        k.stride(0),
        k.stride(1),
        cos_cache.stride(0),
        sin_cache.stride(0),
        num_q_heads,
        num_k_heads,
        HALF=half,
        BLOCK_HQ=triton.next_power_of_2(num_q_heads),
        BLOCK_HK=triton.next_power_of_2(num_k_heads),
        BLOCK_HALF=triton.next_power_of_2(half),
        num_warps=4,
    )
    return q, k


@triton.jit
def _rotary_store_kv_kernel(
    pos_ptr,
    slots_ptr,
    q_ptr,
    k_ptr,
    v_ptr,
    cos_ptr,
    sin_ptr,
    kb_ptr,
    vb_ptr,
    stride_qt,
    stride_qh,
    stride_kt,
    stride_kh,
    stride_vt,
    stride_vh,
    stride_cos,
    stride_sin,
    stride_kbt,
    stride_kbh,
    stride_vbt,
    stride_vbh,
    inv_k_scale,
    inv_v_scale,
    num_q_heads,
    num_kv_heads,
    HALF: tl.constexpr,
    BLOCK_HQ: tl.constexpr,
    BLOCK_HK: tl.constexpr,
    BLOCK_HALF: tl.constexpr,
    FP8: tl.constexpr,
    KEEP_K: tl.constexpr,
    USE_PDL: tl.constexpr,  # launched with PDL: nothing read or written before the wait (pdl.py)
):
    """Program t: token t's q heads rotated in place, its k heads rotated (rounded to k's dtype
    as the rotary kernel stores them) and cast into pool row slots[t], and its v heads copied
    there; with KEEP_K also the rotated k written back over k. Everything is read before it is
    written and only row t of q/k/v and row slots[t] of the pool are touched (slots are
    distinct within a batch), so programs never race."""
    if USE_PDL:
        tl.extra.cuda.gdc_wait()
        tl.extra.cuda.gdc_launch_dependents()
    t = tl.program_id(0).to(tl.int64)
    pos = tl.load(pos_ptr + t).to(tl.int64)
    slot = tl.load(slots_ptr + t).to(tl.int64)
    cos1, cos2, sin1, sin2 = _load_tables(cos_ptr, sin_ptr, pos, stride_cos, stride_sin, HALF, BLOCK_HALF)
    _rotate_heads(
        q_ptr + t * stride_qt, stride_qh, num_q_heads, cos1, cos2, sin1, sin2, HALF, BLOCK_HQ, BLOCK_HALF
    )
    # k and v as [heads, half] tiles, first and second halves of the head dim apart (D = 2 * HALF)
    offs_h = tl.arange(0, BLOCK_HK)
    offs_d = tl.arange(0, BLOCK_HALF)
    mask = (offs_h[:, None] < num_kv_heads) & (offs_d[None, :] < HALF)
    k_row = k_ptr + t * stride_kt + offs_h[:, None] * stride_kh + offs_d[None, :]
    k1 = tl.load(k_row, mask=mask, other=0.0)
    k2 = tl.load(k_row + HALF, mask=mask, other=0.0)
    r1, r2 = _rope_halves(k1, k2, cos1, cos2, sin1, sin2)
    if KEEP_K:
        tl.store(k_row, r1, mask=mask)
        tl.store(k_row + HALF, r2, mask=mask)
    kb_row = kb_ptr + slot * stride_kbt + offs_h[:, None] * stride_kbh + offs_d[None, :]
    store_pool_rows(kb_row, r1, inv_k_scale, mask, FP8)
    store_pool_rows(kb_row + HALF, r2, inv_k_scale, mask, FP8)
    v_row = v_ptr + t * stride_vt + offs_h[:, None] * stride_vh + offs_d[None, :]
    vb_row = vb_ptr + slot * stride_vbt + offs_h[:, None] * stride_vbh + offs_d[None, :]
    store_pool_rows(vb_row, tl.load(v_row, mask=mask), inv_v_scale, mask, FP8)
    store_pool_rows(vb_row + HALF, tl.load(v_row + HALF, mask=mask), inv_v_scale, mask, FP8)


def rotary_and_store_kv(
    positions: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cos_cache: torch.Tensor,
    sin_cache: torch.Tensor,
    k_buffer: torch.Tensor,
    v_buffer: torch.Tensor,
    slots: torch.Tensor,
    k_scale: float = 1.0,
    v_scale: float = 1.0,
    keep_k: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`apply_rotary(positions, q, k, cos_cache, sin_cache)` then
    `kv_store.store_kv(k, v, k_buffer, v_buffer, slots, k_scale, v_scale)` in one launch, with
    the same bits in q, the pool and (keep_k) k. q [T, H, D] is rotated in place; k [T, Hkv, D]
    too when keep_k, else it is left as it came (a decode step reads K only from the pool) and
    None is returned for it. Shapes and layouts as for the two functions. Returns (q, k or None).
    No host sync and no allocation: safe inside CUDA graph capture."""
    num_tokens, num_q_heads, head_dim = q.shape
    num_kv_heads = k.shape[1]
    assert k.shape == (num_tokens, num_kv_heads, head_dim) and v.shape == k.shape and head_dim % 2 == 0
    assert positions.shape[0] == num_tokens and slots.shape[0] == num_tokens and q.dtype == k.dtype
    assert k_buffer.shape[1:] == k.shape[1:] and v_buffer.shape[1:] == k.shape[1:]
    assert cos_cache.shape[1] == head_dim and cos_cache.stride(1) == 1 and sin_cache.stride(1) == 1
    for x in (q, k, v, k_buffer, v_buffer):
        assert x.stride(2) == 1, "head dim must be contiguous"
    if num_tokens == 0:
        return q, (k if keep_k else None)
    half = head_dim // 2
    _rotary_store_kv_kernel[(num_tokens,)](
        positions,
        slots,
        q,
        k,
        v,
        cos_cache,
        sin_cache,
        k_buffer,
        v_buffer,
        q.stride(0),
        q.stride(1),
        k.stride(0),
        k.stride(1),
        v.stride(0),
        v.stride(1),
        cos_cache.stride(0),
        sin_cache.stride(0),
        k_buffer.stride(0),
        k_buffer.stride(1),
        v_buffer.stride(0),
        v_buffer.stride(1),
        1.0 / k_scale,
        1.0 / v_scale,
        num_q_heads,
        num_kv_heads,
        HALF=half,
        BLOCK_HQ=triton.next_power_of_2(num_q_heads),
        BLOCK_HK=triton.next_power_of_2(num_kv_heads),
        BLOCK_HALF=triton.next_power_of_2(half),
        FP8=k_buffer.dtype == torch.float8_e4m3fn,
        KEEP_K=keep_k,
        num_warps=4,
        **pdl.launch_options(q, num_tokens),
    )
    return q, (k if keep_k else None)
