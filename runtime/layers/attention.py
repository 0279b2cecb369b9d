"""Attention backend: stores a layer's new K/V into the pool and runs the kernel for the batch.

Kernels are chosen by device: Triton on CUDA (split-KV decode, paged extend), the PyTorch
reference kernels on CPU or when asked (`attention_backend="torch"`).

Per-batch metadata (decode split count and its scratch buffers, extend offsets) is built
once per batch in `init_forward_metadata`, not once per layer. A CUDA graph captures the
kernels with the metadata of its capture, so decode metadata depends only on the batch
size: the split count is fixed per size and each request's split length is computed on
the device from its `seq_lens`.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch

from radixlm.runtime.kernels import ops, reference
from radixlm.runtime.model_executor.forward_batch import ForwardBatch, ForwardMode
from radixlm.runtime.radix.memory_pool import KVPool, ReqToTokenPool


@dataclass
class DecodeMetadata:
    num_kv_splits: int
    partial_out: torch.Tensor  # [B, H, splits, D] fp32, per-split normalised outputs
    partial_lse: torch.Tensor  # [B, H, splits] fp32, per-split log-sum-exp


@dataclass
class ExtendMetadata:
    extend_start_loc: torch.Tensor  # [B] first row of each request in the new tokens
    max_extend_len: int
    # A few long prompts with nothing cached go to PyTorch's SDPA (flash) one request at a time:
    # on an H200 it reached 547-568 TFLOP/s on an 8k causal prefill against 434-462 for our
    # extend kernel, which must also gather a paged prefix (benchmarks/bench_kernels.py).
    sdpa_spans: list[tuple[int, int]] | None = None


SDPA_MAX_REQUESTS = 8
SDPA_MIN_TOKENS = 1024


class AttentionBackend:
    def __init__(
        self, kv_pool: KVPool, req_pool: ReqToTokenPool, num_heads: int, head_dim: int, use_triton: bool
    ) -> None:
        self.kv_pool = kv_pool
        self.req_pool = req_pool
        self.num_heads = num_heads
        self.num_kv_heads = kv_pool.k_buffers[0].shape[1]
        self.head_dim = head_dim
        self.sm_scale = head_dim**-0.5
        self.use_triton = use_triton
        self.num_sms = 0
        if use_triton:  # imported only where used: CPU processes never load the GPU kernels
            from radixlm.runtime.kernels.triton import decode_attention, extend_attention

            self._decode_kernels, self._extend_attention = decode_attention, extend_attention.extend_attention
            self.num_sms = torch.cuda.get_device_properties(kv_pool.device).multi_processor_count

    def num_kv_splits(self, batch_size: int) -> int:
        return self._decode_kernels.choose_num_kv_splits(
            batch_size, self.num_kv_heads, self.req_pool.max_context_len, self.num_sms
        )

    def init_forward_metadata(self, batch: ForwardBatch) -> None:
        batch.attn_backend = self
        if not self.use_triton:
            return
        if batch.mode is ForwardMode.DECODE:
            bs, splits = batch.batch_size, self.num_kv_splits(batch.batch_size)
            dev = batch.input_ids.device
            batch.attn_metadata = DecodeMetadata(
                splits,
                torch.empty((bs, self.num_heads, splits, self.head_dim), dtype=torch.float32, device=dev),
                torch.empty((bs, self.num_heads, splits), dtype=torch.float32, device=dev),
            )
        else:
            starts = torch.cumsum(batch.extend_lens, 0) - batch.extend_lens
            lens = batch.extend_lens_cpu
            meta = ExtendMetadata(starts, max(lens, default=0))
            if (
                not any(batch.prefix_lens_cpu)
                and len(lens) <= SDPA_MAX_REQUESTS
                and sum(lens) >= SDPA_MIN_TOKENS * len(lens)
            ):
                ends = list(itertools.accumulate(lens))
                meta.sdpa_spans = list(zip([0] + ends[:-1], ends))
            batch.attn_metadata = meta

    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        layer: int,
        batch: ForwardBatch,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """q: [T, H, D]; k, v: [T, Hkv, D] for the batch's new tokens. Returns [T, H, D].

        rope: the rotary (cos, sin) tables [P, D]. Given, q and k arrive unrotated and are rotated
        here at `batch.positions`, fused with the K/V store (`ops.rotary_and_store_kv`: one launch
        per layer instead of two, with the same results); None: they arrive rotated."""
        k_buffer, v_buffer = self.kv_pool.k_buffers[layer], self.kv_pool.v_buffers[layer]
        scales = self.kv_pool.scales[layer]  # (k, v): an fp8 pool stores value / scale
        if rope is None:
            ops.store_kv(k, v, k_buffer, v_buffer, batch.out_cache_loc, *scales)
        else:
            # Decode reads K only from the pool (both kernels below), so the rotated k need not be
            # written back; every extend path (Triton, reference, SDPA) reads the new k itself.
            decode = batch.mode is ForwardMode.DECODE
            q, rotated_k = ops.rotary_and_store_kv(
                batch.positions,
                q,
                k,
                v,
                *rope,
                k_buffer,
                v_buffer,
                batch.out_cache_loc,
                *scales,
                keep_k=not decode,
            )
            if rotated_k is not None:
                k = rotated_k
        req_to_token = self.req_pool.req_to_token
        if not self.use_triton:
            if batch.mode is ForwardMode.DECODE:
                return reference.decode_attention(
                    q,
                    k_buffer,
                    v_buffer,
                    req_to_token,
                    batch.req_pool_indices,
                    batch.seq_lens,
                    self.sm_scale,
                    *scales,
                )
            return reference.extend_attention(
                q,
                k,
                v,
                k_buffer,
                v_buffer,
                req_to_token,
                batch.req_pool_indices,
                batch.prefix_lens,
                batch.extend_lens,
                self.sm_scale,
                *scales,
            )
        meta = batch.attn_metadata
        if batch.mode is ForwardMode.DECODE:
            return self._decode_kernels.decode_attention(
                q,
                k_buffer,
                v_buffer,
                req_to_token,
                batch.req_pool_indices,
                batch.seq_lens,
                self.sm_scale,
                num_kv_splits=meta.num_kv_splits,
                partial_out=meta.partial_out,
                partial_lse=meta.partial_lse,
                k_scale=scales[0],
                v_scale=scales[1],
            )
        if meta.sdpa_spans is not None:
            return self._sdpa_prefill(q, k, v, meta.sdpa_spans)
        return self._extend_attention(
            q,
            k,
            v,
            k_buffer,
            v_buffer,
            req_to_token,
            batch.req_pool_indices,
            batch.prefix_lens,
            batch.extend_lens,
            self.sm_scale,
            extend_start_loc=meta.extend_start_loc,
            max_extend_len=meta.max_extend_len,
            k_scale=scales[0],
            v_scale=scales[1],
        )

    def _sdpa_prefill(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, spans: list[tuple[int, int]]
    ) -> torch.Tensor:
        """Causal self-attention of requests with no cached prefix, one SDPA call each."""
        out = torch.empty_like(q)
        for start, end in spans:
            qr, kr, vr = (x[start:end].transpose(0, 1).unsqueeze(0) for x in (q, k, v))  # [1, heads, t, D]
            o = torch.nn.functional.scaled_dot_product_attention(
                qr,
                kr,
                vr,
                is_causal=True,
                scale=self.sm_scale,
                enable_gqa=self.num_heads != self.num_kv_heads,
            )
            out[start:end] = o[0].transpose(0, 1)
        return out
