"""Fused mixture-of-experts: the routed experts of a sparse block in two grouped-GEMM launches.

Inputs (runtime/layers/moe.py): x [T, H]; stacked experts w13 [E, 2I, H] (each expert's gate rows,
then its up rows) and w2 [E, H, I]; the routing, topk_weights fp32 [T, top_k] and topk_ids [T, top_k].
Output [T, H] = sum_k topk_weights[t, k] * w2[e] @ (silu(w13[e, :I] @ x[t]) * (w13[e, I:] @ x[t]))
with e = topk_ids[t, k]. The oracle is `reference.fused_moe`, whose rounding points this follows.

The steps (the structure of SGLang's and vLLM's fused_moe; this code is our own):
  1. `moe_align_block_size` (moe_align.py): the T * top_k (token, k) pairs, numbered
     t * top_k + k, sorted by expert, each expert's run padded to a multiple of BLOCK_M with a
     sentinel (T * top_k), so every BLOCK_M rows of the sorted list belong to one expert:
     `sorted_ids`, the expert of each block, and the padded length. The list has a fixed length
     for a given T (the bound T * top_k + min(E, T * top_k) * (BLOCK_M - 1)) and nothing is read
     back to the host, so a decode step captures into a CUDA graph; blocks past the padded length
     exit at once. One Triton program for decode-sized batches, torch ops beyond.
  2. Gate/up GEMM with SiLU-and-mul fused: each program owns BLOCK_M sorted rows and BLOCK_N
     columns of the intermediate, loads its expert's gate tile and the matching up tile (rows n and
     I + n of w13) and keeps two fp32 accumulators, so the [T * top_k, 2I] gate_up never goes
     through memory; silu(gate) * up is rounded once into the intermediate [T * top_k, I].
  3. Down GEMM over the intermediate's rows (one per (token, k)), each multiplied by its routing
     weight in fp32 before it is rounded: [T * top_k, H].
  4. The sum over k (torch: fp32 accumulation, rounded once). Adding into [T, H] with atomics
     instead would save this pass but make the sum's order, and so the bits, vary run to run.

FP8 (w13_scale / w2_scale given): weights e4m3 with per-expert block scales [E, ceil(rows / bn),
ceil(cols / bk)]; each GEMM's input is quantised per token and group of block_k by fp8_quant.py
(x before step 2, the intermediate between 2 and 3: a separate pass, as in the dense path's
unfused route), and each K step adds `dot(a, b) * a_scale[row] * b_scale[column]` into the fp32
accumulator, as fp8_gemm.py does. The weight scale is loaded per column (a vector of BLOCK_N),
so tiles need not line up with scale blocks: BLOCK_K must divide block_k, nothing else.

Tile configs: tuned values from fused_moe_configs.json (benchmarks/tune_fused_moe.py) keyed by the
shape and the token-count bucket, else `default_config`, by the rows an expert gets on average.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import torch
import triton
import triton.language as tl

from radixlm.runtime.kernels.triton.fp8_gemm import TileConfig, bucket_for, load_config_file
from radixlm.runtime.kernels.triton.fp8_quant import per_token_group_quant_fp8
from radixlm.runtime.kernels.triton.moe_align import moe_align_block_size

CONFIG_FILE = Path(__file__).with_name("fused_moe_configs.json")
# token-count buckets of the tuned table: T uses the smallest bucket >= T, else the largest
TOKEN_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)


@dataclasses.dataclass(frozen=True)
class FusedMoeConfig(TileConfig):
    BLOCK_M: int
    BLOCK_N: int
    BLOCK_K: int
    GROUP_M: int = 8
    num_warps: int = 4
    num_stages: int = 3


def config_key(num_experts: int, hidden: int, inter: int, top_k: int, fp8: bool) -> str:
    """The tuned table's key of a shape: experts, hidden, this rank's intermediate, top-k, weights."""
    return f"E={num_experts},H={hidden},I={inter},topk={top_k},{'fp8' if fp8 else 'w16'}"


def load_configs(path: str | Path | None = None) -> dict:
    """The tuned table {key: {"<token bucket>": config}} ("_" keys are metadata); {} when missing."""
    return load_config_file(str(path or CONFIG_FILE))


def default_config(
    num_tokens: int, num_experts: int, top_k: int, fp8: bool, block_size: tuple[int, int] | None = None
) -> FusedMoeConfig:
    """Untuned tiles by the rows an expert gets on average (T * top_k / E): at decode an expert has
    one or two rows, so thin 16-row tiles (tl.dot's minimum) waste the least padding; prefill
    rows fill 64- and 128-row tiles. fp8 takes BLOCK_K = block_k (one scale per K step), 16-bit
    weights BLOCK_K 64. At most 3 stages of two B tiles and one A tile: <= 144 KB of shared
    memory at the largest (Hopper has 227 KB a block)."""
    rows = num_tokens * top_k / max(num_experts, 1)
    if rows <= 16:
        cfg = FusedMoeConfig(BLOCK_M=16, BLOCK_N=64, BLOCK_K=64, GROUP_M=1, num_warps=4, num_stages=4)
    elif rows <= 64:
        cfg = FusedMoeConfig(BLOCK_M=32, BLOCK_N=64, BLOCK_K=64, GROUP_M=8, num_warps=4, num_stages=4)
    elif rows <= 256:
        cfg = FusedMoeConfig(BLOCK_M=64, BLOCK_N=128, BLOCK_K=64, GROUP_M=8, num_warps=4, num_stages=3)
    else:
        cfg = FusedMoeConfig(BLOCK_M=128, BLOCK_N=128, BLOCK_K=64, GROUP_M=8, num_warps=8, num_stages=3)
    if fp8:
        bk = block_size[1]
        cfg = dataclasses.replace(cfg, BLOCK_K=min(128, bk & -bk))  # a power of two dividing block_k
    return cfg


def choose_config(
    num_tokens: int,
    num_experts: int,
    hidden: int,
    inter: int,
    top_k: int,
    fp8: bool,
    block_size: tuple[int, int] | None = None,
    configs: dict | None = None,
) -> FusedMoeConfig:
    """The tuned config of this shape at T's bucket when the table has one that fits (fp8: tuned for
    this block size, BLOCK_K dividing block_k), else `default_config`."""
    table = load_configs() if configs is None else configs
    by_t = table.get(config_key(num_experts, hidden, inter, top_k, fp8))
    if by_t and not (fp8 and list(table.get("_block_size", [128, 128])) != list(block_size)):
        buckets = [int(b) for b in by_t if not b.startswith("_")]
        if buckets:
            cfg = FusedMoeConfig.from_dict(by_t[str(bucket_for(num_tokens, buckets))])
            if not fp8 or block_size[1] % cfg.BLOCK_K == 0:
                return cfg
    return default_config(num_tokens, num_experts, top_k, fp8, block_size)


@triton.jit(do_not_specialize=["EM", "num_valid"])
def _fused_moe_kernel(
    a_ptr,  # [rows, K]: x (a row per token) or the intermediate (a row per (token, k))
    b_ptr,  # [E, N or 2N, K]: w13 (SILU_GATED) or w2
    c_ptr,  # [T * top_k, N]
    a_scale_ptr,  # fp8: [rows, ceil(K / GROUP_K)]
    b_scale_ptr,  # fp8: [E, ceil(rows of b / GROUP_N), ceil(K / GROUP_K)]
    topk_weights_ptr,  # [T * top_k] fp32
    sorted_ids_ptr,
    expert_ids_ptr,
    num_padded_ptr,
    N,
    K,
    EM,  # length of sorted_ids
    num_valid,  # T * top_k: the sentinel
    stride_am,
    stride_ak,
    stride_be,
    stride_bn,
    stride_bk,
    stride_cm,
    stride_cn,
    stride_asm,
    stride_ask,
    stride_bse,
    stride_bsn,
    stride_bsk,
    GROUP_N: tl.constexpr,  # block_n of the weight scales
    GROUP_K: tl.constexpr,  # block_k of the weight scales and the activation groups
    A_ROW_DIV: tl.constexpr,  # top_k when a holds a row per token, 1 when a row per (token, k)
    SILU_GATED: tl.constexpr,
    MUL_ROUTED_WEIGHT: tl.constexpr,
    USE_FP8: tl.constexpr,
    DOT_PRECISION: tl.constexpr,  # "ieee" for fp32 inputs (no tf32), else the default
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
    EVEN_K: tl.constexpr,
):
    # grouped ordering: GROUP_M row blocks sweep each column tile in turn (B tiles reused from L2)
    pid = tl.program_id(0)
    num_pid_m = tl.cdiv(EM, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    num_pid_in_group = GROUP_M * num_pid_n
    first_pid_m = (pid // num_pid_in_group) * GROUP_M
    group_size_m = min(num_pid_m - first_pid_m, GROUP_M)
    pid_m = first_pid_m + (pid % num_pid_in_group) % group_size_m
    pid_n = (pid % num_pid_in_group) // group_size_m
    if pid_m * BLOCK_M >= tl.load(num_padded_ptr):
        return  # past the padded length: the bound left room for padding that was not needed

    offs_token = tl.load(sorted_ids_ptr + pid_m * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    token_mask = offs_token < num_valid  # padding rows hold the sentinel
    expert = tl.load(expert_ids_ptr + pid_m).to(tl.int64)
    a_rows = offs_token // A_ROW_DIV
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_bn = (offs_n % N).to(tl.int64)  # clamped: columns past N re-read valid ones, never stored
    offs_k = tl.arange(0, BLOCK_K)
    a_ptrs = a_ptr + a_rows[:, None] * stride_am + offs_k[None, :] * stride_ak
    b_ptrs = b_ptr + expert * stride_be + offs_bn[None, :] * stride_bn + offs_k[:, None] * stride_bk
    up_ptrs = b_ptrs + N * stride_bn  # SILU_GATED: the up rows, I = N below the gate rows
    if USE_FP8:
        as_ptrs = a_scale_ptr + a_rows * stride_asm
        bs_ptrs = b_scale_ptr + expert * stride_bse + (offs_bn // GROUP_N) * stride_bsn
        bs_up_ptrs = b_scale_ptr + expert * stride_bse + ((offs_bn + N) // GROUP_N) * stride_bsn

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc_up = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for kb in range(0, tl.cdiv(K, BLOCK_K)):
        if EVEN_K:
            a = tl.load(a_ptrs, mask=token_mask[:, None], other=0.0)
            b = tl.load(b_ptrs)
        else:
            k_left = K - kb * BLOCK_K
            a = tl.load(a_ptrs, mask=token_mask[:, None] & (offs_k[None, :] < k_left), other=0.0)
            b = tl.load(b_ptrs, mask=offs_k[:, None] < k_left, other=0.0)
        if USE_FP8:
            k_group = kb * BLOCK_K // GROUP_K
            a_s = tl.load(as_ptrs + k_group * stride_ask, mask=token_mask, other=0.0)
            b_s = tl.load(bs_ptrs + k_group * stride_bsk)
            # scaled per K step: applies the scales and lifts the partial sums out of Hopper's
            # reduced-precision fp8 accumulation (see fp8_gemm.py)
            acc += tl.dot(a, b) * (a_s[:, None] * b_s[None, :])
        else:
            acc = tl.dot(a, b, acc, input_precision=DOT_PRECISION)
        if SILU_GATED:
            if EVEN_K:
                b_up = tl.load(up_ptrs)
            else:
                b_up = tl.load(up_ptrs, mask=offs_k[:, None] < K - kb * BLOCK_K, other=0.0)
            if USE_FP8:
                bu_s = tl.load(bs_up_ptrs + kb * BLOCK_K // GROUP_K * stride_bsk)
                acc_up += tl.dot(a, b_up) * (a_s[:, None] * bu_s[None, :])
            else:
                acc_up = tl.dot(a, b_up, acc_up, input_precision=DOT_PRECISION)
            up_ptrs += BLOCK_K * stride_bk
        a_ptrs += BLOCK_K * stride_ak
        b_ptrs += BLOCK_K * stride_bk

    if MUL_ROUTED_WEIGHT:
        w = tl.load(topk_weights_ptr + offs_token, mask=token_mask, other=0.0)
        acc = acc * w[:, None]
    if SILU_GATED:
        acc = acc / (1.0 + tl.exp(-acc)) * acc_up  # activation.py's formula, in fp32
    c_ptrs = c_ptr + offs_token[:, None] * stride_cm + offs_n[None, :] * stride_cn
    tl.store(c_ptrs, acc.to(c_ptr.dtype.element_ty), mask=token_mask[:, None] & (offs_n[None, :] < N))


def invoke_moe_gemm(
    a: torch.Tensor,
    a_scale: torch.Tensor | None,
    w: torch.Tensor,
    w_scale: torch.Tensor | None,
    out: torch.Tensor,
    topk_weights: torch.Tensor | None,
    sorted_ids: torch.Tensor,
    expert_ids: torch.Tensor,
    num_padded: torch.Tensor,
    a_row_div: int,
    silu_gated: bool,
    config: FusedMoeConfig,
    block_size: tuple[int, int] | None = None,
) -> torch.Tensor:
    """One grouped GEMM over the sorted (token, k) rows (steps 2 and 3 of the module doc): out
    [T * top_k, N] with N = w's rows (half of them when silu_gated). fp8 when a_scale is given
    (a e4m3 with per-token-group scales, w e4m3 with block scales)."""
    fp8 = a_scale is not None
    n = w.shape[1] // 2 if silu_gated else w.shape[1]
    k = w.shape[2]
    assert a.shape[1] == k and a.stride(1) == 1 and w.stride(2) == 1, (a.shape, w.shape)
    assert out.shape[1] == n and out.stride(1) == 1, (out.shape, n)
    if fp8:
        assert w_scale is not None and block_size is not None
        assert block_size[1] % config.BLOCK_K == 0, (
            f"BLOCK_K {config.BLOCK_K} must divide block_k {block_size[1]}"
        )
    em = sorted_ids.numel()
    grid = (triton.cdiv(em, config.BLOCK_M) * triton.cdiv(n, config.BLOCK_N),)
    dummy = out  # stands for the pointers a mode does not read
    _fused_moe_kernel[grid](
        a,
        w,
        out,
        a_scale if fp8 else dummy,
        w_scale if fp8 else dummy,
        topk_weights if topk_weights is not None else dummy,
        sorted_ids,
        expert_ids,
        num_padded,
        n,
        k,
        em,
        out.shape[0],
        a.stride(0),
        a.stride(1),
        w.stride(0),
        w.stride(1),
        w.stride(2),
        out.stride(0),
        out.stride(1),
        a_scale.stride(0) if fp8 else 0,
        a_scale.stride(1) if fp8 else 0,
        w_scale.stride(0) if fp8 else 0,
        w_scale.stride(1) if fp8 else 0,
        w_scale.stride(2) if fp8 else 0,
        GROUP_N=block_size[0] if fp8 else 1,
        GROUP_K=block_size[1] if fp8 else 1,
        A_ROW_DIV=a_row_div,
        SILU_GATED=silu_gated,
        MUL_ROUTED_WEIGHT=topk_weights is not None,
        USE_FP8=fp8,
        DOT_PRECISION="ieee" if a.dtype == torch.float32 else "tf32",
        BLOCK_M=config.BLOCK_M,
        BLOCK_N=config.BLOCK_N,
        BLOCK_K=config.BLOCK_K,
        GROUP_M=config.GROUP_M,
        EVEN_K=k % config.BLOCK_K == 0,
        num_warps=config.num_warps,
        num_stages=config.num_stages,
    )
    return out


Quantizer = Callable[[torch.Tensor, int], tuple[torch.Tensor, torch.Tensor]]


def fused_moe(
    x: torch.Tensor,
    w13: torch.Tensor,
    w2: torch.Tensor,
    topk_weights: torch.Tensor,
    topk_ids: torch.Tensor,
    w13_scale: torch.Tensor | None = None,
    w2_scale: torch.Tensor | None = None,
    block_size: tuple[int, int] | None = None,
    config: FusedMoeConfig | dict | None = None,
    quantize: Quantizer | None = None,
) -> torch.Tensor:
    """x [T, H] (contiguous) -> [T, H] in x's dtype: the routed experts' weighted sum (module doc).
    config: tiles (default `choose_config`); quantize: the fp8 path's per-token-group activation
    quantiser (default fp8_quant.py's kernel; the CPU tests pass the reference's, because the
    Triton interpreter rounds fp32 -> e4m3 casts wrongly)."""
    t, hidden = x.shape
    num_experts, two_i, _ = w13.shape
    inter, top_k = two_i // 2, topk_ids.shape[1]
    assert w2.shape == (num_experts, hidden, inter), (w13.shape, w2.shape)
    out = torch.empty((t, hidden), dtype=x.dtype, device=x.device)
    if t == 0:
        return out
    fp8 = w13_scale is not None
    if config is None:
        config = choose_config(t, num_experts, hidden, inter, top_k, fp8, block_size)
    elif isinstance(config, dict):
        config = FusedMoeConfig.from_dict(config)
    assert config.BLOCK_M >= 16 and config.BLOCK_N >= 16 and config.BLOCK_K >= 16, "tl.dot needs tiles >= 16"
    sorted_ids, expert_ids, num_padded = moe_align_block_size(topk_ids, num_experts, config.BLOCK_M)
    quantize = quantize or (lambda v, group: per_token_group_quant_fp8(v, group))
    a, a_scale = quantize(x, block_size[1]) if fp8 else (x, None)
    mid = torch.empty((t * top_k, inter), dtype=x.dtype, device=x.device)
    align = (sorted_ids, expert_ids, num_padded)
    invoke_moe_gemm(a, a_scale, w13, w13_scale, mid, None, *align, top_k, True, config, block_size)
    a, a_scale = quantize(mid, block_size[1]) if fp8 else (mid, None)
    down = torch.empty((t * top_k, hidden), dtype=x.dtype, device=x.device)
    weights = topk_weights.reshape(-1).to(torch.float32).contiguous()
    invoke_moe_gemm(a, a_scale, w2, w2_scale, down, weights, *align, 1, False, config, block_size)
    if top_k == 1:
        return down
    return torch.sum(down.view(t, top_k, hidden), dim=1, out=out)
