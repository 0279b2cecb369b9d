"""The model runner: owns the model, the KV pools and the attention backend; runs one batch.

It never decides who runs. The scheduler hands it a `ForwardBatch`; `launch` queues the
work and returns a `ForwardHandle`, whose `result()` is the `ForwardResult` with the
sampled tokens and requested logprobs (`forward` does both).
"""

from __future__ import annotations

import logging

import torch

from radixlm.runtime.config import EngineConfig, ModelConfig
from radixlm.runtime.kernels import ops
from radixlm.runtime.layers.attention import AttentionBackend
from radixlm.runtime.layers.sampling import logprobs_of, sample
from radixlm.runtime.model_executor.cuda_graph import CudaGraphRunner
from radixlm.runtime.model_executor.device_copy import HostCopy, to_device
from radixlm.runtime.model_executor.distributed import TPGroup
from radixlm.runtime.model_executor.forward_batch import ForwardBatch, ForwardHandle, ForwardResult
from radixlm.runtime.models import load_model
from radixlm.runtime.radix.host_pool import HostKVPool, host_pool_size
from radixlm.runtime.radix.kv_transfer import KVTransfer
from radixlm.runtime.radix.memory_pool import KVPool, ReqToTokenPool

logger = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
CPU_DEFAULT_MAX_TOTAL_TOKENS = 65536
MAX_RUNNING_REQUESTS_DEFAULT = 1024


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but CUDA is not available")
    return device


def resolve_dtype(name: str, model_cfg: ModelConfig, device: torch.device) -> torch.dtype:
    if name != "auto":
        return _DTYPES[name]
    if device.type == "cpu":
        return torch.float32  # CPU half precision is slow and drifts from the fp32 oracle
    return (
        _DTYPES.get(model_cfg.torch_dtype, torch.bfloat16)
        if model_cfg.torch_dtype != "float32"
        else torch.bfloat16
    )


class ModelRunner:
    def __init__(self, cfg: EngineConfig, model_cfg: ModelConfig, tp: TPGroup | None = None) -> None:
        self.cfg = cfg
        self.tp = tp or TPGroup()
        self.model_cfg = model_cfg
        self.device = resolve_device(cfg.device)
        self.dtype = resolve_dtype(cfg.dtype, model_cfg, self.device)
        self.vocab_size = model_cfg.vocab_size

        limit = model_cfg.max_position_embeddings
        if model_cfg.sliding_window:
            limit = min(limit, model_cfg.sliding_window)  # no sliding-window attention: stay inside it
        if cfg.context_length is not None and cfg.context_length > limit:
            raise ValueError(
                f"context_length {cfg.context_length} exceeds the model's limit of {limit} tokens"
            )
        self.model_context_len = cfg.context_length or limit
        use_triton = self.device.type == "cuda" and cfg.attention_backend != "torch"
        ops.set_backend("triton" if use_triton else "torch")
        self.model = load_model(
            model_cfg,
            self.dtype,
            self.device,
            self.model_context_len,
            cfg.quantization,
            self.tp,
            lm_head_quantization=cfg.lm_head_quantization,
        )
        # this rank's heads: KV pool and attention hold only them
        self.num_heads, self.num_kv_heads = self.model.local_num_heads, self.model.local_num_kv_heads
        self.quantization = "fp8" if cfg.quantization == "fp8" or model_cfg.checkpoint_fp8_block else None
        self.lm_head_quantization = cfg.lm_head_quantization
        ops.set_fp8_gemm_backend(cfg.fp8_gemm_backend)
        if use_triton:
            # the split-K GEMVs' tickets (dense or fp8), made before any CUDA graph is captured
            ops.prepare_kernels(self.device)
        # which kernels run fp8 W8A8 products (server_info); cuBLAS is probed here, before any
        # CUDA graph is captured (an fp8 LM head alone needs the probe too)
        self.fp8_gemm = None
        if self.quantization == "fp8" or self.lm_head_quantization == "fp8":
            self.fp8_gemm = "torch reference" if not use_triton else "triton"
            if use_triton:
                reason = ops.prepare_fp8(self.device)
                if reason is None:
                    self.fp8_gemm = "triton, cublas from the tuned M"
                elif cfg.fp8_gemm_backend == "auto":
                    logger.info(
                        "fp8: cuBLAS block-scaled GEMM unavailable (%s); Triton runs at every M", reason
                    )

        self.kv_dtype = torch.float8_e4m3fn if cfg.kv_cache_dtype == "fp8_e4m3" else self.dtype
        # K and V of one token on this rank (its heads), every layer: sizes both KV tiers
        self.kv_bytes_per_token = KVPool.bytes_per_token(
            model_cfg.num_layers, self.num_kv_heads, model_cfg.head_dim, self.kv_dtype
        )
        self.max_total_tokens = self._kv_capacity()
        # a lone request must always fit in the pool, so the usable context is capped by it
        self.context_len = min(self.model_context_len, self.max_total_tokens - 1)
        rows = cfg.max_running_requests or min(
            MAX_RUNNING_REQUESTS_DEFAULT, max(self.max_total_tokens // 2, 1)
        )
        self.req_pool = ReqToTokenPool(rows, self.context_len + 1, self.device)
        self.kv_pool = KVPool(
            self.max_total_tokens,
            model_cfg.num_layers,
            self.num_kv_heads,
            model_cfg.head_dim,
            self.kv_dtype,
            self.device,
        )
        if self.kv_dtype == torch.float8_e4m3fn:
            scales = self.model.kv_scales
            if len(scales) != model_cfg.num_layers:
                logger.warning(
                    "fp8 KV cache without calibrated k/v scales in the checkpoint: using 1.0 "
                    "(values saturate at +-448 and lose precision below ~0.016)"
                )
            self.kv_pool.scales = [tuple(scales.get(i, (1.0, 1.0))) for i in range(model_cfg.num_layers)]
        self.kv_transfer = self._host_tier() if cfg.enable_hierarchical_cache else None
        self.attn_backend = AttentionBackend(
            self.kv_pool, self.req_pool, self.num_heads, model_cfg.head_dim, use_triton
        )
        logger.info(
            "model loaded: %s on %s (%s); KV pool %d tokens, %d request rows, context %d; kernels %s",
            model_cfg.architecture,
            self.device,
            self.dtype,
            self.max_total_tokens,
            rows,
            self.context_len,
            "triton" if use_triton else "torch",
        )
        # graphs need the Triton decode kernel: the reference one sizes tensors from seq_lens on the host
        self.graph_runner = None
        if use_triton and not cfg.disable_cuda_graph:
            self.graph_runner = CudaGraphRunner(
                self.model, self.attn_backend, min(cfg.cuda_graph_max_bs, rows), self.device
            )

    def _host_tier(self) -> KVTransfer:
        """The radix cache's host pool (this rank's shard of heads) and its copy engine."""
        size = host_pool_size(
            size_gb=self.cfg.hicache_size,
            ratio=self.cfg.hicache_ratio,
            device_slots=self.max_total_tokens,
            bytes_per_token=self.kv_bytes_per_token,
        )
        pool = HostKVPool(size, self.model_cfg.num_layers, pin=self.device.type == "cuda")
        logger.info(
            "host KV cache: %d tokens (%.2f GiB, %s)",
            pool.num_slots,
            size.nbytes / 2**30,
            "pinned" if pool.pinned else "pageable",
        )
        return KVTransfer(self.kv_pool, pool)

    def _kv_capacity(self) -> int:
        if self.cfg.max_total_tokens is not None:
            return self.cfg.max_total_tokens
        per_token = self.kv_bytes_per_token
        if self.device.type == "cuda":
            free, total = torch.cuda.mem_get_info(self.device)
            budget = free - total * (1.0 - self.cfg.mem_fraction_static)
            if budget < per_token * 16:
                raise ValueError(
                    f"not enough GPU memory for the KV cache after loading weights "
                    f"(free {free / 2**30:.1f} GiB of {total / 2**30:.1f} GiB); raise mem_fraction_static"
                )
            return int(budget // per_token)
        return CPU_DEFAULT_MAX_TOTAL_TOKENS

    def forward(self, batch: ForwardBatch) -> ForwardResult:
        return self.launch(batch).result()

    @torch.inference_mode()
    def launch(self, batch: ForwardBatch) -> ForwardHandle:
        """Queue the batch's forward, sampling and logprobs on the device and return at once.
        Nothing here waits for the device, so the caller may prepare the next step meanwhile."""
        dev = self.device
        timed = dev.type == "cuda"
        start = torch.cuda.Event(enable_timing=True) if timed else None
        if start is not None:
            start.record()
        if self.graph_runner is not None and self.graph_runner.can_run(batch):
            logits = self.graph_runner.replay(batch)
        else:
            self.attn_backend.init_forward_metadata(batch)
            logits = self.model.compute_logits(self.model(batch))  # [rows, vocab] fp32
        sample_reqs = [i for i, row in enumerate(batch.sample_rows) if row >= 0]
        sampled = None
        if sample_reqs:
            rows = [batch.sample_rows[i] for i in sample_reqs]
            # sampling edits its logits in place: give it a copy (a plain slice when the rows are
            # the leading ones, as in decode, which spares a host-to-device index copy)
            picked = (
                logits[: len(rows)].clone()
                if rows == list(range(len(rows)))
                else logits[to_device(rows, torch.int64, dev)]
            )
            sampled = sample(picked, batch.sampling)
        outputs = [sampled if sampled is not None else torch.empty(0, dtype=torch.int64, device=dev)]
        if batch.logprob_rows:
            # a target of -1 means "the token sampled from this row": take it from `sampled` on
            # the device rather than waiting for it on the host
            index_of_row = {batch.sample_rows[i]: j for j, i in enumerate(sample_reqs)}
            fixed = [max(t, 0) for t in batch.logprob_targets]
            from_sampled = [
                index_of_row[r] if t < 0 else -1 for r, t in zip(batch.logprob_rows, batch.logprob_targets)
            ]
            cols = to_device([batch.logprob_rows, fixed, from_sampled], torch.int64, dev)
            targets = cols[1]
            if sampled is not None and any(j >= 0 for j in from_sampled):
                targets = torch.where(cols[2] >= 0, sampled[cols[2].clamp(min=0)], cols[1])
            outputs += logprobs_of(logits[cols[0]], targets, batch.logprob_top_k)
        end = None
        if timed:
            end = torch.cuda.Event(enable_timing=True)
            end.record()
        return ForwardHandle(
            batch_size=batch.batch_size,
            sample_reqs=sample_reqs,
            sampled=sampled,
            copies=HostCopy(*outputs),
            top_k=list(batch.logprob_top_k),
            has_logprobs=bool(batch.logprob_rows),
            start_event=start,
            end_event=end,
        )
