"""Plain-PyTorch kernels (paged attention and the small fused ops): the CPU path and the oracle for Triton.

Layout conventions shared with the Triton kernels:
  * q, k, v, o: `[num_tokens, num_heads, head_dim]` (token-major, heads contiguous);
  * k_buffer, v_buffer: `[num_slots, num_kv_heads, head_dim]`, one row per KV slot;
  * req_to_token: `[num_rows, max_context_len]` int, KV slot of each position of a request;
  * GQA: query head h reads KV head `h // (num_heads // num_kv_heads)`.
All math runs in fp32 and the output is cast back to q's dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _gqa_expand(kv: torch.Tensor, num_heads: int) -> torch.Tensor:
    """[L, Hkv, D] -> [L, H, D] by repeating each KV head for its group of query heads."""
    group = num_heads // kv.shape[1]
    return kv if group == 1 else kv.repeat_interleave(group, dim=1)


def extend_attention(
    q: torch.Tensor,  # [T, H, D] queries of the new tokens of all requests, request-major
    k_extend: torch.Tensor,  # [T, Hkv, D] keys of the new tokens
    v_extend: torch.Tensor,  # [T, Hkv, D]
    k_buffer: torch.Tensor,  # [S, Hkv, D] cached keys
    v_buffer: torch.Tensor,
    req_to_token: torch.Tensor,  # [R, C]
    req_pool_indices: torch.Tensor,  # [B] row of each request
    prefix_lens: torch.Tensor,  # [B] cached tokens of each request (read from the buffers)
    extend_lens: torch.Tensor,  # [B] new tokens of each request (sum == T)
    sm_scale: float,
    k_scale: float = 1.0,  # cached K/V = stored value * scale (fp8 caches; 1 otherwise)
    v_scale: float = 1.0,
) -> torch.Tensor:
    """New tokens attend to their request's cached prefix (paged) and causally to themselves."""
    num_heads = q.shape[1]
    out = torch.empty_like(q)
    start = 0
    for row, prefix_len, extend_len in zip(
        req_pool_indices.tolist(), prefix_lens.tolist(), extend_lens.tolist()
    ):
        end = start + extend_len
        slots = req_to_token[row, :prefix_len]
        k = torch.cat([k_buffer[slots].float() * k_scale, k_extend[start:end].float()])
        v = torch.cat([v_buffer[slots].float() * v_scale, v_extend[start:end].float()])
        k, v = _gqa_expand(k, num_heads), _gqa_expand(v, num_heads)
        qr = q[start:end].float()
        scores = torch.einsum("thd,shd->hts", qr, k) * sm_scale  # [H, extend, prefix+extend]
        # query i (absolute position prefix_len + i) sees keys 0 .. prefix_len + i
        q_pos = torch.arange(extend_len, device=q.device)[:, None] + prefix_len
        k_pos = torch.arange(prefix_len + extend_len, device=q.device)[None, :]
        scores.masked_fill_(k_pos > q_pos, float("-inf"))
        probs = torch.softmax(scores, dim=-1)
        out[start:end] = torch.einsum("hts,shd->thd", probs, v).to(q.dtype)
        start = end
    return out


def decode_attention(
    q: torch.Tensor,  # [B, H, D] one query token per request
    k_buffer: torch.Tensor,  # [S, Hkv, D]; the current token's K/V are already stored
    v_buffer: torch.Tensor,
    req_to_token: torch.Tensor,  # [R, C]
    req_pool_indices: torch.Tensor,  # [B]
    seq_lens: torch.Tensor,  # [B] tokens to attend to, the current one included
    sm_scale: float,
    k_scale: float = 1.0,
    v_scale: float = 1.0,
) -> torch.Tensor:
    """One new token per request attends to all of its request's KV slots."""
    batch, num_heads, head_dim = q.shape
    if batch == 0:
        return torch.empty_like(q)
    max_len = int(seq_lens.max())
    positions = torch.arange(max_len, device=q.device)
    valid = positions[None, :] < seq_lens[:, None]  # [B, L]
    slots = req_to_token[req_pool_indices][:, :max_len] * valid  # padded positions read dummy slot 0
    k = k_buffer[slots].float() * k_scale  # [B, L, Hkv, D]
    v = v_buffer[slots].float() * v_scale
    group = num_heads // k.shape[2]
    qg = q.float().view(batch, k.shape[2], group, head_dim)  # heads of one KV group together
    scores = torch.einsum("bkgd,blkd->bkgl", qg, k) * sm_scale
    scores.masked_fill_(~valid[:, None, None, :], float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    out = torch.einsum("bkgl,blkd->bkgd", probs, v)
    return out.reshape(batch, num_heads, head_dim).to(q.dtype)


# ---------------------------------------------------------------------------------------------
# Small fused ops: the oracles of runtime/kernels/triton/{norm,activation,rotary,kv_store}.py.
# Each states where it rounds to the input dtype; everything between roundings is fp32.


def rmsnorm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x [T, hidden] -> weight * (x * rsqrt(mean(x^2) + eps)), output in x's dtype.

    Rounding (the Hugging Face / layers.RMSNorm order): statistics and the normalised row in
    fp32, the row rounded to x's dtype, then the gain product in fp32 of the two dtype values,
    rounded once -- bit-identical to eager `weight * normed.to(dtype)` for same-dtype weights."""
    dtype = x.dtype
    x32 = x.float()
    normed = (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)).to(dtype)
    return (weight.float() * normed.float()).to(dtype)


def fused_add_rmsnorm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Out of place: returns (rmsnorm(h), h) with h = x + residual, the sum exact in fp32 and
    rounded once to the dtype (what torch's half-precision add does)."""
    h = (x.float() + residual.float()).to(x.dtype)
    return rmsnorm(h, weight, eps), h


def silu_and_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """gate_up [T, 2I] -> silu(gate) * up [T, I], gate = first half. fp32 math, rounded once.
    (Eager `F.silu(gate) * up` in half precision rounds silu(gate) first; it can differ by an ulp.)"""
    gate, up = gate_up.float().chunk(2, dim=-1)
    return (F.silu(gate) * up).to(gate_up.dtype)


def apply_rotary(
    positions: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    cos_cache: torch.Tensor,
    sin_cache: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate-half RoPE, out of place: x * cos + rotate_half(x) * sin for q [T, H, D] and
    k [T, Hkv, D] with the fp32 tables [P, D] indexed by positions [T]. fp32 math, rounded once
    to each input's dtype (Hugging Face's eager rotary rounds cos/sin and each product to the
    dtype first, so half-precision results can differ from it by an ulp)."""
    cos = cos_cache[positions].float()[:, None, :]
    sin = sin_cache[positions].float()[:, None, :]

    def rotate(x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        half = x32.shape[-1] // 2
        rotated = torch.cat([-x32[..., half:], x32[..., :half]], dim=-1)
        return (x32 * cos + rotated * sin).to(x.dtype)

    return rotate(q), rotate(k)


def store_kv(
    k: torch.Tensor,
    v: torch.Tensor,
    k_buffer: torch.Tensor,
    v_buffer: torch.Tensor,
    slots: torch.Tensor,
    k_scale: float = 1.0,
    v_scale: float = 1.0,
) -> None:
    """In place: k_buffer[slots] = k / k_scale and v_buffer[slots] = v / v_scale, cast to the
    buffers' dtype (an fp8 buffer saturates at +-448 rather than overflowing to NaN)."""
    for x, buf, scale in ((k, k_buffer, k_scale), (v, v_buffer, v_scale)):
        x = x.float() / scale if scale != 1.0 or buf.dtype == FP8_DTYPE else x
        if buf.dtype == FP8_DTYPE:
            x = x.clamp(-FP8_MAX, FP8_MAX)
        buf[slots] = x.to(buf.dtype)


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
) -> tuple[torch.Tensor, torch.Tensor]:
    """`apply_rotary` then `store_kv` of the rotated k: the oracle of the fused Triton kernel
    (runtime/kernels/triton/rotary.py). Returns the rotated (q, k), out of place like
    apply_rotary; the buffers are written in place."""
    q, k = apply_rotary(positions, q, k, cos_cache, sin_cache)
    store_kv(k, v, k_buffer, v_buffer, slots, k_scale, v_scale)
    return q, k


# ---------------------------------------------------------------------------- FP8 (e4m3)
# Conventions shared with the Triton FP8 kernels and the checkpoint format of Hugging Face's
# "fp8" block quantisation (DeepSeek-V3 style):
#   * activations: per-token groups of `group_size` along K; x ~= q * scale per group;
#   * weights [N, K]: blocks of block_n x block_k; w ~= q * scale_inv per block (the
#     checkpoint's `weight_scale_inv`, shape [ceil(N / block_n), ceil(K / block_k)]);
#   * K and N need not be multiples of the group / block: the last group or block is partial.

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = float(torch.finfo(torch.float8_e4m3fn).max)  # 448
FP8_EPS = 1e-10  # an all-zero group gets a tiny scale, not a division by zero


def _pad_last(x: torch.Tensor, multiple: int) -> torch.Tensor:
    pad = -x.shape[-1] % multiple
    return F.pad(x, (0, pad)) if pad else x


def per_token_group_quant_fp8(x: torch.Tensor, group_size: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """x [..., K] -> (q e4m3 [..., K], scale fp32 [..., ceil(K / group_size)])."""
    k = x.shape[-1]
    groups = _pad_last(x.float(), group_size).unflatten(-1, (-1, group_size))
    scale = groups.abs().amax(dim=-1).clamp(min=FP8_EPS) / FP8_MAX
    q = (groups / scale[..., None]).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)
    return q.flatten(-2)[..., :k], scale


def block_quant_fp8(
    w: torch.Tensor, block_size: tuple[int, int] = (128, 128)
) -> tuple[torch.Tensor, torch.Tensor]:
    """w [N, K] -> (q e4m3 [N, K], scale_inv fp32 [ceil(N / bn), ceil(K / bk)]), w ~= q * scale_inv."""
    bn, bk = block_size
    n, k = w.shape
    padded = _pad_last(_pad_last(w.float(), bk).t(), bn).t()  # [N', K']
    blocks = padded.unflatten(0, (-1, bn)).unflatten(2, (-1, bk))  # [N'/bn, bn, K'/bk, bk]
    scale = blocks.abs().amax(dim=(1, 3)).clamp(min=FP8_EPS) / FP8_MAX
    q = (blocks / scale[:, None, :, None]).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)
    return q.flatten(2).flatten(0, 1)[:n, :k].contiguous(), scale


def block_dequant_fp8(
    q: torch.Tensor, scale_inv: torch.Tensor, block_size: tuple[int, int] = (128, 128)
) -> torch.Tensor:
    """The fp32 weights [N, K] that `q` and its block scales stand for."""
    bn, bk = block_size
    n, k = q.shape
    full = scale_inv.repeat_interleave(bn, dim=0).repeat_interleave(bk, dim=1)[:n, :k]
    return q.float() * full


def w8a8_block_fp8_matmul(
    a_q: torch.Tensor,
    a_scale: torch.Tensor,
    b_q: torch.Tensor,
    b_scale: torch.Tensor,
    block_size: tuple[int, int] = (128, 128),
    out_dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """a [M, K] (per-token-group scales, group = block_k) @ b [N, K]^T (block scales) -> [M, N],
    computed in fp32 on the dequantised operands."""
    bk = block_size[1]
    k = a_q.shape[-1]
    a = a_q.float() * a_scale.repeat_interleave(bk, dim=-1)[..., :k]
    return (a @ block_dequant_fp8(b_q, b_scale, block_size).t()).to(out_dtype)


def w8a16_block_fp8_matmul(
    x: torch.Tensor,
    w_q: torch.Tensor,
    w_scale_inv: torch.Tensor,
    block_size: tuple[int, int] = (128, 128),
    out_dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """x [M, K] unquantised @ b [N, K]^T (block scales) -> [M, N]: the fp32 product of x with the
    dequantised weight (the oracle of runtime/kernels/triton/fp8_gemv.py)."""
    return (x.float() @ block_dequant_fp8(w_q, w_scale_inv, block_size).t()).to(out_dtype)


def fp8_block_linear(
    x: torch.Tensor,
    w_q: torch.Tensor,
    w_scale_inv: torch.Tensor,
    bias: torch.Tensor | None,
    block_size: tuple[int, int] = (128, 128),
    quantize_x: bool = True,
) -> torch.Tensor:
    """y = x @ w^T (+ bias) the way the FP8 path computes it: x quantised per token group
    (group = block_k) and the product of the quantised operands (W8A8), or with quantize_x=False
    x as it is times the dequantised weight (W8A16, the small-M path); output in x's dtype."""
    x2 = x.reshape(-1, x.shape[-1])
    if quantize_x:
        a_q, a_scale = per_token_group_quant_fp8(x2, block_size[1])
        y = w8a8_block_fp8_matmul(a_q, a_scale, w_q, w_scale_inv, block_size, torch.float32)
    else:
        y = w8a16_block_fp8_matmul(x2, w_q, w_scale_inv, block_size, torch.float32)
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype).reshape(*x.shape[:-1], w_q.shape[0])


# ---------------------------------------------------------------------- mixture of experts
# The oracle of runtime/kernels/triton/fused_moe.py and the CPU path of the sparse MoE block.
# Expert weights are stacked: w13 [E, 2I, H] (gate rows, then up rows, per expert) and w2
# [E, H, I]; fp8 experts carry block scales [E, ceil(2I / bn), ceil(H / bk)] and
# [E, ceil(H / bn), ceil(I / bk)] in the layout of `block_quant_fp8` per expert.


def moe_topk(router_logits: torch.Tensor, top_k: int, renormalize: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax routing: router_logits [T, E] -> (weights fp32 [T, top_k], expert ids int32 [T, top_k]).
    The softmax is in fp32 (as HF's routers), the top-k probabilities rescaled to sum to 1 when
    `renormalize` (Mixtral always, Qwen's `norm_topk_prob`). The weights stay fp32: HF's Qwen
    routers round them to the model dtype first, which in fp32 is the same."""
    probs = torch.softmax(router_logits.float(), dim=-1)
    weights, ids = torch.topk(probs, top_k, dim=-1)
    if renormalize:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    return weights, ids.to(torch.int32)


def _dequant_rows(x: torch.Tensor, group: int | None) -> torch.Tensor:
    """x in fp32, or with `group` the fp32 values its per-token-group e4m3 quantisation stands for
    (the W8A8 path's activations)."""
    if group is None:
        return x.float()
    q, scale = per_token_group_quant_fp8(x, group)
    return q.float() * scale.repeat_interleave(group, dim=-1)[..., : x.shape[-1]]


def fused_moe(
    x: torch.Tensor,
    w13: torch.Tensor,
    w2: torch.Tensor,
    topk_weights: torch.Tensor,
    topk_ids: torch.Tensor,
    w13_scale: torch.Tensor | None = None,
    w2_scale: torch.Tensor | None = None,
    block_size: tuple[int, int] | None = None,
) -> torch.Tensor:
    """sum_k topk_weights[t, k] * expert_{topk_ids[t, k]}(x[t]) -> [T, H] in x's dtype, where
    expert_e(x) = w2[e] @ (silu(w13[e, :I] @ x) * (w13[e, I:] @ x)).

    Rounding follows the Triton kernel: each product in fp32, the gated activation rounded to x's
    dtype, the down product times its routing weight rounded to x's dtype per (token, k), and the
    top-k sum in fp32 rounded once. With fp8 weights (scales given) both inputs are quantised per
    token and group of block_k (W8A8, as the dense fp8 path) and the products use the dequantised
    operands."""
    t, hidden = x.shape
    top_k = topk_ids.shape[1]
    fp8 = w13_scale is not None
    group = block_size[1] if fp8 else None
    inter = w2.shape[2]
    out = torch.zeros(t * top_k, hidden, dtype=torch.float32, device=x.device)
    if t == 0:
        return out.view(0, hidden).to(x.dtype)
    xa = _dequant_rows(x, group)
    flat_ids = topk_ids.reshape(-1).long()
    flat_w = topk_weights.reshape(-1).float()
    for e in flat_ids.unique().tolist():  # only the experts that received tokens
        rows = (flat_ids == e).nonzero().squeeze(1)  # flat (token * top_k + k) indices
        w_gu = block_dequant_fp8(w13[e], w13_scale[e], block_size) if fp8 else w13[e].float()
        w_dn = block_dequant_fp8(w2[e], w2_scale[e], block_size) if fp8 else w2[e].float()
        gate_up = xa[rows // top_k] @ w_gu.t()
        h = (F.silu(gate_up[:, :inter]) * gate_up[:, inter:]).to(x.dtype)
        y = (_dequant_rows(h, group) @ w_dn.t()) * flat_w[rows, None]
        out[rows] = y.to(x.dtype).float()
    return out.view(t, top_k, hidden).sum(dim=1).to(x.dtype)
