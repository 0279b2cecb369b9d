"""Block-wise W8A8 FP8 GEMM: out [M, N] = (a_q * a_scale) @ (b_q * b_scale)^T.

a_q [M, K] e4m3 with per-token-group scales [M, ceil(K / block_k)] (runtime/kernels/triton/
fp8_quant.py, group = block_k); b_q [N, K] e4m3 (the checkpoint's weight layout) with block scales
[ceil(N / block_n), ceil(K / block_k)] (Hugging Face "fp8" / DeepSeek-V3 `weight_scale_inv`).
The oracle is `reference.w8a8_block_fp8_matmul`.

Each program owns a BLOCK_M x BLOCK_N tile of the output and walks K in steps of BLOCK_K ==
block_k, so a step needs one A scale per row and, because BLOCK_N divides block_n, one B scale for
the whole tile. Per step it computes the fp8 product from scratch and adds it, scaled, into an
fp32 accumulator: `acc += dot(a, b) * a_s[:, None] * b_s`. Besides applying the scales this
promotes the partial sums out of Hopper's reduced-precision fp8 tensor-core accumulation every
block_k of K; letting `tl.dot` accumulate across steps had a relative error of 5e-4 at K=1024 and
2e-3 at K=8192.

Edges: rows and columns past M and N are clamped (`% M`, `% N`) on load, so loads need no M/N
mask and only the store is masked; a partial last K step (K not a multiple of block_k) loads its
missing lanes as 0 (EVEN_K skips those masks when K is a multiple). Programs are ordered in
groups of GROUP_M row-tiles so that consecutive programs share B tiles in L2.

M changes at every serving step: it is never specialised (`do_not_specialize`), so a new batch
size does not compile a new variant. Tile configs come from `choose_config`: tuned values in
fp8_gemm_configs.json (written by benchmarks/tune_fp8_gemm.py) keyed by "N,K" and M bucket, else
a default by M. The same file holds the M from which cuBLAS' block-scaled GEMM takes over
(`scaled_mm_min_m`; runtime/kernels/cublas_fp8.py).
"""

from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path
from typing import TypeVar

import torch
import triton
import triton.language as tl

FP8_DTYPE = torch.float8_e4m3fn  # as reference.py; not imported, so this module needs only torch and triton

CONFIG_FILE = Path(__file__).with_name("fp8_gemm_configs.json")
# M buckets of the tuned table: a given M uses the smallest bucket >= M, else the largest
M_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)


_Tile = TypeVar("_Tile", bound="TileConfig")


class TileConfig:
    """A kernel's tile choice (a frozen dataclass of ints) to and from its tuned table's JSON; the
    fp8 GEMM's, the fp8 GEMV's and the fused MoE's configs are its subclasses."""

    def to_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls: type[_Tile], d: dict) -> _Tile:
        return cls(**{f.name: int(d[f.name]) for f in dataclasses.fields(cls) if f.name in d})


@dataclasses.dataclass(frozen=True)
class Fp8GemmConfig(TileConfig):
    BLOCK_M: int
    BLOCK_N: int
    GROUP_M: int = 8
    num_warps: int = 4
    num_stages: int = 3


def bucket_for(m: int, buckets=M_BUCKETS) -> int:
    """The smallest bucket >= m, else the largest."""
    buckets = sorted(buckets)
    return next((b for b in buckets if b >= m), buckets[-1])


@functools.cache
def load_config_file(path: str) -> dict:
    """A tuned-config json (this GEMM's or fp8_gemv's), read once per path; {} when missing or unreadable."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}


def load_configs(path: str | Path | None = None) -> dict:
    """The tuned table {"N,K": {"<M bucket>": {BLOCK_M, BLOCK_N, GROUP_M, num_warps, num_stages}}}
    (keys starting with "_" are metadata); {} when the file is missing or unreadable."""
    return load_config_file(str(path or CONFIG_FILE))


def dump_configs(table: dict) -> str:
    """The table as JSON text, one config per line (the format of fp8_gemm_configs.json)."""
    lines = []
    for key, val in table.items():
        if isinstance(val, dict) and not key.startswith("_"):
            inner = ",\n".join(
                f"    {json.dumps(str(b))}: {json.dumps(c)}"
                for b, c in sorted(val.items(), key=lambda kv: int(kv[0]))
            )
            lines.append(f"  {json.dumps(key)}: {{\n{inner}\n  }}")
        else:
            lines.append(f"  {json.dumps(key)}: {json.dumps(val)}")
    return "{\n" + ",\n".join(lines) + "\n}\n"


def _max_block_n(block_n: int) -> int:
    """The largest power of two dividing block_n (a tile must not straddle two B scale blocks)."""
    return block_n & -block_n


def default_config(m: int, n: int, k: int, block_size: tuple[int, int] = (128, 128)) -> Fp8GemmConfig:
    """Untuned tiles by M, after what the tuner picked for the Llama-3.1-8B shapes on Hopper: thin
    16-row tiles for decode-sized M (tl.dot needs >= 16 rows), 64-row tiles (one warpgroup MMA)
    up to M=1024, 128x128 tiles beyond. The deeper pipelines take up to 128 KB of shared memory
    (Hopper has 227 KB a block; pass a config with fewer stages on smaller GPUs)."""
    cap = _max_block_n(block_size[0])
    assert cap >= 16, f"block_n {block_size[0]} needs a power-of-two divisor >= 16"
    if m <= 16:
        cfg = Fp8GemmConfig(BLOCK_M=16, BLOCK_N=64, GROUP_M=1, num_warps=4, num_stages=5)
    elif m <= 64:
        cfg = Fp8GemmConfig(BLOCK_M=64, BLOCK_N=64, GROUP_M=1, num_warps=4, num_stages=5)
    elif m <= 1024:
        cfg = Fp8GemmConfig(BLOCK_M=64, BLOCK_N=128, GROUP_M=8, num_warps=4, num_stages=4)
    else:
        cfg = Fp8GemmConfig(BLOCK_M=128, BLOCK_N=128, GROUP_M=8, num_warps=8, num_stages=4)
    return dataclasses.replace(cfg, BLOCK_N=min(cfg.BLOCK_N, cap))


def choose_config(
    m: int, n: int, k: int, block_size: tuple[int, int] = (128, 128), configs: dict | None = None
) -> Fp8GemmConfig:
    """The tuned config for (N, K) at M's bucket when the table has one (and it was tuned for this
    block size and its BLOCK_N divides block_n), else `default_config`. configs: a table in the
    JSON file's format (default: fp8_gemm_configs.json)."""
    entry = tuned_entry(load_configs() if configs is None else configs, m, n, k, block_size)
    if entry is not None:
        cfg = Fp8GemmConfig.from_dict(entry)
        if block_size[0] % cfg.BLOCK_N == 0:
            return cfg
    return default_config(m, n, k, block_size)


def tuned_entry(table: dict, m: int, n: int, k: int, block_size: tuple[int, int]) -> dict | None:
    """The raw tuned config of a table (this GEMM's or fp8_gemv's) for (N, K) at M's bucket, when
    the table has that shape and was tuned for this block size; else None."""
    by_m = table.get(f"{n},{k}")
    if not by_m or list(table.get("_block_size", [128, 128])) != list(block_size):
        return None
    buckets = [int(b) for b in by_m if not b.startswith("_")]
    return by_m[str(bucket_for(m, buckets))] if buckets else None


def scaled_mm_min_m(
    n: int, k: int, block_size: tuple[int, int] = (128, 128), configs: dict | None = None
) -> int | None:
    """The smallest M from which `ops.fp8_linear` runs this [N, K] weight's W8A8 product on cuBLAS
    (runtime/kernels/cublas_fp8.py) instead of this kernel: the table's "_scaled_mm_min_m_by_shape"
    entry for (N, K), else its "_scaled_mm_min_m"; None (never) when neither is set or the table
    was tuned for another block size. Measured by benchmarks/tune_fp8_gemm.py --scaled-mm."""
    table = load_configs() if configs is None else configs
    if list(table.get("_block_size", [128, 128])) != list(block_size):
        return None
    value = table.get("_scaled_mm_min_m_by_shape", {}).get(f"{n},{k}", table.get("_scaled_mm_min_m"))
    return None if value is None else max(1, int(value))


@triton.jit(do_not_specialize=["M"])
def _w8a8_block_fp8_matmul_kernel(
    a_ptr,
    b_ptr,
    c_ptr,
    as_ptr,
    bs_ptr,
    M,
    N,
    K,
    stride_am,
    stride_ak,
    stride_bn,
    stride_bk,
    stride_cm,
    stride_cn,
    stride_as_m,
    stride_as_k,
    stride_bs_n,
    stride_bs_k,
    BLOCK_SCALE_N: tl.constexpr,  # block_n of the weight scales; a multiple of BLOCK_N
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,  # == block_k: one scale per row / per tile each K step
    GROUP_M: tl.constexpr,
    EVEN_K: tl.constexpr,  # K % BLOCK_K == 0: no K masks
):
    # grouped ordering: GROUP_M row-tiles sweep each column-tile in turn (B tiles reused from L2)
    pid = tl.program_id(0)
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    num_pid_in_group = GROUP_M * num_pid_n
    group_id = pid // num_pid_in_group
    first_pid_m = group_id * GROUP_M
    group_size_m = min(num_pid_m - first_pid_m, GROUP_M)
    pid_m = first_pid_m + (pid % num_pid_in_group) % group_size_m
    pid_n = (pid % num_pid_in_group) // group_size_m

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_am = (offs_m % M).to(tl.int64)  # clamped: rows past M re-read valid rows, never stored
    offs_bn = (offs_n % N).to(tl.int64)
    offs_k = tl.arange(0, BLOCK_K)
    a_ptrs = a_ptr + offs_am[:, None] * stride_am + offs_k[None, :] * stride_ak  # [BLOCK_M, BLOCK_K]
    b_ptrs = b_ptr + offs_bn[None, :] * stride_bn + offs_k[:, None] * stride_bk  # [BLOCK_K, BLOCK_N]
    as_ptrs = as_ptr + offs_am * stride_as_m  # [BLOCK_M]
    bs_ptr = bs_ptr + (pid_n * BLOCK_N // BLOCK_SCALE_N).to(tl.int64) * stride_bs_n  # one per K step

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for kb in range(0, tl.cdiv(K, BLOCK_K)):
        if EVEN_K:
            a = tl.load(a_ptrs)
            b = tl.load(b_ptrs)
        else:
            k_left = K - kb * BLOCK_K
            a = tl.load(a_ptrs, mask=offs_k[None, :] < k_left, other=0.0)
            b = tl.load(b_ptrs, mask=offs_k[:, None] < k_left, other=0.0)
        a_s = tl.load(as_ptrs + kb * stride_as_k)
        b_s = tl.load(bs_ptr + kb * stride_bs_k)
        acc += tl.dot(a, b) * (a_s[:, None] * b_s)
        a_ptrs += BLOCK_K * stride_ak
        b_ptrs += BLOCK_K * stride_bk

    c = acc.to(c_ptr.dtype.element_ty)
    c_ptrs = c_ptr + offs_m.to(tl.int64)[:, None] * stride_cm + offs_n[None, :] * stride_cn
    tl.store(c_ptrs, c, mask=(offs_m[:, None] < M) & (offs_n[None, :] < N))


def w8a8_block_fp8_matmul(
    a_q: torch.Tensor,
    a_scale: torch.Tensor,
    b_q: torch.Tensor,
    b_scale: torch.Tensor,
    block_size: tuple[int, int] = (128, 128),
    out_dtype: torch.dtype = torch.bfloat16,
    config: Fp8GemmConfig | dict | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """a_q [M, K] e4m3 (last dim contiguous) with a_scale fp32 [M, ceil(K / block_k)] (per-token
    groups of block_k), b_q [N, K] e4m3 with b_scale fp32 [ceil(N / block_n), ceil(K / block_k)]
    -> out [M, N] = a @ b^T in out_dtype (fp32 accumulation). config: tiles (default
    `choose_config(M, N, K, block_size)`); out: an [M, N] buffer to write instead of a new one."""
    block_n, block_k = block_size
    assert a_q.dim() == 2 and b_q.dim() == 2 and a_q.shape[1] == b_q.shape[1], (a_q.shape, b_q.shape)
    assert a_q.dtype == FP8_DTYPE and b_q.dtype == FP8_DTYPE, (a_q.dtype, b_q.dtype)
    assert a_q.stride(1) == 1 and b_q.stride(1) == 1, "a_q and b_q need a contiguous last dim"
    m, k = a_q.shape
    n = b_q.shape[0]
    k_blocks = triton.cdiv(k, block_k)
    assert a_scale.shape == (m, k_blocks) and a_scale.dtype == torch.float32, (a_scale.shape, a_scale.dtype)
    assert b_scale.shape == (triton.cdiv(n, block_n), k_blocks) and b_scale.dtype == torch.float32, (
        b_scale.shape,
        b_scale.dtype,
    )
    assert block_k >= 16 and block_k & (block_k - 1) == 0, f"block_k {block_k} must be a power of two >= 16"
    if out is None:
        out = torch.empty((m, n), dtype=out_dtype, device=a_q.device)
    assert out.shape == (m, n) and out.dtype == out_dtype, (out.shape, out.dtype)
    if m == 0 or n == 0:
        return out
    if k == 0:
        return out.zero_()
    if config is None:
        config = choose_config(m, n, k, block_size)
    elif isinstance(config, dict):
        config = Fp8GemmConfig.from_dict(config)
    assert block_n % config.BLOCK_N == 0, f"BLOCK_N {config.BLOCK_N} must divide block_n {block_n}"
    assert config.BLOCK_M >= 16 and config.BLOCK_N >= 16, "tl.dot needs tiles of at least 16"
    grid = (triton.cdiv(m, config.BLOCK_M) * triton.cdiv(n, config.BLOCK_N),)
    _w8a8_block_fp8_matmul_kernel[grid](
        a_q,
        b_q,
        out,
        a_scale,
        b_scale,
        m,
        n,
        k,
        a_q.stride(0),
        a_q.stride(1),
        b_q.stride(0),
        b_q.stride(1),
        out.stride(0),
        out.stride(1),
        a_scale.stride(0),
        a_scale.stride(1),
        b_scale.stride(0),
        b_scale.stride(1),
        BLOCK_SCALE_N=block_n,
        BLOCK_M=config.BLOCK_M,
        BLOCK_N=config.BLOCK_N,
        BLOCK_K=block_k,
        GROUP_M=config.GROUP_M,
        EVEN_K=k % block_k == 0,
        num_warps=config.num_warps,
        num_stages=config.num_stages,
    )
    return out
