"""Attention backend: stores a layer's new K/V into the pool and runs the kernel for the batch.

Kernels are chosen by device: the PyTorch reference kernels on CPU (and as the fallback
everywhere). The GPU issue adds Triton kernels behind the same `forward` call.
"""

from __future__ import annotations

import torch

from radixlm.runtime.forward_batch import ForwardBatch, ForwardMode
from radixlm.runtime.kernels import reference
from radixlm.runtime.memory import KVPool, ReqToTokenPool


class AttentionBackend:
    def __init__(self, kv_pool: KVPool, req_pool: ReqToTokenPool, num_heads: int, head_dim: int) -> None:
        self.kv_pool = kv_pool
        self.req_pool = req_pool
        self.num_heads = num_heads
        self.sm_scale = head_dim ** -0.5

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layer: int,
                batch: ForwardBatch) -> torch.Tensor:
        """q: [T, H, D]; k, v: [T, Hkv, D] for the batch's new tokens. Returns [T, H, D]."""
        pool = self.kv_pool
        pool.store(layer, batch.out_cache_loc, k, v)
        if batch.mode is ForwardMode.DECODE:
            return reference.decode_attention(
                q, pool.k_buffers[layer], pool.v_buffers[layer], self.req_pool.req_to_token,
                batch.req_pool_indices, batch.seq_lens, self.sm_scale,
            )
        return reference.extend_attention(
            q, k, v, pool.k_buffers[layer], pool.v_buffers[layer], self.req_pool.req_to_token,
            batch.req_pool_indices, batch.prefix_lens, batch.extend_lens, self.sm_scale,
        )
