"""Flash-decoding over the paged KV pool: one query token per request, KV split across programs.

Stage 1 (grid `(B, Hkv * progs_per_kv_head, num_kv_splits)`): a program takes the query heads
of one KV group (padded to 16 rows so QK^T and PV run on tensor cores through `tl.dot`) and one
contiguous split of the request's positions, gathers K/V through `req_to_token`, and writes an
online-softmax partial result: the normalised partial output `[B, H, split, D]` and its
log-sum-exp `[B, H, split]` (natural log), both fp32.
Stage 2 (grid `(B, H)`): merges the splits, weighting each by `exp(lse - max lse)`. With
num_kv_splits == 1 stage 1 writes the final output itself and stage 2 is not launched.

Merging in stage 1 instead (the program that takes a split's last ticket merges its heads, as
the split-K GEMV reduces, gemv_kernel.py) was measured at batch-1 decode on the H100 and dropped:
fp8 8B 278.3 tok/s against 288.5 with stage 2, and 279.0 against 289.2 with the merge looping
over the splits (benchmarks/results/decode-floor-gpu-h100-2026-12-07-third.md).

CUDA-graph safety: the grid depends only on B, H and `num_kv_splits`; every per-request length
(and so each split's range) is read on the device inside the kernel. Nothing syncs with the host.
A split with no tokens writes lse = -inf and a zero partial output; stage 2 gives it weight 0.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from radixlm.runtime.kernels.triton import pdl

# Tokens per inner-loop tile of stage 1 (and the granularity of a split's length). With 4 warps
# and 2 stages it was within 1% of the best of six tile configs at B=32/seq 512 and B=64/seq 2048
# (H200, bench_kernels.py); 128 would be 16% faster at B=1/seq 8192 but 13% slower at B=64.
DECODE_BLOCK_N = 64
# Query-head rows per program: tl.dot needs M >= 16, so smaller groups are padded up to it.
BLOCK_H = 16
MAX_KV_SPLITS = 16
# Fewer tokens per split than this buys no parallelism worth stage 2's extra traffic. Measured
# (H200, Llama-3.1-8B shapes, CUDA-graph replays): B=1, seq 512 ran 12.9 us with 4 splits and
# 11.0 with 8; elsewhere in B in {1, 32, 64} x seq in {512, 2048, 8192} the choice below was
# within 2% of the best split count tried (1, 2, 4, 8, 16).
MIN_TOKENS_PER_SPLIT = 64


def choose_num_kv_splits(batch_size: int, num_kv_heads: int, max_seq_len_hint: int, num_sms: int) -> int:
    """Host heuristic for `num_kv_splits`: enough stage-1 programs to fill the SMs about twice,
    at most MAX_KV_SPLITS, and no more splits than the longest sequence has MIN_TOKENS_PER_SPLIT
    chunks. For CUDA graphs, call it with the graph's batch size and the largest sequence the
    graph may see (the choice is frozen into the graph; any seq_lens stay correct)."""
    programs_per_split = max(1, batch_size * num_kv_heads)
    want = triton.cdiv(2 * max(1, num_sms), programs_per_split)
    by_length = triton.cdiv(max(1, max_seq_len_hint), MIN_TOKENS_PER_SPLIT)
    return int(max(1, min(want, by_length, MAX_KV_SPLITS)))


# num_splits is never specialised: a split count first seen while serving must not compile a
# new variant (see extend_attention.py)
@triton.jit(do_not_specialize=["num_splits"])
def _decode_stage1_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    req_to_token_ptr,
    req_pool_ptr,
    seq_lens_ptr,
    part_out_ptr,
    part_lse_ptr,
    qk_scale,  # sm_scale * log2(e): the softmax runs in base 2
    k_scale,
    v_scale,  # cached K/V = stored * scale (fp8 caches)
    stride_qb,
    stride_qh,
    stride_kt,
    stride_kh,
    stride_vt,
    stride_vh,
    stride_r2t,
    stride_pb,
    stride_ph,
    stride_ps,
    stride_lb,
    stride_lh,
    num_splits,  # a runtime value: no recompile per split count
    GROUP: tl.constexpr,  # query heads per KV head
    HEADS_PER_PROG: tl.constexpr,  # min(GROUP, BLOCK_H): valid rows of a program
    PROGS_PER_KV: tl.constexpr,  # cdiv(GROUP, HEADS_PER_PROG)
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,  # next power of two >= HEAD_DIM
    BLOCK_H: tl.constexpr,
    BLOCK_N: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    FINAL: tl.constexpr,  # one split: part_out_ptr is the output itself (q's dtype), no lse
    KV_FP8: tl.constexpr,  # K/V stored as e4m3: dequantised to q's dtype on load
    USE_PDL: tl.constexpr,  # launched with PDL: wait for the kernel ahead first (pdl.py)
):
    if USE_PDL:
        tl.extra.cuda.gdc_wait()
        tl.extra.cuda.gdc_launch_dependents()
    b = tl.program_id(0)
    kv_head = tl.program_id(1) // PROGS_PER_KV
    sub = tl.program_id(1) % PROGS_PER_KV
    split = tl.program_id(2)

    rows = tl.arange(0, BLOCK_H)
    heads = kv_head * GROUP + sub * HEADS_PER_PROG + rows
    mask_h = (rows < HEADS_PER_PROG) & (sub * HEADS_PER_PROG + rows < GROUP)
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < HEAD_DIM

    seq_len = tl.load(seq_lens_ptr + b).to(tl.int32)
    req_row = tl.load(req_pool_ptr + b).to(tl.int64)
    # Every split covers a whole number of BLOCK_N tiles; trailing splits may get nothing.
    split_len = tl.cdiv(tl.cdiv(seq_len, num_splits), BLOCK_N) * BLOCK_N
    start = split * split_len
    end = tl.minimum(start + split_len, seq_len)

    q = tl.load(
        q_ptr + b.to(tl.int64) * stride_qb + heads[:, None] * stride_qh + offs_d[None, :],
        mask=mask_h[:, None] & mask_d[None, :],
        other=0.0,
    )
    m_i = tl.full([BLOCK_H], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_H], tl.float32)
    acc = tl.zeros([BLOCK_H, BLOCK_D], tl.float32)
    tok_ptr = req_to_token_ptr + req_row * stride_r2t
    for n0 in range(start, end, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        mask_n = offs_n < end
        # int64: slot * row stride overflows int32 for pools of a few million slots
        slots = tl.load(tok_ptr + offs_n, mask=mask_n, other=0).to(tl.int64)
        kv_mask = mask_n[:, None] & mask_d[None, :]
        k = tl.load(
            k_ptr + slots[:, None] * stride_kt + kv_head * stride_kh + offs_d[None, :],
            mask=kv_mask,
            other=0.0,
        )
        if KV_FP8:
            k = (k.to(tl.float32) * k_scale).to(q.dtype)
        qk = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale
        qk = tl.where(mask_n[None, :], qk, float("-inf"))
        # The loop only visits tiles with >= 1 valid key, so m_new is finite for every row.
        m_new = tl.maximum(m_i, tl.max(qk, 1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(qk - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(
            v_ptr + slots[:, None] * stride_vt + kv_head * stride_vh + offs_d[None, :],
            mask=kv_mask,
            other=0.0,
        )
        if KV_FP8:
            v = (v.to(tl.float32) * v_scale).to(q.dtype)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
        m_i = m_new

    has_tokens = l_i > 0.0  # false for every row of an empty split
    out = acc / tl.where(has_tokens, l_i, 1.0)[:, None]
    tl.store(
        part_out_ptr
        + b.to(tl.int64) * stride_pb
        + heads[:, None] * stride_ph
        + split * stride_ps
        + offs_d[None, :],
        out.to(part_out_ptr.dtype.element_ty),
        mask=mask_h[:, None] & mask_d[None, :],
    )
    if not FINAL:
        # back to natural log: lse = ln(sum exp(s)) = (m2 + log2(l)) * ln(2), s in base-2 units
        lse = tl.where(
            has_tokens, (m_i + tl.log2(tl.where(has_tokens, l_i, 1.0))) * 0.6931471805599453, float("-inf")
        )
        tl.store(part_lse_ptr + b.to(tl.int64) * stride_lb + heads * stride_lh + split, lse, mask=mask_h)


@triton.jit(do_not_specialize=["num_splits"])
def _decode_stage2_kernel(
    part_out_ptr,
    part_lse_ptr,
    out_ptr,
    stride_pb,
    stride_ph,
    stride_ps,
    stride_lb,
    stride_lh,
    stride_ob,
    stride_oh,
    num_splits,
    BLOCK_S: tl.constexpr,  # next power of two >= num_splits
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    USE_PDL: tl.constexpr,
):
    if USE_PDL:
        tl.extra.cuda.gdc_wait()
        tl.extra.cuda.gdc_launch_dependents()
    b = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1)
    offs_s = tl.arange(0, BLOCK_S)
    offs_d = tl.arange(0, BLOCK_D)
    lse = tl.load(
        part_lse_ptr + b * stride_lb + h * stride_lh + offs_s, mask=offs_s < num_splits, other=float("-inf")
    )
    used = lse > float("-inf")
    m = tl.max(lse, 0)
    m = tl.where(m > float("-inf"), m, 0.0)  # all splits empty (seq_len 0): avoid -inf - -inf
    w = tl.where(used, tl.exp(lse - m), 0.0)
    # Unused splits are not read, so stale contents of a reused buffer cannot leak in.
    part = tl.load(
        part_out_ptr + b * stride_pb + h * stride_ph + offs_s[:, None] * stride_ps + offs_d[None, :],
        mask=used[:, None] & (offs_d[None, :] < HEAD_DIM),
        other=0.0,
    )
    denom = tl.sum(w, 0)
    out = tl.sum(part * w[:, None], 0) / tl.where(denom > 0.0, denom, 1.0)
    tl.store(
        out_ptr + b * stride_ob + h * stride_oh + offs_d,
        out.to(out_ptr.dtype.element_ty),
        mask=offs_d < HEAD_DIM,
    )


def decode_attention(
    q: torch.Tensor,
    k_buffer: torch.Tensor,
    v_buffer: torch.Tensor,
    req_to_token: torch.Tensor,
    req_pool_indices: torch.Tensor,
    seq_lens: torch.Tensor,
    sm_scale: float,
    *,
    num_kv_splits: int,
    k_scale: float = 1.0,
    v_scale: float = 1.0,
    out: torch.Tensor | None = None,
    partial_out: torch.Tensor | None = None,
    partial_lse: torch.Tensor | None = None,
    block_n: int = DECODE_BLOCK_N,
    num_warps: int = 4,
    num_stages: int = 2,
) -> torch.Tensor:
    """Same result as `reference.decode_attention`.

    q [B, H, D]; k_buffer/v_buffer [S, Hkv, D]; req_to_token [R, C] int32; req_pool_indices
    and seq_lens [B] (seq_len counts the current token, whose K/V are already in the pool).
    Optional preallocated buffers (for CUDA graphs): out [B, H, D] in q's dtype, partial_out
    fp32 [>=B, H, >=num_kv_splits, D], partial_lse fp32 [>=B, H, >=num_kv_splits]; larger
    buffers are used through their strides. Returns out.
    """
    batch, num_heads, head_dim = q.shape
    num_kv_heads = k_buffer.shape[1]
    assert num_heads % num_kv_heads == 0, "query heads must be a multiple of KV heads"
    assert num_kv_splits >= 1, num_kv_splits
    assert q.stride(2) == 1 and k_buffer.stride(2) == 1 and v_buffer.stride(2) == 1
    assert req_to_token.stride(1) == 1
    group = num_heads // num_kv_heads
    if out is None:
        out = torch.empty_like(q)
    assert out.stride(2) == 1
    if batch == 0:
        return out
    final = num_kv_splits == 1
    if final:
        # One split is the whole softmax: stage 1 writes the output and stage 2 is skipped
        # (the partial buffers, if given, are left untouched).
        partial_out = partial_lse = out
        part_strides, lse_strides = (out.stride(0), out.stride(1), 0), (0, 0)
    else:
        if partial_out is None:
            partial_out = torch.empty(
                (batch, num_heads, num_kv_splits, head_dim), dtype=torch.float32, device=q.device
            )
        if partial_lse is None:
            partial_lse = torch.empty((batch, num_heads, num_kv_splits), dtype=torch.float32, device=q.device)
        assert partial_out.stride(3) == 1 and partial_lse.stride(2) == 1
        assert partial_out.shape[2] >= num_kv_splits and partial_lse.shape[2] >= num_kv_splits
        part_strides = (partial_out.stride(0), partial_out.stride(1), partial_out.stride(2))
        lse_strides = (partial_lse.stride(0), partial_lse.stride(1))

    heads_per_prog = min(group, BLOCK_H)
    progs_per_kv = triton.cdiv(group, heads_per_prog)
    block_d = triton.next_power_of_2(head_dim)
    # fp32 caches get exact fp32 dots (tf32 would cost ~1e-3 relative error and break
    # fp32 parity runs); half-precision inputs ignore this setting.
    precision = "ieee" if q.dtype == torch.float32 else "tf32"
    _decode_stage1_kernel[(batch, num_kv_heads * progs_per_kv, num_kv_splits)](
        q,
        k_buffer,
        v_buffer,
        req_to_token,
        req_pool_indices,
        seq_lens,
        partial_out,
        partial_lse,
        sm_scale * 1.4426950408889634,
        k_scale,
        v_scale,
        q.stride(0),
        q.stride(1),
        k_buffer.stride(0),
        k_buffer.stride(1),
        v_buffer.stride(0),
        v_buffer.stride(1),
        req_to_token.stride(0),
        *part_strides,
        *lse_strides,
        num_kv_splits,
        GROUP=group,
        HEADS_PER_PROG=heads_per_prog,
        PROGS_PER_KV=progs_per_kv,
        HEAD_DIM=head_dim,
        BLOCK_D=block_d,
        BLOCK_H=BLOCK_H,
        BLOCK_N=block_n,
        DOT_PRECISION=precision,
        FINAL=final,
        KV_FP8=k_buffer.dtype == torch.float8_e4m3fn,
        num_warps=num_warps,
        num_stages=num_stages,
        **pdl.launch_options(q, batch),
    )
    if final:
        return out
    _decode_stage2_kernel[(batch, num_heads)](
        partial_out,
        partial_lse,
        out,
        partial_out.stride(0),
        partial_out.stride(1),
        partial_out.stride(2),
        partial_lse.stride(0),
        partial_lse.stride(1),
        out.stride(0),
        out.stride(1),
        num_kv_splits,
        BLOCK_S=triton.next_power_of_2(num_kv_splits),
        HEAD_DIM=head_dim,
        BLOCK_D=block_d,
        num_warps=4 if block_d >= 128 else 2,
        **pdl.launch_options(q, batch),
    )
    return out
