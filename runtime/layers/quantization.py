"""FP8 weights: block-wise W8A8 linear layers (e4m3), from fp8 checkpoints or quantised at load.

The decoder's four matmuls per layer (qkv, o, gate_up, down; a MoE layer's stacked experts
likewise, runtime/layers/moe.py, through the fused MoE kernel) hold their weights as e4m3
with one fp32 scale per `block_n x block_k` block (Hugging Face's "fp8" format:
`weight` + `weight_scale_inv`, w ~= q * scale_inv), and quantise their input per token and
group of `block_k` at run time (`activation_scheme: dynamic`), except at decode-sized batches
up to a tuned M, where a W8A16 GEMV multiplies the unquantised input with the fp8 weights
(`ops.fp8_linear`). A decode step then reads half the weight bytes of bf16. Embeddings, the
LM head and the norms stay in the model dtype, as in SGLang and vLLM: they are a small share
of the bytes and the most sensitive.

Two ways in: a checkpoint whose config.json says `quantization_config.quant_method: fp8`
loads as it is stored (`replace_linears` before loading); `quantization="fp8"` quantises a
bf16/fp16/fp32 checkpoint after loading, layer by layer (`quantize_linears`).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from radixlm.runtime.kernels import ops, reference
from radixlm.runtime.layers.moe import FusedMoE

DEFAULT_BLOCK = (128, 128)
QUANTIZED_LINEARS = ("qkv_proj", "o_proj", "gate_up_proj", "down_proj")


class Fp8Linear(nn.Module):
    """y = x @ w^T (+ bias) with w block-quantised to e4m3 and x quantised per token group
    (unquantised at small M: see ops.fp8_linear)."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool,
        block_size: tuple[int, int],
        bias_dtype: torch.dtype,
    ) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.block_size = tuple(block_size)
        bn, bk = self.block_size
        self.weight = nn.Parameter(
            torch.empty(out_features, in_features, dtype=reference.FP8_DTYPE), requires_grad=False
        )
        self.weight_scale_inv = nn.Parameter(
            torch.empty(math.ceil(out_features / bn), math.ceil(in_features / bk), dtype=torch.float32),
            requires_grad=False,
        )
        self.bias = (
            nn.Parameter(torch.empty(out_features, dtype=bias_dtype), requires_grad=False) if bias else None
        )

    @staticmethod
    def quantize(linear: nn.Linear, block_size: tuple[int, int]) -> Fp8Linear:
        """An Fp8Linear holding `linear`'s weights, quantised on their device."""
        w = linear.weight.data
        out = Fp8Linear(linear.in_features, linear.out_features, linear.bias is not None, block_size, w.dtype)
        out.weight.data, out.weight_scale_inv.data = reference.block_quant_fp8(w, block_size)
        if linear.bias is not None:
            out.bias.data = linear.bias.data
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ops.fp8_linear(x, self.weight, self.weight_scale_inv, self.bias, self.block_size)

    def forward_silu_gated(self, gate_up: torch.Tensor) -> torch.Tensor:
        """forward(silu_and_mul(gate_up)) for a gated MLP's down projection: at W8A8 sizes the
        activation and this layer's input quantisation run as one kernel (ops.fp8_silu_gated_linear)."""
        return ops.fp8_silu_gated_linear(
            gate_up, self.weight, self.weight_scale_inv, self.bias, self.block_size
        )

    def extra_repr(self) -> str:
        return (
            f"in={self.in_features}, out={self.out_features}, block={self.block_size}, "
            f"bias={self.bias is not None}"
        )


def _targets(model: nn.Module) -> list[tuple[nn.Module, str, nn.Linear]]:
    return [
        (module, name, child)
        for module in model.modules()
        for name, child in module.named_children()
        if name in QUANTIZED_LINEARS and isinstance(child, nn.Linear)
    ]


def replace_linears(model: nn.Module, block_size: tuple[int, int]) -> None:
    """Swap the decoder's linears for empty Fp8Linears (meta or real), and a MoE model's stacked
    experts for empty fp8 ones (runtime/layers/moe.py), to load an fp8 checkpoint into."""
    for module in model.modules():
        if isinstance(module, FusedMoE):
            module.make_fp8(block_size)
    for parent, name, linear in _targets(model):
        setattr(
            parent,
            name,
            Fp8Linear(
                linear.in_features,
                linear.out_features,
                linear.bias is not None,
                block_size,
                linear.weight.dtype,
            ).to(linear.weight.device),
        )


@torch.no_grad()
def quantize_linears(model: nn.Module, block_size: tuple[int, int] = DEFAULT_BLOCK) -> int:
    """Quantise the decoder's linears and a MoE model's experts in place, one at a time (peak
    memory: one layer's fp32 copy on top of the model). Returns how many linears and expert
    stacks were quantised."""
    experts = [m for m in model.modules() if isinstance(m, FusedMoE)]
    for module in experts:
        module.quantize_fp8(block_size)
    targets = _targets(model)
    count = len(targets) + len(experts)
    while targets:  # popped, so each bf16 weight is freed once its fp8 copy is in place
        parent, name, linear = targets.pop()
        setattr(parent, name, Fp8Linear.quantize(linear, block_size))
    return count
