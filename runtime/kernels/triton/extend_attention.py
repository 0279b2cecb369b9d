"""Extend (prefill over a cached prefix) attention for a batch of variable-length requests.

Grid `(H, cdiv(max_extend_len, BLOCK_M), B)`: a program takes one query head and one BLOCK_M
tile of one request's new tokens. It first attends to the request's cached prefix, gathering
K/V from the pool through `req_to_token` (every prefix key is visible), then causally to the
request's own new tokens, read contiguously from k_extend/v_extend. Query heads vary fastest in
the grid so the heads of one KV group, which read the same K/V tiles, run side by side and share
them through L2; query tiles are issued last-first so the longest causal rows start early.

Online softmax in fp32 (base 2, the scale folded into one multiply); QK^T and PV on `tl.dot`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl


@dataclass(frozen=True)
class ExtendConfig:
    block_m: int  # query rows per program
    block_n: int  # keys per inner-loop tile; must divide block_m
    num_warps: int
    num_stages: int


def choose_extend_config(head_dim: int, dtype: torch.dtype = torch.bfloat16) -> ExtendConfig:
    """Starting-point tiles (Hopper numbers; see benchmarks/bench_kernels.py for tuning).
    Register budget: the fp32 accumulator is BLOCK_M x BLOCK_D, so wide heads get fewer rows.
    fp32 inputs run exact fp32 dots on the CUDA cores (tests and parity runs, not speed), where
    big tiles only spill registers and slow the compile."""
    block_d = triton.next_power_of_2(head_dim)
    if dtype == torch.float32:
        return ExtendConfig(64, 32, 4, 1)
    # H200, triton 3.6, D=128, H=32, Hkv=8 (benchmarks/bench_kernels.py), TFLOP/s for an
    # 8192-token causal prefill / 4096 new tokens over a 4096 prefix:
    #   (128, 128, 8, 3) 435 / 364;  (128, 64, 8, 3) 440 / 329;  (128, 64, 8, 2) 371 / 237;
    #   (128, 64, 8, 4) 430 / 326;  (64, 64, 4, 3) 406 / 351;  torch SDPA (no prefix) 547.
    # D=64 has not been measured: the same shape with half the warps is a guess.
    if block_d <= 64:
        return ExtendConfig(128, 64, 4, 3)
    if block_d <= 128:
        return ExtendConfig(128, 128, 8, 3)
    return ExtendConfig(64, 32, 8, 2)


@triton.jit
def _attend_tile(
    acc, m_i, l_i, q, k, v, mask, qk_scale, APPLY_MASK: tl.constexpr, DOT_PRECISION: tl.constexpr
):
    """One online-softmax step over a [BLOCK_N] key tile. Invariant (held by the callers):
    every query row has seen at least one visible key by the end of its first tile, so m_i is
    finite afterwards and `exp2(-inf - m)` below evaluates to 0, never NaN."""
    qk = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale
    if APPLY_MASK:
        qk = tl.where(mask, qk, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(qk, 1))
    alpha = tl.exp2(m_i - m_new)
    p = tl.exp2(qk - m_new[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
    return acc, m_new, l_i


# Triton specialises integer arguments on their value (== 1, divisible by 16) and compiles a
# new variant for each class; the tile count changes with every batch, so a variant first
# met while serving would stall that step for a compile. It is never specialised.
@triton.jit(do_not_specialize=["NUM_M_TILES"])
def _extend_kernel(
    q_ptr,
    k_ext_ptr,
    v_ext_ptr,
    k_buf_ptr,
    v_buf_ptr,
    out_ptr,
    req_to_token_ptr,
    req_pool_ptr,
    prefix_lens_ptr,
    extend_lens_ptr,
    start_loc_ptr,
    qk_scale,  # sm_scale * log2(e)
    k_scale,
    v_scale,  # cached prefix K/V = stored * scale (fp8 caches)
    stride_qt,
    stride_qh,
    stride_ket,
    stride_keh,
    stride_vet,
    stride_veh,
    stride_kbt,
    stride_kbh,
    stride_vbt,
    stride_vbh,
    stride_ot,
    stride_oh,
    stride_r2t,
    NUM_M_TILES,  # cdiv(max_extend_len, BLOCK_M): the grid's second axis
    GROUP: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    KV_FP8: tl.constexpr,  # the cached prefix is e4m3: dequantised to q's dtype on load
):
    h = tl.program_id(0)
    m_tile = NUM_M_TILES - 1 - tl.program_id(1)
    b = tl.program_id(2)
    ext_len = tl.load(extend_lens_ptr + b).to(tl.int32)
    if m_tile * BLOCK_M >= ext_len:
        return
    prefix_len = tl.load(prefix_lens_ptr + b).to(tl.int32)
    start = tl.load(start_loc_ptr + b).to(tl.int64)  # first row of this request in q/k/v_extend
    req_row = tl.load(req_pool_ptr + b).to(tl.int64)
    kv_head = h // GROUP

    offs_m = m_tile * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_m = offs_m < ext_len
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < HEAD_DIM
    rows = start + offs_m  # int64
    q = tl.load(
        q_ptr + rows[:, None] * stride_qt + h * stride_qh + offs_d[None, :],
        mask=mask_m[:, None] & mask_d[None, :],
        other=0.0,
    )
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)

    # -- cached prefix: all keys visible; only the last tile is ragged. Prefix key 0 is seen by
    # every row in the first tile (when prefix_len > 0), which keeps the _attend_tile invariant.
    tok_ptr = req_to_token_ptr + req_row * stride_r2t
    for n0 in range(0, prefix_len, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        mask_n = offs_n < prefix_len
        slots = tl.load(tok_ptr + offs_n, mask=mask_n, other=0).to(tl.int64)
        kv_mask = mask_n[:, None] & mask_d[None, :]
        k = tl.load(
            k_buf_ptr + slots[:, None] * stride_kbt + kv_head * stride_kbh + offs_d[None, :],
            mask=kv_mask,
            other=0.0,
        )
        v = tl.load(
            v_buf_ptr + slots[:, None] * stride_vbt + kv_head * stride_vbh + offs_d[None, :],
            mask=kv_mask,
            other=0.0,
        )
        if KV_FP8:
            k = (k.to(tl.float32) * k_scale).to(q.dtype)
            v = (v.to(tl.float32) * v_scale).to(q.dtype)
        acc, m_i, l_i = _attend_tile(acc, m_i, l_i, q, k, v, mask_n[None, :], qk_scale, True, DOT_PRECISION)

    # -- new tokens, causal. Key tiles wholly before this query tile need no mask (their keys
    # are < m_tile * BLOCK_M <= every row's position, and < ext_len); BLOCK_M % BLOCK_N == 0
    # makes that boundary a tile boundary. Tiles past the query tile's last row are skipped.
    # Extend key 0 is visible to every row, so the invariant holds when there is no prefix.
    diag_start = m_tile * BLOCK_M
    for n0 in range(0, diag_start, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        kv_rows = start + offs_n
        k = tl.load(
            k_ext_ptr + kv_rows[:, None] * stride_ket + kv_head * stride_keh + offs_d[None, :],
            mask=mask_d[None, :],
            other=0.0,
        )
        v = tl.load(
            v_ext_ptr + kv_rows[:, None] * stride_vet + kv_head * stride_veh + offs_d[None, :],
            mask=mask_d[None, :],
            other=0.0,
        )
        acc, m_i, l_i = _attend_tile(acc, m_i, l_i, q, k, v, mask_d[None, :], qk_scale, False, DOT_PRECISION)
    diag_end = tl.minimum(ext_len, diag_start + BLOCK_M)
    for n0 in range(diag_start, diag_end, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        mask_n = offs_n < ext_len
        kv_rows = start + offs_n
        kv_mask = mask_n[:, None] & mask_d[None, :]
        k = tl.load(
            k_ext_ptr + kv_rows[:, None] * stride_ket + kv_head * stride_keh + offs_d[None, :],
            mask=kv_mask,
            other=0.0,
        )
        v = tl.load(
            v_ext_ptr + kv_rows[:, None] * stride_vet + kv_head * stride_veh + offs_d[None, :],
            mask=kv_mask,
            other=0.0,
        )
        causal = (offs_n[None, :] <= offs_m[:, None]) & mask_n[None, :]
        acc, m_i, l_i = _attend_tile(acc, m_i, l_i, q, k, v, causal, qk_scale, True, DOT_PRECISION)

    out = acc / l_i[:, None]
    tl.store(
        out_ptr + rows[:, None] * stride_ot + h * stride_oh + offs_d[None, :],
        out.to(out_ptr.dtype.element_ty),
        mask=mask_m[:, None] & mask_d[None, :],
    )


def extend_attention(
    q: torch.Tensor,
    k_extend: torch.Tensor,
    v_extend: torch.Tensor,
    k_buffer: torch.Tensor,
    v_buffer: torch.Tensor,
    req_to_token: torch.Tensor,
    req_pool_indices: torch.Tensor,
    prefix_lens: torch.Tensor,
    extend_lens: torch.Tensor,
    sm_scale: float,
    *,
    extend_start_loc: torch.Tensor | None = None,
    max_extend_len: int | None = None,
    out: torch.Tensor | None = None,
    config: ExtendConfig | None = None,
    k_scale: float = 1.0,
    v_scale: float = 1.0,
) -> torch.Tensor:
    """Same result as `reference.extend_attention`.

    q [T, H, D] request-major; k_extend/v_extend [T, Hkv, D] (the new tokens' K/V; they may
    already be in the pool too, but are read from here); k_buffer/v_buffer [S, Hkv, D];
    req_to_token [R, C] int32; req_pool_indices, prefix_lens, extend_lens [B].
    extend_start_loc [B] (first row of each request in q; default: exclusive cumsum of
    extend_lens, computed on the device) and max_extend_len (default: read from extend_lens,
    a host sync) may be passed when the caller already has them. Rows of q/k/v may be strided
    (e.g. views into a fused qkv output); the head dim must be contiguous.
    """
    num_tokens, num_heads, head_dim = q.shape
    num_kv_heads = k_extend.shape[1]
    batch = extend_lens.shape[0]
    assert num_heads % num_kv_heads == 0 and k_buffer.shape[1] == num_kv_heads
    for t in (q, k_extend, v_extend, k_buffer, v_buffer):
        assert t.stride(-1) == 1, "head dim must be contiguous"
    assert req_to_token.stride(1) == 1
    if out is None:
        out = torch.empty_like(q)
    assert out.stride(-1) == 1
    if batch == 0 or num_tokens == 0:
        return out
    if extend_start_loc is None:
        extend_start_loc = torch.cumsum(extend_lens, 0) - extend_lens
    if max_extend_len is None:
        max_extend_len = int(extend_lens.max())
    if max_extend_len == 0:
        return out
    cfg = config or choose_extend_config(head_dim, q.dtype)
    assert cfg.block_m % cfg.block_n == 0, "BLOCK_N must divide BLOCK_M (causal tile boundary)"
    num_m_tiles = triton.cdiv(max_extend_len, cfg.block_m)
    precision = "ieee" if q.dtype == torch.float32 else "tf32"
    _extend_kernel[(num_heads, num_m_tiles, batch)](
        q,
        k_extend,
        v_extend,
        k_buffer,
        v_buffer,
        out,
        req_to_token,
        req_pool_indices,
        prefix_lens,
        extend_lens,
        extend_start_loc,
        sm_scale * 1.4426950408889634,
        k_scale,
        v_scale,
        q.stride(0),
        q.stride(1),
        k_extend.stride(0),
        k_extend.stride(1),
        v_extend.stride(0),
        v_extend.stride(1),
        k_buffer.stride(0),
        k_buffer.stride(1),
        v_buffer.stride(0),
        v_buffer.stride(1),
        out.stride(0),
        out.stride(1),
        req_to_token.stride(0),
        num_m_tiles,
        GROUP=num_heads // num_kv_heads,
        HEAD_DIM=head_dim,
        BLOCK_D=triton.next_power_of_2(head_dim),
        BLOCK_M=cfg.block_m,
        BLOCK_N=cfg.block_n,
        DOT_PRECISION=precision,
        KV_FP8=k_buffer.dtype == torch.float8_e4m3fn,
        num_warps=cfg.num_warps,
        num_stages=cfg.num_stages,
    )
    return out
