"""The token sort of the fused MoE (runtime/kernels/triton/fused_moe.py, step 1 of its doc): the
(token, k) pairs grouped by expert, each expert's run padded to the GEMM's tile height, so every
tile of rows belongs to one expert. The output's length is fixed for a given T, the bound
T * top_k + min(E, T * top_k) * (BLOCK_M - 1) rounded up to a tile, and nothing is read back to
the host, so a decode step captures into a CUDA graph.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

# pairs (T * top_k) up to which the sort is one Triton program; beyond, torch ops (prefill sizes,
# where their ~20 launches are small beside the GEMMs)
ALIGN_KERNEL_MAX_PAIRS = 4096
ALIGN_KERNEL_MAX_EXPERTS = 1024


def moe_align_block_size(
    topk_ids: torch.Tensor, num_experts: int, block_m: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(sorted_ids int32 [P], expert_ids int32 [P / block_m], num_padded int32 [1]) for the (token, k)
    pairs of topk_ids [T, top_k]: pair indices t * top_k + k grouped by expert in ascending expert
    order, each expert's run padded to a multiple of block_m with the sentinel T * top_k;
    expert_ids[b] is the expert of rows [b * block_m, (b+1) * block_m); num_padded the used length.
    P is the bound for T (module doc), fixed so no host sync is needed; the blocks from num_padded
    on are unused (their expert id is clamped to a valid one).

    On CUDA, up to ALIGN_KERNEL_MAX_PAIRS pairs (every decode batch), one Triton program does it
    all (`_moe_align_kernel`): the torch version's ~20 small launches took ~85 us of a 132 us MoE
    layer at batch 1 on an H100. Its order within an expert is that of atomic increments, not the
    pairs' order: a row's product does not depend on the other rows of its tile, so the output
    bits are the same."""
    n = topk_ids.numel()
    if (
        topk_ids.is_cuda
        and 0 < n <= ALIGN_KERNEL_MAX_PAIRS
        and num_experts <= ALIGN_KERNEL_MAX_EXPERTS
        and topk_ids.is_contiguous()
    ):
        return _moe_align_triton(topk_ids, num_experts, block_m)
    return moe_align_block_size_torch(topk_ids, num_experts, block_m)


def _padded_len(n: int, num_experts: int, block_m: int) -> int:
    """The fixed length of sorted_ids: room for every expert's last block to be padded."""
    return triton.cdiv(n + min(num_experts, n) * (block_m - 1), block_m) * block_m


@triton.jit
def _moe_align_kernel(
    ids_ptr,
    sorted_ptr,
    expert_ids_ptr,
    num_padded_ptr,
    cursor_ptr,  # int32 [E] scratch: the next free row of each expert
    n,
    num_experts,
    sorted_len,
    BLOCK_M: tl.constexpr,
    N_P: tl.constexpr,  # next power of two >= n
    E_P: tl.constexpr,  # next power of two >= num_experts
    CHUNK: tl.constexpr,  # blocks (or rows) handled per step of the loops below
):
    offs = tl.arange(0, N_P)
    valid = offs < n
    ids = tl.load(ids_ptr + offs, mask=valid, other=0).to(tl.int32)
    e_offs = tl.arange(0, E_P)
    # the masked lanes counted as expert 0: take them off again
    counts = tl.histogram(ids, E_P) - tl.where(e_offs == 0, N_P - n, 0)
    padded = (counts + BLOCK_M - 1) // BLOCK_M * BLOCK_M
    ends = tl.cumsum(padded, 0)
    tl.store(num_padded_ptr, tl.sum(padded, 0))
    tl.store(cursor_ptr + e_offs, ends - padded, mask=e_offs < num_experts)
    # a block's expert: how many experts' runs end at or before its first row
    num_blocks = sorted_len // BLOCK_M
    for b0 in range(0, num_blocks, CHUNK):
        b = b0 + tl.arange(0, CHUNK)
        before = (ends[None, :] <= (b * BLOCK_M)[:, None]) & (e_offs[None, :] < num_experts)
        expert = tl.minimum(tl.sum(before.to(tl.int32), 1), num_experts - 1)
        tl.store(expert_ids_ptr + b, expert, mask=b < num_blocks)
    for r0 in range(0, sorted_len, CHUNK):
        r = r0 + tl.arange(0, CHUNK)
        tl.store(sorted_ptr + r, tl.zeros((CHUNK,), tl.int32) + n, mask=r < sorted_len)
    # the sentinel fill and the cursors must land before the scatter that overwrites them
    tl.debug_barrier()
    rows = tl.atomic_add(cursor_ptr + ids, 1, mask=valid)
    tl.store(sorted_ptr + rows, offs, mask=valid)


def _moe_align_triton(
    topk_ids: torch.Tensor, num_experts: int, block_m: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    n, device = topk_ids.numel(), topk_ids.device
    sorted_len = _padded_len(n, num_experts, block_m)
    sorted_ids = torch.empty(sorted_len, dtype=torch.int32, device=device)
    expert_ids = torch.empty(sorted_len // block_m, dtype=torch.int32, device=device)
    num_padded = torch.empty(1, dtype=torch.int32, device=device)
    cursor = torch.empty(num_experts, dtype=torch.int32, device=device)
    e_p = triton.next_power_of_2(num_experts)
    _moe_align_kernel[(1,)](
        topk_ids,
        sorted_ids,
        expert_ids,
        num_padded,
        cursor,
        n,
        num_experts,
        sorted_len,
        BLOCK_M=block_m,
        N_P=triton.next_power_of_2(n),
        E_P=e_p,
        CHUNK=max(16, 8192 // e_p),
        num_warps=4,
    )
    return sorted_ids, expert_ids, num_padded


def moe_align_block_size_torch(
    topk_ids: torch.Tensor, num_experts: int, block_m: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`moe_align_block_size` in torch ops (CPU, and large T on CUDA), stable: by pair index within
    an expert."""
    flat = topk_ids.reshape(-1).to(torch.int64)
    n, device = flat.numel(), flat.device
    counts = torch.zeros(num_experts, dtype=torch.int64, device=device)
    counts.scatter_add_(0, flat, torch.ones_like(flat))
    padded = (counts + block_m - 1) // block_m * block_m
    padded_end = padded.cumsum(0)
    order = torch.argsort(flat, stable=True)
    expert_of = flat[order]
    # a pair's place: its expert's padded start plus its rank among that expert's pairs
    rank = torch.arange(n, device=device) - (counts.cumsum(0) - counts)[expert_of]
    dest = (padded_end - padded)[expert_of] + rank
    num_blocks = _padded_len(n, num_experts, block_m) // block_m
    sorted_ids = torch.full((num_blocks * block_m,), n, dtype=torch.int32, device=device)
    sorted_ids[dest] = order.to(torch.int32)
    block_start = torch.arange(num_blocks, device=device) * block_m
    expert_ids = torch.searchsorted(padded_end, block_start, right=True).clamp_(max=num_experts - 1)
    return sorted_ids, expert_ids.to(torch.int32), padded_end[-1:].to(torch.int32)
