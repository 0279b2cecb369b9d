"""Rotate-half (NeoX / Hugging Face Llama) rotary embedding of q and k, in place, one launch.

For each token t at position p and each head: with x1 = x[:D/2], x2 = x[D/2:],
    x'[:D/2] = x1 * cos[p, :D/2] - x2 * sin[p, :D/2]
    x'[D/2:] = x2 * cos[p, D/2:] + x1 * sin[p, D/2:]
which is x * cos + rotate_half(x) * sin. The math is fp32 with the fp32 cos/sin tables and is
rounded once to x's dtype. The eager path (runtime/layers/decoder_blocks.py RotaryEmbedding, like Hugging
Face) first rounds cos/sin to the dtype and rounds each product and the sum, so half-precision
results can differ from eager in the last bit; fp32 agrees to rounding.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


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
    a, b = x1.to(tl.float32), x2.to(tl.float32)
    tl.store(ptr1, (a * cos1[None, :] - b * sin1[None, :]).to(x1.dtype), mask=mask)
    tl.store(ptr1 + HALF, (b * cos2[None, :] + a * sin2[None, :]).to(x1.dtype), mask=mask)


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
    offs_d = tl.arange(0, BLOCK_HALF)
    mask_d = offs_d < HALF
    cos1 = tl.load(cos_ptr + pos * stride_cos + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    cos2 = tl.load(cos_ptr + pos * stride_cos + HALF + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    sin1 = tl.load(sin_ptr + pos * stride_sin + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    sin2 = tl.load(sin_ptr + pos * stride_sin + HALF + offs_d, mask=mask_d, other=0.0).to(tl.float32)
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
