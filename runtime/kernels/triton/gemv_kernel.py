"""The GEMV kernel of decode-sized M, out [M, N] = x [M, K] @ w [N, K]^T: fp8_gemv.py launches it with
an e4m3 weight and its block scales (HAS_SCALE), dense_gemv.py with a bf16 / fp16 / fp32 weight.
Why a GEMV at these M, and the scales, are fp8_gemv.py's docstring; this one is the kernel.

Layout: the tiles are addressed as 3-D pointer blocks, x as [BLOCK_M, 1, BLOCK_K] and w as
[1, BLOCK_N, BLOCK_K], so that the layout Triton's coalescing gives the weight load (16
contiguous K bytes a thread) carries over to the [BLOCK_M, BLOCK_N, BLOCK_K] product: a thread
multiplies its 16 weight bytes with the matching x values of every row, and the K reduction is
in-thread FMAs plus a few shuffles. (2-D tiles broadcast to 3-D got a default layout with one K
element a thread, reduced across the whole program every step.) The small x tile is moved into
that layout through shared memory each step. Compiled offline for sm_90 (Triton 3.9): one
16-byte load a thread per 16 columns a step, 3 shuffles per output, 39 to 96 registers from
BLOCK_M 1 to 16 at the default tiles, no spills. num_stages > 1 pipelines the tile loads through
shared memory (cp.async), but at BLOCK_M = 1 Triton then picked the one-element layout again:
the default is 1 (latency hidden by resident programs), and the tuner times both.

Split-K: with BLOCK_N columns a program, N / BLOCK_N programs can be too few to keep every SM
streaming (o_proj and down_proj of Llama-3.1-8B have N = 4096). SPLIT_K > 1 gives each program a
contiguous range of K (a multiple of BLOCK_K) and a second grid dimension; each writes its fp32
partial sums to a workspace [SPLIT_K, M, N], then takes a ticket from its column tile's counter
(an acq_rel atomic, after a barrier, so the tile's partials are visible to whoever sees the
count); the program that takes the last ticket adds the SPLIT_K partials in index order, casts,
writes the output and resets the counter to 0 for the next call. So no second launch (it cost
~2 us a layer in a decode step: 96 launches, 5% of a batch-1 fp8 step on the H100), and the
result does not depend on which program finishes first (`tl.atomic_add` of the partials into a
zeroed buffer would: fp32 addition in arrival order is not reproducible). The counters are one
int32 a column tile in a zeroed buffer kept per device (`_tile_counters`), made before any CUDA
graph is captured; programs of one launch never share a tile, and launches on a stream run one
after another. SPLIT_K = 1 writes the output directly.

Edges: rows past M (BLOCK_M is M's next power of two) and columns past N are clamped (`% M`,
`% N`) on load, so loads need no M/N mask and only the store is masked; a partial last K step
(K not a multiple of BLOCK_K) loads its missing lanes as 0 (EVEN_K skips those masks).

Batch-1 decode (PDL, pdl.py): the first weight tile is read before `gdc_wait`, so that read
overlaps the kernel ahead, and the next kernel is released once the weight loop is done.

GATED: x is a gated MLP's gate_up [M, 2K] and each x step is silu(gate) * up, computed as
activation.py's silu_and_mul computes it (the same bits), so the down projection needs no
separate activation kernel and no [M, K] activation in memory.

Wide steps and the deferred sum (both tuned per shape: `benchmarks/tune_fp8_gemm.py --gemv --wide`). A step
may span several fp8 scale blocks (BLOCK_K 256 or 512: each weight row read in longer contiguous
runs; x is then scaled per element, fp8_gemv.py). DEFER_SUM keeps the [BLOCK_M, BLOCK_N, BLOCK_K]
products in an fp32 accumulator and sums over K once after the loop: the loop is loads, converts
and FMAs, without a cross-thread reduction each step (compiled for sm_90, a BLOCK_K 256 step
otherwise spent 160 shuffles a thread on its K sum). Tuned inside CUDA graphs on an H100
(2026-12-07), batch 1 of the 8B shape took BLOCK_K 512 for gate_up and qkv (qkv with the deferred
sum) and 256 for o_proj and down: per layer 39.5 + 22.7 + 10.7 + 8.3 us against the previous
table's 42.8 + 24.3 + 11.4 + 9.1; in one engine A/B the fp8 step went from 265.3 to 279.0 tok/s
(both then with a decode-attention variant since dropped; without it, 288.5).

Measured and dropped: loading weight tiles one or two steps ahead of their math into registers
(the first two before the PDL wait). The tuner never picked either, and in the model two steps
ahead on qkv, o_proj and down took a batch-1 fp8 step from 3.47 to 7.84 ms (H100,
benchmarks/results/decode-floor-gpu-h100-2026-12-07-third.md).
"""

from __future__ import annotations

import dataclasses

import torch
import triton
import triton.language as tl

from radixlm.runtime.kernels.triton import pdl
from radixlm.runtime.kernels.triton.fp8_gemm import TileConfig

MAX_M = 16  # the largest M this kernel takes: beyond it the weights stop being the bottleneck
M_BUCKETS = (1, 2, 4, 8, 16)  # BLOCK_M values, and the M buckets of the tuned tables


@dataclasses.dataclass(frozen=True)
class GemvConfig(TileConfig):
    """One launch's tiles (the tuned tables' entries)."""

    BLOCK_N: int
    BLOCK_K: int
    SPLIT_K: int = 1
    num_warps: int = 4
    num_stages: int = 1  # > 1: Triton pipelines the tile loads through shared memory (cp.async)
    DEFER_SUM: int = 0  # 1: products accumulate per element and are summed over K once, after the loop


def block_m_for(m: int) -> int:
    """BLOCK_M: M's next power of two (>= 1), the rows one program holds."""
    assert 0 < m <= MAX_M, f"the GEMV takes 1 <= M <= {MAX_M}, got {m}"
    return 1 << (m - 1).bit_length()


@triton.jit
def _accumulate(
    acc,
    x,
    w,
    s_ptr,
    k0,
    K,
    stride_ws_k,
    BLOCK_SCALE_K: tl.constexpr,
    BLOCK_K: tl.constexpr,
    HAS_SCALE: tl.constexpr,
    DEFER_SUM: tl.constexpr,
):
    """acc + one K step's products: summed over K into [BLOCK_M, BLOCK_N] (acc 2-D), or with
    DEFER_SUM added element by element into the [BLOCK_M, BLOCK_N, BLOCK_K] acc (summed once,
    after the loop). With scales (e4m3 -> fp32 is exact): a step within one scale block multiplies
    its K sum by that scale (BLOCK_M * BLOCK_N multiplies); a step across several blocks, or a
    deferred sum, multiplies x by each element's block scale before the product (BLOCK_M * BLOCK_K)."""
    # one return at the end: Triton compiles the statements after a return inside an `if` too
    xf = x.to(tl.float32)
    if HAS_SCALE and (DEFER_SUM or BLOCK_K > BLOCK_SCALE_K):
        if BLOCK_K <= BLOCK_SCALE_K:  # one block: a scalar
            xf = xf * tl.load(s_ptr + (k0 // BLOCK_SCALE_K) * stride_ws_k)
        else:  # clamped: a partial last step's lanes past K (x = 0 there) read the last block's scale
            blocks = tl.minimum((k0 + tl.arange(0, BLOCK_K)) // BLOCK_SCALE_K, (K - 1) // BLOCK_SCALE_K)
            xf = xf * tl.load(s_ptr + blocks * stride_ws_k)[None, None, :]
    prod = xf * w.to(tl.float32)
    if DEFER_SUM:
        acc = acc + prod
    elif HAS_SCALE and BLOCK_K <= BLOCK_SCALE_K:  # one scale covers the step: times its K sum
        acc = acc + tl.sum(prod, axis=2) * tl.load(s_ptr + (k0 // BLOCK_SCALE_K) * stride_ws_k)
    else:
        acc = acc + tl.sum(prod, axis=2)  # [BLOCK_M, BLOCK_N, BLOCK_K] summed over K
    return acc


@triton.jit
def _load_x(ptrs, mask, up_offset, GATED: tl.constexpr, EVEN_K: tl.constexpr):
    """One K step of x. GATED: x is silu(gate) * up of the gated MLP, read from gate_up [M, 2K]
    (up `up_offset` elements after gate) and rounded to its dtype exactly as silu_and_mul stores
    it (activation.py), so the fused down projection equals the two kernels bit for bit."""
    if EVEN_K:
        x = tl.load(ptrs)
    else:
        x = tl.load(ptrs, mask=mask, other=0.0)
    if GATED:
        if EVEN_K:
            up = tl.load(ptrs + up_offset).to(tl.float32)
        else:
            up = tl.load(ptrs + up_offset, mask=mask, other=0.0).to(tl.float32)
        gate = x.to(tl.float32)
        x = (gate / (1.0 + tl.exp(-gate)) * up).to(x.dtype)
    return x


@triton.jit(do_not_specialize=["M", "split_k"])
def _gemv_kernel(
    x_ptr,
    w_ptr,
    ws_ptr,
    c_ptr,
    part_ptr,
    count_ptr,
    M,
    N,
    K,
    k_per_split,  # K range of one program along grid dim 1: a multiple of BLOCK_K
    split_k,  # programs along K (grid dim 1); a launch argument, so each SPLIT_K compiles no variant
    stride_xm,
    stride_xk,
    stride_wn,
    stride_wk,
    stride_ws_n,
    stride_ws_k,
    stride_cm,
    stride_cn,
    stride_ps,
    stride_pm,  # the fp32 partials [SPLIT_K, M, N] (SPLIT_K > 1), last dim contiguous
    BLOCK_SCALE_N: tl.constexpr,  # block_n of the weight scales; a multiple of BLOCK_N
    BLOCK_SCALE_K: tl.constexpr,  # block_k; a multiple or a divisor of BLOCK_K
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    EVEN_K: tl.constexpr,  # K % BLOCK_K == 0: no K masks
    NUM_STAGES: tl.constexpr,
    HAS_SCALE: tl.constexpr = True,  # False: a bf16/fp16/fp32 weight without scales (dense_gemv.py)
    USE_PDL: tl.constexpr = False,  # launched with PDL (pdl.py)
    GATED: tl.constexpr = False,  # x_ptr is gate_up [M, 2K]: x = silu(gate) * up (`_load_x`)
    DEFER_SUM: tl.constexpr = False,  # a [BLOCK_M, BLOCK_N, BLOCK_K] acc, summed over K once (`_accumulate`)
):
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    offs_m = tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    rows = (offs_m % M).to(tl.int64)  # clamped: rows past M re-read valid rows, never stored
    cols = (offs_n % N).to(tl.int64)
    k_start = pid_k * k_per_split
    k_end = tl.minimum(k_start + k_per_split, K)

    # 3-D pointer tiles: the weight load's layout carries over to the product (module doc)
    ks = (k_start + offs_k)[None, None, :]
    x_ptrs = x_ptr + rows[:, None, None] * stride_xm + ks * stride_xk  # [BLOCK_M, 1, BLOCK_K]
    w_ptrs = w_ptr + cols[None, :, None] * stride_wn + ks * stride_wk  # [1, BLOCK_N, BLOCK_K]
    s_ptr = ws_ptr + (pid_n * BLOCK_N // BLOCK_SCALE_N).to(tl.int64) * stride_ws_n  # the tile's scale row

    if DEFER_SUM:
        acc = tl.zeros((BLOCK_M, BLOCK_N, BLOCK_K), dtype=tl.float32)
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    k_loop = k_start
    if USE_PDL:
        # the first step's weight tile is read before the wait: no kernel of the step writes
        # weights, so this read may overlap the kernel ahead (pdl.py); every split has a step
        first_k = (k_start + offs_k)[None, None, :] < K
        if EVEN_K:
            w = tl.load(w_ptrs)
        else:
            w = tl.load(w_ptrs, mask=first_k, other=0.0)
        tl.extra.cuda.gdc_wait()
        x = _load_x(x_ptrs, first_k, K * stride_xk, GATED, EVEN_K)
        acc = _accumulate(
            acc, x, w, s_ptr, k_start, K, stride_ws_k, BLOCK_SCALE_K, BLOCK_K, HAS_SCALE, DEFER_SUM
        )
        x_ptrs += BLOCK_K * stride_xk
        w_ptrs += BLOCK_K * stride_wk
        k_loop = k_start + BLOCK_K
    for k0 in tl.range(k_loop, k_end, BLOCK_K, num_stages=NUM_STAGES):
        in_k = (k0 + offs_k)[None, None, :] < K  # only the last step of the last split is partial
        x = _load_x(x_ptrs, in_k, K * stride_xk, GATED, EVEN_K)
        if EVEN_K:
            w = tl.load(w_ptrs)
        else:
            w = tl.load(w_ptrs, mask=in_k, other=0.0)
        acc = _accumulate(acc, x, w, s_ptr, k0, K, stride_ws_k, BLOCK_SCALE_K, BLOCK_K, HAS_SCALE, DEFER_SUM)
        x_ptrs += BLOCK_K * stride_xk
        w_ptrs += BLOCK_K * stride_wk
    if USE_PDL:  # the weights are read: the next kernel may start and read its own
        tl.extra.cuda.gdc_launch_dependents()
    if DEFER_SUM:
        acc = tl.sum(acc, axis=2)

    mask = (offs_m[:, None] < M) & (offs_n[None, :] < N)
    c_ptrs = c_ptr + offs_m.to(tl.int64)[:, None] * stride_cm + offs_n[None, :] * stride_cn
    if split_k == 1:
        tl.store(c_ptrs, acc.to(c_ptr.dtype.element_ty), mask=mask)
    else:
        part = part_ptr + offs_m.to(tl.int64)[:, None] * stride_pm + offs_n[None, :]
        tl.store(part + pid_k.to(tl.int64) * stride_ps, acc, mask=mask)
        tl.debug_barrier()  # every thread's partials stored before the ticket is taken (release)
        ticket = tl.atomic_add(count_ptr + pid_n, 1, sem="acq_rel", scope="gpu")
        if ticket == split_k - 1:  # the last of the tile's programs: the others' partials are visible
            tl.debug_barrier()
            total = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
            for s in range(split_k):  # in index order: the same sum whoever came last
                total += tl.load(part + s * stride_ps, mask=mask, other=0.0, cache_modifier=".cg")
            tl.store(c_ptrs, total.to(c_ptr.dtype.element_ty), mask=mask)
            tl.atomic_xchg(count_ptr + pid_n, 0, sem="relaxed", scope="gpu")  # ready for the next launch


_COUNTERS: dict[tuple[str, int | None], torch.Tensor] = {}
COUNTER_SLOTS = 1 << 16  # column tiles a launch may have: N / BLOCK_N <= 65536


def _tile_counters(device: torch.device) -> torch.Tensor:
    """The zeroed int32 tile counters of split-K launches on this device (every launch leaves them
    0). Made on first use, which must not be inside CUDA-graph capture: `prepare` makes them at
    model load."""
    device = torch.device(device)
    key = (
        device.type,
        device.index if device.index is not None or device.type != "cuda" else torch.cuda.current_device(),
    )
    counters = _COUNTERS.get(key)
    if counters is None:
        if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
            raise RuntimeError(
                "fp8_gemv: split-K tile counters must be made before CUDA-graph capture "
                "(call gemv_kernel.prepare(device) first)"
            )
        counters = _COUNTERS[key] = torch.zeros(COUNTER_SLOTS, dtype=torch.int32, device=device)
    return counters


def prepare(device: torch.device) -> None:
    """Make this device's split-K tile counters (before any CUDA graph is captured)."""
    _tile_counters(device)


def launch(
    x: torch.Tensor,
    w: torch.Tensor,
    scales: torch.Tensor | None,
    scale_block: tuple[int, int],
    config: GemvConfig,
    out: torch.Tensor,
    gated: bool = False,
) -> None:
    """Run the kernel on checked operands: out [M, N] = x [M, K] @ w [N, K]^T, each [BLOCK_N, BLOCK_K]
    step times its block scale when `scales` is given (scale_block: its block_n, block_k; with
    scales=None, any tile sizes: the dense GEMV, dense_gemv.py). M, N, K > 0. gated: x is gate_up
    [M, 2K], multiplied as silu_and_mul(x)."""
    m, k = x.shape[0], w.shape[1]
    n = w.shape[0]
    # each split gets whole BLOCK_K steps; fewer splits than asked when K has fewer steps, and
    # none left empty (every partial slice is written)
    k_steps = triton.cdiv(k, config.BLOCK_K)
    k_per_split = triton.cdiv(k_steps, min(config.SPLIT_K, k_steps)) * config.BLOCK_K
    split_k = triton.cdiv(k, k_per_split)
    tiles_n = triton.cdiv(n, config.BLOCK_N)
    counters = _tile_counters(x.device)
    assert tiles_n <= COUNTER_SLOTS, f"{tiles_n} column tiles exceed the {COUNTER_SLOTS} split-K counters"
    # SPLIT_K 1 never touches the partials: any fp32 pointer types the argument (the counters' memory)
    parts = (
        torch.empty((split_k, m, n), dtype=torch.float32, device=x.device)
        if split_k > 1
        else counters.view(torch.float32)[None, None]
    )
    _gemv_kernel[(tiles_n, split_k)](
        x,
        w,
        scales if scales is not None else counters,  # never read without scales: any pointer types it
        out,
        parts,
        counters,
        m,
        n,
        k,
        k_per_split,
        split_k,
        x.stride(0),
        x.stride(1),
        w.stride(0),
        w.stride(1),
        scales.stride(0) if scales is not None else 0,
        scales.stride(1) if scales is not None else 0,
        out.stride(0),
        out.stride(1),
        parts.stride(0),
        parts.stride(1),
        BLOCK_SCALE_N=scale_block[0],
        BLOCK_SCALE_K=scale_block[1],
        BLOCK_M=block_m_for(m),
        BLOCK_N=config.BLOCK_N,
        BLOCK_K=config.BLOCK_K,
        EVEN_K=k % config.BLOCK_K == 0,
        NUM_STAGES=config.num_stages,
        num_warps=config.num_warps,
        num_stages=config.num_stages,
        HAS_SCALE=scales is not None,
        GATED=gated,
        DEFER_SUM=bool(config.DEFER_SUM),
        **pdl.launch_options(x, m),
    )
