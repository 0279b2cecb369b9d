"""FP8 weights: block-wise W8A8 linear layers (e4m3), from fp8 checkpoints or quantised at load.

The decoder's four matmuls per layer (qkv, o, gate_up, down; a MoE layer's stacked experts
likewise, runtime/layers/moe.py, through the fused MoE kernel) hold their weights as e4m3
with one fp32 scale per `block_n x block_k` block (Hugging Face's "fp8" format:
`weight` + `weight_scale_inv`, w ~= q * scale_inv), and quantise their input per token and
group of `block_k` at run time (`activation_scheme: dynamic`), except at decode-sized batches
up to a tuned M, where a W8A16 GEMV multiplies the unquantised input with the fp8 weights
(`ops.fp8_linear`). A decode step then reads half the weight bytes of bf16. Embeddings, the
LM head and the norms stay in the model dtype, as in SGLang and vLLM: they are a small share
of the bytes and the most sensitive. The LM head can opt in on its own
(`lm_head_quantization="fp8"`, `quantize_lm_head`), with or without the decoder in fp8: on a
large vocabulary it is the biggest single matrix a decode step reads (Llama 3's 128k x 4096).

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
        return Fp8Linear.from_weight(linear.weight.data, linear.bias, block_size)

    @staticmethod
    def from_weight(
        w: torch.Tensor,
        bias: torch.Tensor | None,
        block_size: tuple[int, int],
        rows_per_chunk: int | None = None,
    ) -> Fp8Linear:
        """An Fp8Linear holding `w` [N, K] quantised (the source is left as it is). With
        `rows_per_chunk` (a multiple of block_n) the rows are quantised a chunk at a time: the
        same blocks, so the same result, but the fp32 temporaries are one chunk's, not the whole
        matrix's (an LM head's fp32 copy alone is 2 GiB at Llama 3's 128k x 4096)."""
        n, k = w.shape
        bn = block_size[0]
        if rows_per_chunk is not None and (rows_per_chunk <= 0 or rows_per_chunk % bn):
            raise ValueError(f"rows_per_chunk {rows_per_chunk} is not a positive multiple of block_n {bn}")
        with torch.device("meta"):  # shapes only: the tensors are made below, on w's device
            out = Fp8Linear(k, n, bias is not None, block_size, w.dtype)
        if rows_per_chunk is None or rows_per_chunk >= n:
            q, scale = reference.block_quant_fp8(w, block_size)
        else:
            q = torch.empty(out.weight.shape, dtype=reference.FP8_DTYPE, device=w.device)
            scale = torch.empty(out.weight_scale_inv.shape, dtype=torch.float32, device=w.device)
            for start in range(0, n, rows_per_chunk):
                q_part, s_part = reference.block_quant_fp8(w[start : start + rows_per_chunk], block_size)
                q[start : start + rows_per_chunk] = q_part
                scale[start // bn : start // bn + s_part.shape[0]] = s_part
        out.weight = nn.Parameter(q, requires_grad=False)
        out.weight_scale_inv = nn.Parameter(scale, requires_grad=False)
        if bias is not None:
            out.bias = nn.Parameter(bias.data, requires_grad=False)
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


# Rows of the LM head quantised at a time: 64 row blocks of 128 (the fp32 temporaries of 8192
# rows of 4096 are 128 MiB, against 2 GiB for all of Llama 3's 128k rows at once)
LM_HEAD_ROWS_PER_CHUNK = 64 * DEFAULT_BLOCK[0]


@torch.no_grad()
def quantize_lm_head(model: nn.Module, block_size: tuple[int, int] = DEFAULT_BLOCK) -> Fp8Linear:
    """Give `model` (a LlamaForCausalLM or subclass) an fp8 LM head: `model.lm_head` becomes an
    Fp8Linear over this tensor-parallel rank's vocabulary rows, which `compute_logits` then runs
    through `ops.fp8_linear`. An untied head's bf16 weight is dropped; a tied model keeps its
    embedding table for lookups and the head gets a separate fp8 copy of it (about half the
    table's bytes more: lookups read one row per token, the head reads all of them per step)."""
    if isinstance(model.lm_head, Fp8Linear):  # already fp8: its weight is no source to quantise
        return model.lm_head
    source = model.embed_tokens.weight if model.lm_head is None else model.lm_head.weight
    rows = max(1, LM_HEAD_ROWS_PER_CHUNK // block_size[0]) * block_size[0]
    model.lm_head = Fp8Linear.from_weight(source.data, None, block_size, rows)
    return model.lm_head
