"""Building blocks shared by the decoder-only models: linears, norms, rotary embedding, MLP."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from radixlm.runtime.config import RopeConfig
from radixlm.runtime.kernels import ops


class DenseLinear(nn.Linear):
    """nn.Linear whose product goes through `ops.dense_linear`: at decode-sized batches on CUDA,
    where the tuned table measured it faster for this weight's shape, a Triton GEMV instead of
    cuBLAS (runtime/kernels/triton/dense_gemv.py); the same `x @ w^T` elsewhere. Quantisation
    replaces it like any nn.Linear (runtime/layers/quantization.py)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ops.dense_linear(x, self.weight, self.bias)

    def forward_silu_gated(self, gate_up: torch.Tensor) -> torch.Tensor:
        """forward(silu_and_mul(gate_up)) for a gated MLP's down projection (one kernel on the GEMV route)."""
        return ops.dense_silu_gated_linear(gate_up, self.weight, self.bias)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None):
        """norm(x), or with a residual stream (norm(x + residual), x + residual): the add is
        fused into the norm so the stream is read and written once per sub-layer."""
        if residual is None:
            return ops.rmsnorm(x, self.weight, self.eps)
        return ops.fused_add_rmsnorm(x, residual, self.weight, self.eps)


def rope_inv_freq(head_dim: int, rope: RopeConfig) -> torch.Tensor:
    inv_freq = 1.0 / (rope.theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    if rope.rope_type == "linear":
        return inv_freq / rope.factor
    if rope.rope_type == "llama3":
        old_len = rope.original_max_position_embeddings
        low_freq_wavelen = old_len / rope.low_freq_factor
        high_freq_wavelen = old_len / rope.high_freq_factor
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / rope.factor, inv_freq)
        smooth = (old_len / wavelen - rope.low_freq_factor) / (rope.high_freq_factor - rope.low_freq_factor)
        smoothed = (1 - smooth) * scaled / rope.factor + smooth * scaled
        is_medium = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
        return torch.where(is_medium, smoothed, scaled)
    return inv_freq


class RotaryEmbedding(nn.Module):
    """Rotate-half RoPE's cos/sin tables over all positions, which the attention backend rotates
    q and k with, fused with the K/V store (`ops.rotary_and_store_kv`). The tables stay fp32
    whatever the model's dtype (the loader rebuilds them after casting the model)."""

    def __init__(self, head_dim: int, max_positions: int, rope: RopeConfig) -> None:
        super().__init__()
        inv_freq = rope_inv_freq(head_dim, rope)
        freqs = torch.arange(max_positions, dtype=torch.float32)[:, None] * inv_freq[None, :]
        emb = torch.cat([freqs, freqs], dim=-1)
        self.register_buffer("cos", emb.cos(), persistent=False)
        self.register_buffer("sin", emb.sin(), persistent=False)


class GatedMLP(nn.Module):
    """SiLU-gated MLP with gate and up projections fused into one matmul."""

    def __init__(
        self,
        hidden_size: int,
        intermediate_size: int,
        reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        """`intermediate_size`: this rank's columns; `reduce`: the sum over tensor-parallel
        ranks of down_proj's partial output (None: a single rank)."""
        super().__init__()
        self.intermediate_size = intermediate_size
        self.reduce = reduce
        self.gate_up_proj = DenseLinear(hidden_size, 2 * intermediate_size, bias=False)
        self.down_proj = DenseLinear(intermediate_size, hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate_up = self.gate_up_proj(x)
        # a down projection that takes the activation in: fused with the fp8 input quantisation,
        # or computed inside the decode GEMV
        fused = getattr(self.down_proj, "forward_silu_gated", None)
        out = fused(gate_up) if fused is not None else self.down_proj(ops.silu_and_mul(gate_up))
        return self.reduce(out) if self.reduce is not None else out
