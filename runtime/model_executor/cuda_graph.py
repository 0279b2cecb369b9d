"""CUDA graphs for decode: one graph per batch size of a ladder, captured at start-up.

A decode step of a small batch is hundreds of short kernels; launched one by one from
Python, the launches cost more than the kernels. A graph replays the whole step (model
and LM head) with one launch. Graphs are captured from the largest size down in one
shared memory pool (a replay only ever runs one at a time) and a batch runs in the
smallest captured size that holds it, padded with rows that write the dummy KV slot 0
and attend to one valid slot: their logits are computed and dropped.

Invariant: everything a replay reads lives in the static buffers below, and the
attention metadata of a size depends on nothing but the size (see attention.py).
"""

from __future__ import annotations

import bisect
import logging
import time

import torch

from radixlm.runtime.layers.attention import AttentionBackend
from radixlm.runtime.model_executor.forward_batch import ForwardBatch, ForwardMode

logger = logging.getLogger(__name__)

BATCH_SIZE_LADDER = (
    1,
    2,
    4,
    8,
    12,
    16,
    24,
    32,
    40,
    48,
    56,
    64,
    80,
    96,
    112,
    128,
    160,
    192,
    224,
    256,
    320,
    384,
    448,
    512,
)


class CudaGraphRunner:
    def __init__(
        self, model: torch.nn.Module, attn_backend: AttentionBackend, max_bs: int, device: torch.device
    ) -> None:
        self.model = model
        self.attn_backend = attn_backend
        sizes = [b for b in BATCH_SIZE_LADDER if b < max_bs]
        self.batch_sizes = sizes + [max_bs]
        self.max_bs = max_bs
        i64 = dict(dtype=torch.int64, device=device)
        self.input_ids = torch.zeros(max_bs, **i64)
        self.positions = torch.zeros(max_bs, **i64)
        self.out_cache_loc = torch.zeros(max_bs, **i64)  # slot 0: the pool's dummy slot
        self.req_pool_indices = torch.zeros(max_bs, **i64)
        self.seq_lens = torch.ones(max_bs, **i64)
        self.ones = torch.ones(max_bs, **i64)
        self.rows = torch.arange(max_bs, **i64)
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.logits: dict[int, torch.Tensor] = {}
        self.batches: dict[int, ForwardBatch] = {}  # keeps each size's metadata buffers alive
        start = time.perf_counter()
        self._capture()
        self.capture_time_s = time.perf_counter() - start
        logger.info(
            "captured CUDA graphs for decode batch sizes %s in %.1f s", self.batch_sizes, self.capture_time_s
        )

    def _static_batch(self, bs: int) -> ForwardBatch:
        batch = ForwardBatch(
            mode=ForwardMode.DECODE,
            input_ids=self.input_ids[:bs],
            positions=self.positions[:bs],
            out_cache_loc=self.out_cache_loc[:bs],
            req_pool_indices=self.req_pool_indices[:bs],
            seq_lens=self.seq_lens[:bs],
            prefix_lens=self.seq_lens[:bs],  # decode kernels never read prefix_lens
            extend_lens=self.ones[:bs],
            prefix_lens_cpu=[0] * bs,
            extend_lens_cpu=[1] * bs,
            logits_indices=self.rows[:bs],
            sample_rows=list(range(bs)),
        )
        self.attn_backend.init_forward_metadata(batch)
        return batch

    def _run(self, batch: ForwardBatch) -> torch.Tensor:
        return self.model.compute_logits(self.model(batch))

    @torch.inference_mode()
    def _capture(self) -> None:
        pool = None
        for bs in reversed(self.batch_sizes):
            batch = self._static_batch(bs)
            for _ in range(2):  # compile the Triton kernels and create cuBLAS handles outside capture
                self._run(batch)
            torch.cuda.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                logits = self._run(batch)
            pool = graph.pool() if pool is None else pool
            self.graphs[bs], self.logits[bs], self.batches[bs] = graph, logits, batch
        torch.cuda.synchronize()

    def can_run(self, batch: ForwardBatch) -> bool:
        return batch.mode is ForwardMode.DECODE and batch.batch_size <= self.max_bs

    def replay(self, batch: ForwardBatch) -> torch.Tensor:
        """Logits [bs, vocab] (fp32) of a decode batch; valid until the next replay."""
        bs = batch.batch_size
        padded = self.batch_sizes[bisect.bisect_left(self.batch_sizes, bs)]
        self.input_ids[:bs].copy_(batch.input_ids)
        self.positions[:bs].copy_(batch.positions)
        self.out_cache_loc[:bs].copy_(batch.out_cache_loc)
        self.req_pool_indices[:bs].copy_(batch.req_pool_indices)
        self.seq_lens[:bs].copy_(batch.seq_lens)
        if padded > bs:
            for buf in (self.input_ids, self.positions, self.out_cache_loc, self.req_pool_indices):
                buf[bs:padded].zero_()
            self.seq_lens[bs:padded].fill_(1)
        self.graphs[padded].replay()
        return self.logits[padded][:bs]
