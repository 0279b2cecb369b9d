"""Mixture-of-experts decoders: Mixtral, Qwen2-MoE and Qwen3-MoE.

They are the Llama-family decoder (llama.py: attention, norms, rotary, the residual stream, TP,
fp8 linears, weight fusion) with a sparse MoE block (runtime/layers/moe.py) as the MLP of their
sparse layers; Qwen's `mlp_only_layers` / `decoder_sparse_step` leave some layers dense
(`MoeConfig.sparse_layers`). Qwen2-MoE adds qkv bias and a shared expert, Qwen3-MoE q/k norm
(the same switches as their dense families).

Checkpoints store one tensor per expert and projection (`mlp.experts.N.gate_proj.weight`;
Mixtral: `block_sparse_moe.experts.N.w1/w3/w2.weight`), and fp8 ones a `weight_scale_inv` beside
each. They are stacked here at load time into the fused kernel's [E, 2I, H] and [E, H, I]
tensors, each rank taking its rows of I; a checkpoint already stacked the way transformers >= 5
holds experts in memory (`mlp.experts.gate_up_proj` [E, 2I, H], `mlp.experts.down_proj`) loads too.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

import torch
from torch import nn

from radixlm.runtime.layers.moe import FusedMoE, SparseMoeBlock
from radixlm.runtime.models.llama import LlamaForCausalLM

EXPERT_TENSOR = re.compile(
    r"layers\.(\d+)\.mlp\.experts\.(\d+)\.(gate_proj|up_proj|down_proj)\.(weight|weight_scale_inv)"
)
STACKED_EXPERTS = re.compile(r"layers\.(\d+)\.mlp\.experts\.(gate_up_proj|down_proj)")
# Mixtral's checkpoint names -> the Qwen / Llama names the rest of loading knows
MIXTRAL_RENAMES = (
    (".block_sparse_moe.", ".mlp."),
    (".w1.", ".gate_proj."),
    (".w3.", ".up_proj."),
    (".w2.", ".down_proj."),
)


class MoeForCausalLM(LlamaForCausalLM):
    """Mixtral / Qwen2-MoE / Qwen3-MoE: `cfg.moe` says which layers are sparse and how they route."""

    def make_mlp(self, layer_id: int) -> nn.Module:
        moe = self.cfg.moe
        if moe is None or layer_id not in moe.sparse_layers:
            return super().make_mlp(layer_id)
        i0, i1 = self.tp.split(moe.intermediate_size, "moe_intermediate_size")
        shared = 0
        if moe.shared_expert_intermediate_size:
            s0, s1 = self.tp.split(moe.shared_expert_intermediate_size, "shared_expert_intermediate_size")
            shared = s1 - s0
        return SparseMoeBlock(self.cfg.hidden_size, moe, i1 - i0, shared, self.tp.all_reduce)

    # ------------------------------------------------------------------ weights
    def _mlp_width(self, name: str) -> int:
        if ".shared_expert." in name:
            return self.cfg.moe.shared_expert_intermediate_size
        return super()._mlp_width(name)

    def _expected_fills(self, param: str) -> int:
        # one checkpoint tensor per expert, and w13 takes a gate and an up tensor from each
        if ".experts.w13_weight" in param:
            return 2 * self.cfg.moe.num_experts
        if ".experts.w2_weight" in param:
            return self.cfg.moe.num_experts
        return super()._expected_fills(param)

    def load_weights(
        self, weights: Iterable[tuple[str, torch.Tensor]], filled: dict[str, int] | None = None
    ) -> None:
        """Expert tensors are stacked here; everything else (attention, norms, dense and shared
        MLPs, routers, embeddings) goes through the Llama loader, which then checks that every
        parameter, the stacked ones included, was filled exactly as often as it should be."""
        filled = {} if filled is None else filled

        def the_rest() -> Iterator[tuple[str, torch.Tensor]]:
            for name, tensor in weights:
                name = name.removeprefix("model.")
                if self.cfg.family == "mixtral":
                    for old, new in MIXTRAL_RENAMES:
                        name = name.replace(old, new)
                if not self._load_expert(name, tensor, filled):
                    yield name, tensor

        super().load_weights(the_rest(), filled)

    def _experts(self, layer: int, name: str) -> FusedMoE:
        mlp = self.layers[layer].mlp if layer < len(self.layers) else None
        if not isinstance(mlp, SparseMoeBlock):
            raise ValueError(f"unexpected weight {name!r} in checkpoint {self.cfg.path} (not a sparse layer)")
        return mlp.experts

    def _load_expert(self, name: str, tensor: torch.Tensor, filled: dict[str, int]) -> bool:
        """Copy `name` into its stacked expert tensor when it is an expert's; False otherwise."""
        one = EXPERT_TENSOR.fullmatch(name)
        stacked = STACKED_EXPERTS.fullmatch(name) if one is None else None
        if one is None and stacked is None:
            return False
        layer = int((one or stacked)[1])
        experts = self._experts(layer, name)
        i0, i1 = self.tp.split(self.cfg.moe.intermediate_size, "moe_intermediate_size")
        inter = i1 - i0
        prefix = f"layers.{layer}.mlp.experts."
        if stacked is not None:  # [E, 2I, H] gate then up, or [E, H, I]
            if stacked[2] == "gate_up_proj":
                full = self.cfg.moe.intermediate_size
                tensor = torch.cat([tensor[:, i0:i1], tensor[:, full + i0 : full + i1]], dim=1)
                self._copy(experts.w13_weight.data, tensor, name)
                filled[prefix + "w13_weight"] = filled.get(prefix + "w13_weight", 0) + 2 * experts.num_experts
            else:
                self._copy(experts.w2_weight.data, tensor[:, :, i0:i1], name)
                filled[prefix + "w2_weight"] = filled.get(prefix + "w2_weight", 0) + experts.num_experts
            return True
        expert, proj, kind = int(one[2]), one[3], one[4]
        if expert >= experts.num_experts:
            raise ValueError(f"unexpected weight {name!r} in checkpoint {self.cfg.path} (no expert {expert})")
        target = ("w2_weight" if proj == "down_proj" else "w13_weight") + (
            "_scale_inv" if kind == "weight_scale_inv" else ""
        )
        param = getattr(experts, target)
        if param is None:  # a scale in a checkpoint that config.json does not call fp8
            raise ValueError(f"unexpected weight {name!r} in checkpoint {self.cfg.path}")
        dest = param.data[expert]
        if kind == "weight":
            if proj == "down_proj":
                piece = tensor[:, i0:i1]
            else:
                piece, start = tensor[i0:i1], 0 if proj == "gate_proj" else inter
                dest = dest[start : start + inter]
        else:  # block scales: this rank's rows of I in whole blocks
            bn, bk = experts.block_size
            if proj == "down_proj":
                piece = tensor[:, self._in_blocks(name, self._rank_part(i0, i1), bk, "columns")]
            else:
                piece = tensor[self._in_blocks(name, self._rank_part(i0, i1), bn, "rows")]
                start = 0 if proj == "gate_proj" else inter
                rows = self._block_rows(name, slice(start, start + inter))
                dest = dest[rows]
        self._copy(dest, piece, name)
        filled[prefix + target] = filled.get(prefix + target, 0) + 1
        return True

    def _rank_part(self, start: int, stop: int) -> slice:
        """This rank's part of I as `_in_blocks` takes it (the whole: no block constraint)."""
        return slice(None) if self.tp.size == 1 else slice(start, stop)

    @staticmethod
    def _copy(dest: torch.Tensor, tensor: torch.Tensor, name: str) -> None:
        if dest.shape != tensor.shape:
            raise ValueError(f"weight {name!r} has shape {tuple(tensor.shape)}, expected {tuple(dest.shape)}")
        dest.copy_(tensor)
