"""GEMV for decode-sized M with a bf16 / fp16 weight: out [M, N] = x [M, K] @ w [N, K]^T.

The kernel is gemv_kernel.py's (fp8_gemv.py's too) without the block scales: its docstring explains
the layout, split-K with an in-kernel reduction, the edges, and the activation fused in for the
gated MLP's down projection (`gated=True`). The oracle is `x @ w.t()` in fp32.

Why not cuBLAS at M = 1: a batch-1 decode step is bound by reading the weights, and on an H100
cuBLAS reads the smaller projections of an 8B model well below copy bandwidth. The batch-1 profile
of 2026-12-07 (benchmarks/results/profile-none-gpu-h100-2026-12-07-before.log) shows a 64x8 tile
kernel taking 0.65 ms a step for the 32 o_proj weights (1.07 GB: 1.65 TB/s against ~2.9), and
split-K kernels followed by a separate reduce kernel (0.12 ms a step in launches alone). Each
program here streams 16 contiguous bytes a thread, and split-K partials are reduced by the last
program of a column tile, in the same launch.

Where it is used is measured, not assumed: `benchmarks/tune_dense_gemv.py` times every candidate
tile and cuBLAS (`x @ w.t()`) on the same operands, L2 evicted before each call, and writes per
(N, K) the M buckets' best tiles and the largest M up to which the GEMV beat cuBLAS at every tuned
M ("_max_m_by_shape" in dense_gemv_configs.json). A shape it has not measured keeps cuBLAS
(`max_m_for` is 0), as does any weight that is not 2 bytes an element (the table is tuned for them).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import triton

from radixlm.runtime.kernels.triton.fp8_gemm import load_config_file, tuned_entry
from radixlm.runtime.kernels.triton.gemv_kernel import MAX_M, GemvConfig, launch

CONFIG_FILE = Path(__file__).with_name("dense_gemv_configs.json")
CONFIG_ENV = "RADIXLM_DENSE_GEMV_CONFIGS"  # another table's path, as fp8_gemv.py's CONFIG_ENV
WEIGHT_DTYPES = (torch.bfloat16, torch.float16)  # the weights the tuned table speaks for
NO_BLOCKS = (1, 1)  # the table has no weight blocks; `tuned_entry` checks this key like fp8's
TARGET_PROGRAMS = 512  # as the fp8 GEMV's default: about 4 programs an SM of an H100


def load_configs(path: str | Path | None = None) -> dict:
    """The table {"_max_m_by_shape": {"N,K": int}, "N,K": {"<M bucket>": {BLOCK_N, BLOCK_K, SPLIT_K,
    num_warps, num_stages, DEFER_SUM}}} (other "_" keys are metadata); {} when missing or
    unreadable. Default: the file $RADIXLM_DENSE_GEMV_CONFIGS names, else dense_gemv_configs.json."""
    return load_config_file(str(path or os.environ.get(CONFIG_ENV) or CONFIG_FILE))


def max_m_for(n: int, k: int, dtype: torch.dtype, configs: dict | None = None) -> int:
    """The largest M at which `ops.dense_linear` takes this GEMV for an [N, K] weight of `dtype`: the
    measured value for (N, K), else 0 (cuBLAS). Never above MAX_M."""
    if dtype not in WEIGHT_DTYPES:
        return 0
    table = load_configs() if configs is None else configs
    value = table.get("_max_m_by_shape", {}).get(f"{n},{k}", 0)
    return max(0, min(int(value), MAX_M))


def default_config(m: int, n: int, k: int) -> GemvConfig:
    """Untuned tiles: 64 K elements a step (128 bytes of a bf16 row: 16 a thread over 8 threads),
    32 columns a program up to M = 4, 16 beyond; SPLIT_K doubled until about TARGET_PROGRAMS
    programs, keeping at least 4 K steps a split."""
    block_k = 64
    block_n = 32 if m <= 4 else 16
    tiles_n, k_steps = triton.cdiv(n, block_n), triton.cdiv(max(k, 1), block_k)
    split_k = 1
    while tiles_n * split_k < TARGET_PROGRAMS and k_steps // (split_k * 2) >= 4:
        split_k *= 2
    return GemvConfig(BLOCK_N=block_n, BLOCK_K=block_k, SPLIT_K=split_k, num_warps=8 if m > 8 else 4)


def choose_config(m: int, n: int, k: int, configs: dict | None = None) -> GemvConfig:
    """The tuned tiles for (N, K) at M's bucket when the table has them, else `default_config`."""
    table = load_configs() if configs is None else configs
    entry = tuned_entry({"_block_size": list(NO_BLOCKS), **table}, m, n, k, NO_BLOCKS)
    return GemvConfig.from_dict(entry) if entry is not None else default_config(m, n, k)


def dense_gemv(
    x: torch.Tensor,
    w: torch.Tensor,
    config: GemvConfig | dict | None = None,
    out: torch.Tensor | None = None,
    gated: bool = False,
) -> torch.Tensor:
    """x [M, K] (1 <= M <= MAX_M) @ w^T, w [N, K] with a contiguous last dim, x and w of one float
    dtype -> out [M, N] in that dtype, fp32 accumulation. config: tiles (default `choose_config`);
    out: an [M, N] buffer to write instead of a new one. gated: x is a gated MLP's gate_up [M, 2K]
    and the product is silu_and_mul(x) @ w^T (the same bits as the two kernels)."""
    if x.dim() != 2 or w.dim() != 2 or x.shape[1] != w.shape[1] * (2 if gated else 1):
        want = "gate_up [M, 2K]" if gated else "x [M, K]"
        raise ValueError(f"dense_gemv: {want} and w [N, K] needed, got {tuple(x.shape)}, {tuple(w.shape)}")
    if x.dtype != w.dtype or x.dtype not in (torch.bfloat16, torch.float16, torch.float32):
        raise ValueError(f"dense_gemv: x and w must share a float dtype, got {x.dtype} and {w.dtype}")
    if w.stride(1) != 1:
        raise ValueError("dense_gemv: w needs a contiguous last dim")
    m, k = x.shape[0], w.shape[1]
    n = w.shape[0]
    if not 0 <= m <= MAX_M:
        raise ValueError(f"dense_gemv takes M <= {MAX_M} rows, got {m}")
    if out is None:
        out = torch.empty((m, n), dtype=x.dtype, device=x.device)
    if m == 0 or n == 0:
        return out
    if k == 0:
        return out.zero_()
    if config is None:
        config = choose_config(m, n, k)
    elif isinstance(config, dict):
        config = GemvConfig.from_dict(config)
    launch(x, w, None, (config.BLOCK_N, config.BLOCK_K), config, out, gated=gated)
    return out
