"""The sparse mixture-of-experts block: a router, the stacked experts, an optional shared expert.

Each token goes to the top-k of E experts by its router's softmax (`ops.moe_topk`); every expert
is a SiLU-gated MLP. The experts' weights are stacked at load time, w13 [E, 2I, H] (gate rows then
up rows, the dense GatedMLP's fused layout per expert) and w2 [E, H, I], so that one fused kernel
(`ops.fused_moe`: runtime/kernels/triton/fused_moe.py on CUDA, the reference elsewhere) runs all
experts at once instead of one small GEMM per expert.

Tensor parallelism splits every expert's intermediate dimension like a dense MLP's (each rank
holds I / tp rows of w13's gate and up halves and the matching columns of w2); the router is
replicated, so every rank routes identically, and the partial outputs are summed by the one
all-reduce after the block (the shared expert's partial output joins that same sum).

FP8 experts keep e4m3 weights with one fp32 scale per block_n x block_k block of each expert
(the `weight_scale_inv` of Hugging Face's block-fp8 checkpoints, stacked like the weights), and
quantise their inputs per token and group of block_k at run time, as the dense Fp8Linear does.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from radixlm.runtime.config import MoeConfig
from radixlm.runtime.kernels import ops, reference
from radixlm.runtime.layers.decoder_blocks import GatedMLP


class FusedMoE(nn.Module):
    """The experts of one sparse block, stacked: w13_weight [E, 2I, H], w2_weight [E, H, I] with
    I this rank's share of the expert's intermediate size."""

    def __init__(self, num_experts: int, hidden_size: int, intermediate_size: int) -> None:
        super().__init__()
        self.num_experts, self.hidden_size, self.intermediate_size = (
            num_experts,
            hidden_size,
            intermediate_size,
        )
        self.w13_weight = nn.Parameter(
            torch.empty(num_experts, 2 * intermediate_size, hidden_size), requires_grad=False
        )
        self.w2_weight = nn.Parameter(
            torch.empty(num_experts, hidden_size, intermediate_size), requires_grad=False
        )
        # fp8 only: (block_n, block_k) and the per-expert block scales
        self.block_size: tuple[int, int] | None = None
        self.register_parameter("w13_weight_scale_inv", None)
        self.register_parameter("w2_weight_scale_inv", None)

    def _scale_shape(self, weight: torch.Tensor, block_size: tuple[int, int]) -> tuple[int, int, int]:
        bn, bk = block_size
        return weight.shape[0], math.ceil(weight.shape[1] / bn), math.ceil(weight.shape[2] / bk)

    def make_fp8(self, block_size: tuple[int, int]) -> None:
        """Empty e4m3 weights and fp32 scales in place of the current ones (on their device), for an
        fp8 checkpoint to load into."""
        self.block_size = tuple(block_size)
        for name in ("w13_weight", "w2_weight"):
            w = getattr(self, name)
            setattr(
                self,
                name,
                nn.Parameter(
                    torch.empty(w.shape, dtype=reference.FP8_DTYPE, device=w.device), requires_grad=False
                ),
            )
            setattr(
                self,
                name + "_scale_inv",
                nn.Parameter(
                    torch.empty(self._scale_shape(w, block_size), dtype=torch.float32, device=w.device),
                    requires_grad=False,
                ),
            )

    @torch.no_grad()
    def quantize_fp8(self, block_size: tuple[int, int]) -> None:
        """Block-quantise the loaded weights in place, one expert at a time (peak memory: one
        expert's fp32 copy beyond the model; each stacked bf16 tensor is freed once its fp8 copy
        is complete)."""
        self.block_size = tuple(block_size)
        for name in ("w13_weight", "w2_weight"):
            w = getattr(self, name).data
            q = torch.empty(w.shape, dtype=reference.FP8_DTYPE, device=w.device)
            s = torch.empty(self._scale_shape(w, block_size), dtype=torch.float32, device=w.device)
            for e in range(w.shape[0]):
                q[e], s[e] = reference.block_quant_fp8(w[e], block_size)
            setattr(self, name, nn.Parameter(q, requires_grad=False))
            setattr(self, name + "_scale_inv", nn.Parameter(s, requires_grad=False))

    def forward(self, x: torch.Tensor, topk_weights: torch.Tensor, topk_ids: torch.Tensor) -> torch.Tensor:
        return ops.fused_moe(
            x,
            self.w13_weight,
            self.w2_weight,
            topk_weights,
            topk_ids,
            self.w13_weight_scale_inv,
            self.w2_weight_scale_inv,
            self.block_size,
        )

    def extra_repr(self) -> str:
        return (
            f"experts={self.num_experts}, hidden={self.hidden_size}, inter={self.intermediate_size}, "
            f"fp8_block={self.block_size}"
        )


class SparseMoeBlock(nn.Module):
    """The decoder's MLP for the sparse layers: route, run the top-k experts, add the gated shared
    expert when the model has one (Qwen2-MoE), then sum over tensor-parallel ranks."""

    def __init__(
        self,
        hidden_size: int,
        moe: MoeConfig,
        intermediate_size: int,
        shared_intermediate_size: int = 0,
        reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        """`intermediate_size` / `shared_intermediate_size`: this rank's share of one expert's and
        of the shared expert's; `reduce`: the sum over ranks (None: a single rank)."""
        super().__init__()
        self.top_k, self.renormalize = moe.top_k, moe.renormalize
        self.gate = nn.Linear(hidden_size, moe.num_experts, bias=False)  # the router, replicated
        self.experts = FusedMoE(moe.num_experts, hidden_size, intermediate_size)
        self.shared_expert = (
            GatedMLP(hidden_size, shared_intermediate_size) if shared_intermediate_size else None
        )
        self.shared_expert_gate = nn.Linear(hidden_size, 1, bias=False) if shared_intermediate_size else None
        self.reduce = reduce

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        topk_weights, topk_ids = ops.moe_topk(self.gate(x), self.top_k, self.renormalize)
        out = self.experts(x, topk_weights, topk_ids)
        if self.shared_expert is not None:
            # the gate is replicated, so gating each rank's partial output gates their sum
            out = out + torch.sigmoid(self.shared_expert_gate(x)) * self.shared_expert(x)
        return self.reduce(out) if self.reduce is not None else out
