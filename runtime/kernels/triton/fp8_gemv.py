"""Block-wise W8A16 FP8 GEMV for decode-sized M: out [M, N] = x @ (w_q * w_scale)^T.

x [M, K] stays in its own dtype (bf16 / fp16 / fp32; M small, at most MAX_M); w_q [N, K] e4m3 with
block scales [ceil(N / block_n), ceil(K / block_k)] (Hugging Face "fp8" / DeepSeek-V3
`weight_scale_inv`), the layout fp8_gemm.py reads. The oracle is `reference.w8a16_block_fp8_matmul`.

Why a GEMV and not the W8A8 GEMM at these M: at M <= 16 a linear layer is bound by reading its
weights (2 * M flops per weight byte; an H100 streams ~3 TB/s), so what counts is bytes in flight,
not tensor-core throughput. `tl.dot` needs 16 rows and a shared-memory round trip per tile, and the
W8A8 path also launches a quantisation kernel for x per layer. Here each program loads fp8 weight
tiles straight into registers (16 bytes a thread along K), converts them to fp32 and multiplies
them with the unquantised x rows on the CUDA cores (fp32 FMAs), so x is never quantised: no
separate kernel, and the only rounding besides fp32 accumulation is the weight's own. The FMA cost
grows with M (M FMAs per weight byte) while the bytes do not, so somewhere below M = 16 the W8A8
tensor-core GEMM wins again; `ops.fp8_linear` switches at the measured M (`max_m_for`).

Scales: a program owns BLOCK_N output columns, BLOCK_N dividing block_n, so one scale row of
w_scale covers the whole tile; it walks K in steps of BLOCK_K. When BLOCK_K divides block_k, one
scale covers a step: the step's [BLOCK_M, BLOCK_N] partial dot product over BLOCK_K is computed
from the raw e4m3 values (exact in fp32) and multiplied by that one scale before it is added to
the fp32 accumulator, BLOCK_M * BLOCK_N multiplies a step instead of one per weight. A step over
several blocks (BLOCK_K a multiple of block_k: longer contiguous reads of each weight row), or a
config that defers the K sum to the end (DEFER_SUM), multiplies x by each element's block scale
instead, BLOCK_M * BLOCK_K multiplies a step.

The kernel (layout, split-K, edges, PDL, the gated MLP's activation) is gemv_kernel.py's.

M changes at every serving step: it is never specialised (`do_not_specialize`); BLOCK_M (1, 2, 4,
8 or 16) is, so each M bucket compiles once. Tile configs come from `choose_config`: tuned values
in fp8_gemv_configs.json (written by `benchmarks/tune_fp8_gemm.py --gemv`; RADIXLM_FP8_GEMV_CONFIGS
names another) keyed by "N,K" and M bucket, else `default_config`. The same file holds the
dispatch threshold (`max_m_for`).

Without scales the same kernel multiplies a bf16 / fp16 weight: the dense GEMV of dense_gemv.py,
with its own tuned table.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import triton

# one M-bucket rule, tuned-table lookup and cached json reader for both fp8 kernels
from radixlm.runtime.kernels.triton.fp8_gemm import load_config_file, tuned_entry
from radixlm.runtime.kernels.triton.gemv_kernel import M_BUCKETS, MAX_M, GemvConfig, block_m_for, launch

__all__ = ["MAX_M", "M_BUCKETS", "GemvConfig", "block_m_for", "w8a16_block_fp8_matmul", "choose_config"]

FP8_DTYPE = torch.float8_e4m3fn  # as reference.py; not imported, so this module needs only torch and triton

CONFIG_FILE = Path(__file__).with_name("fp8_gemv_configs.json")
# another table's path: one tuned for this card, or a benchmark's baseline
CONFIG_ENV = "RADIXLM_FP8_GEMV_CONFIGS"
# programs the default config aims for: about 4 per SM of an H100 (132 SMs), so that enough weight
# loads are in flight; more splits would add partial sums to reduce for little gain
TARGET_PROGRAMS = 512


def load_configs(path: str | Path | None = None) -> dict:
    """The table {"_gemv_max_m": int, "_gemv_max_m_by_shape": {"N,K": int}, "N,K": {"<M bucket>":
    {BLOCK_N, BLOCK_K, SPLIT_K, num_warps, num_stages, DEFER_SUM}}} (other keys starting
    with "_" are metadata); {} when the file is missing or unreadable. Read once per path. Default:
    the file $RADIXLM_FP8_GEMV_CONFIGS names, else fp8_gemv_configs.json."""
    return load_config_file(str(path or os.environ.get(CONFIG_ENV) or CONFIG_FILE))


def max_m_for(n: int, k: int, block_size: tuple[int, int] = (128, 128), configs: dict | None = None) -> int:
    """The largest M at which `ops.fp8_linear` takes this GEMV for an [N, K] weight: the tuned
    value for (N, K) if the table has one, else its "_gemv_max_m" (0, off, when absent or when the
    table was tuned for another block size). Never above MAX_M."""
    table = load_configs() if configs is None else configs
    if list(table.get("_block_size", [128, 128])) != list(block_size):
        return 0
    by_shape = table.get("_gemv_max_m_by_shape", {})
    value = by_shape.get(f"{n},{k}", table.get("_gemv_max_m", 0))
    return max(0, min(int(value), MAX_M))


def _largest_pow2_divisor(x: int, cap: int) -> int:
    return min(x & -x, cap)


def default_config(m: int, n: int, k: int, block_size: tuple[int, int] = (128, 128)) -> GemvConfig:
    """Untuned tiles: BLOCK_K = 128 (with 4 warps, 16 contiguous weight bytes a thread per 16 columns:
    one 16-byte load), 32 columns a program up to M = 4 (two loads in flight a thread), 16 beyond
    (the [BLOCK_M, BLOCK_N, BLOCK_K] product's registers grow with M), 8 warps at M = 16; no
    software pipelining (num_stages 1: the loads go straight to registers, and enough resident
    programs hide their latency); SPLIT_K doubled until about TARGET_PROGRAMS programs, keeping
    at least 4 K steps a program."""
    block_n, block_k = block_size
    block_k_tile = _largest_pow2_divisor(block_k, 128)
    assert block_k_tile >= 16, f"block_k {block_k} needs a power-of-two divisor >= 16"
    block_n_tile = _largest_pow2_divisor(block_n, 32 if m <= 4 else 16)
    tiles_n = triton.cdiv(n, block_n_tile)
    k_steps = triton.cdiv(max(k, 1), block_k_tile)
    split_k = 1
    while tiles_n * split_k < TARGET_PROGRAMS and k_steps // (split_k * 2) >= 4:
        split_k *= 2
    return GemvConfig(
        BLOCK_N=block_n_tile, BLOCK_K=block_k_tile, SPLIT_K=split_k, num_warps=8 if m > 8 else 4, num_stages=1
    )


def k_tile_fits(block_k_tile: int, block_k: int) -> bool:
    """Whether a BLOCK_K step meets the scale blocks (module doc): it divides block_k or is a
    multiple of it."""
    return block_k % block_k_tile == 0 or block_k_tile % block_k == 0


def choose_config(
    m: int, n: int, k: int, block_size: tuple[int, int] = (128, 128), configs: dict | None = None
) -> GemvConfig:
    """The tuned config for (N, K) at M's bucket when the table has one (tuned for this block size,
    its tiles dividing the blocks), else `default_config`. configs: a table in the JSON file's
    format (default: fp8_gemv_configs.json)."""
    entry = tuned_entry(load_configs() if configs is None else configs, m, n, k, block_size)
    if entry is not None:
        cfg = GemvConfig.from_dict(entry)
        if block_size[0] % cfg.BLOCK_N == 0 and k_tile_fits(cfg.BLOCK_K, block_size[1]):
            return cfg
    return default_config(m, n, k, block_size)


def w8a16_block_fp8_matmul(
    x: torch.Tensor,
    w_q: torch.Tensor,
    w_scale_inv: torch.Tensor,
    block_size: tuple[int, int] = (128, 128),
    out_dtype: torch.dtype | None = None,
    config: GemvConfig | dict | None = None,
    out: torch.Tensor | None = None,
    gated: bool = False,
) -> torch.Tensor:
    """x [M, K] (bf16 / fp16 / fp32, 1 <= M <= MAX_M) @ w^T with w_q [N, K] e4m3 (contiguous last
    dim) and w_scale_inv fp32 [ceil(N / block_n), ceil(K / block_k)] -> out [M, N] in out_dtype
    (default x's dtype), fp32 accumulation, x unquantised. config: tiles (default
    `choose_config(M, N, K, block_size)`); out: an [M, N] buffer to write instead of a new one.
    gated: x is a gated MLP's gate_up [M, 2K] and the product is silu_and_mul(x) @ w^T, the
    activation computed as the weights stream (the same bits as the two kernels)."""
    block_n, block_k = block_size
    assert x.dim() == 2 and w_q.dim() == 2 and x.shape[1] == w_q.shape[1] * (2 if gated else 1), (
        x.shape,
        w_q.shape,
    )
    assert x.dtype in (torch.bfloat16, torch.float16, torch.float32), x.dtype
    assert w_q.dtype == FP8_DTYPE and w_q.stride(1) == 1, "w_q: e4m3 with a contiguous last dim"
    m, k = x.shape[0], w_q.shape[1]
    n = w_q.shape[0]
    assert m <= MAX_M, f"the GEMV takes M <= {MAX_M} (got {m}); use fp8_gemm for larger M"
    assert (
        w_scale_inv.shape == (triton.cdiv(n, block_n), triton.cdiv(k, block_k))
        and w_scale_inv.dtype == torch.float32
    ), (w_scale_inv.shape, w_scale_inv.dtype)
    out_dtype = out_dtype or x.dtype
    if out is None:
        out = torch.empty((m, n), dtype=out_dtype, device=x.device)
    assert out.shape == (m, n) and out.dtype == out_dtype, (out.shape, out.dtype)
    if m == 0 or n == 0:
        return out
    if k == 0:
        return out.zero_()
    if config is None:
        config = choose_config(m, n, k, block_size)
    elif isinstance(config, dict):
        config = GemvConfig.from_dict(config)
    assert block_n % config.BLOCK_N == 0, f"BLOCK_N {config.BLOCK_N} must divide block_n {block_n}"
    assert k_tile_fits(config.BLOCK_K, block_k), (
        f"BLOCK_K {config.BLOCK_K} must divide block_k {block_k} or be a multiple of it"
    )
    assert config.BLOCK_K >= 16 and config.SPLIT_K >= 1, config

    launch(x, w_q, w_scale_inv, block_size, config, out, gated=gated)
    return out
