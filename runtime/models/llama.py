"""Llama-family decoder (Llama 2/3/3.1, Mistral; Qwen2 and Qwen3 set two switches).

Qwen2 adds a bias to q/k/v; Qwen3 adds an RMSNorm over each head of q and k before RoPE.
q/k/v and gate/up projections are fused at load time. The model knows nothing about
batching: attention metadata comes from the `ForwardBatch`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import torch
from torch import nn

from radixlm.runtime.config import ModelConfig
from radixlm.runtime.layers.decoder_blocks import DenseLinear, GatedMLP, RMSNorm, RotaryEmbedding
from radixlm.runtime.layers.quantization import Fp8Linear
from radixlm.runtime.model_executor.distributed import TPGroup
from radixlm.runtime.model_executor.forward_batch import ForwardBatch

KV_SCALE_NAME = re.compile(r"layers\.(\d+)\.self_attn\.([kv])_scale")


class Attention(nn.Module):
    """This rank's query heads and their KV heads (all of them at tp=1); o_proj is row-parallel."""

    def __init__(self, cfg: ModelConfig, layer_id: int, rotary: RotaryEmbedding, tp: TPGroup) -> None:
        super().__init__()
        self.layer_id, self.tp = layer_id, tp
        q0, q1 = tp.split(cfg.num_heads, "number of attention heads")
        k0, k1 = tp.kv_heads(cfg.num_kv_heads)
        self.num_heads, self.num_kv_heads, self.head_dim = q1 - q0, k1 - k0, cfg.head_dim
        self.q_size = self.num_heads * cfg.head_dim
        self.kv_size = self.num_kv_heads * cfg.head_dim
        self.qkv_proj = DenseLinear(cfg.hidden_size, self.q_size + 2 * self.kv_size, bias=cfg.attention_bias)
        self.o_proj = DenseLinear(self.q_size, cfg.hidden_size, bias=False)
        self.q_norm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps) if cfg.qk_norm else None
        self.k_norm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps) if cfg.qk_norm else None
        self.rotary = rotary

    def forward(self, x: torch.Tensor, batch: ForwardBatch) -> torch.Tensor:
        q, k, v = self.qkv_proj(x).split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        q = q.view(-1, self.num_heads, self.head_dim)
        k = k.view(-1, self.num_kv_heads, self.head_dim)
        v = v.view(-1, self.num_kv_heads, self.head_dim)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        # rotary embedding, fused with the K/V store by the attention backend
        out = batch.attn_backend.forward(
            q, k, v, self.layer_id, batch, rope=(self.rotary.cos, self.rotary.sin)
        )
        return self.tp.all_reduce(self.o_proj(out.reshape(-1, self.q_size)))


class DecoderLayer(nn.Module):
    def __init__(
        self, cfg: ModelConfig, layer_id: int, rotary: RotaryEmbedding, tp: TPGroup, mlp: nn.Module
    ) -> None:
        """`mlp`: the dense GatedMLP, or a mixture-of-experts model's sparse block (models/moe.py);
        either sums its tensor-parallel partial outputs itself."""
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg, layer_id, rotary, tp)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = mlp

    def forward(
        self, h: torch.Tensor, residual: torch.Tensor | None, batch: ForwardBatch
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Pre-norm block over a separate residual stream: returns (mlp output, residual);
        the next layer's norm adds the two (HF computes the same sums in the same order)."""
        if residual is None:
            residual, h = h, self.input_layernorm(h)
        else:
            h, residual = self.input_layernorm(h, residual)
        h = self.self_attn(h, batch)
        h, residual = self.post_attention_layernorm(h, residual)
        return self.mlp(h), residual


class LlamaForCausalLM(nn.Module):
    # checkpoint name fragment -> (fused parameter fragment, shard index)
    stacked_params = {
        ".q_proj.": (".qkv_proj.", 0),
        ".k_proj.": (".qkv_proj.", 1),
        ".v_proj.": (".qkv_proj.", 2),
        ".gate_proj.": (".gate_up_proj.", 0),
        ".up_proj.": (".gate_up_proj.", 1),
    }

    def __init__(self, cfg: ModelConfig, max_positions: int, tp: TPGroup | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.tp = tp = tp or TPGroup()
        # vocabulary rows [vocab_start, vocab_end) of the embedding and LM head live on this rank
        self.vocab_start, self.vocab_end = tp.split(cfg.vocab_size, "vocab_size")
        local_vocab = self.vocab_end - self.vocab_start
        self.embed_tokens = nn.Embedding(local_vocab, cfg.hidden_size)
        rotary = RotaryEmbedding(cfg.head_dim, max_positions, cfg.rope)
        self.layers = nn.ModuleList(
            DecoderLayer(cfg, i, rotary, tp, self.make_mlp(i)) for i in range(cfg.num_layers)
        )
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.lm_head = (
            None if cfg.tie_word_embeddings else nn.Linear(cfg.hidden_size, local_vocab, bias=False)
        )
        attn = self.layers[0].self_attn
        self.local_num_heads, self.local_num_kv_heads = attn.num_heads, attn.num_kv_heads
        # layer -> (k_scale, v_scale) for an fp8 KV cache, when the checkpoint has calibrated ones
        self.kv_scales: dict[int, tuple[float, float]] = {}

    def make_mlp(self, layer_id: int) -> nn.Module:
        """Layer `layer_id`'s MLP: this rank's columns of the dense gated MLP (the MoE models
        override this for their sparse layers)."""
        i0, i1 = self.tp.split(self.cfg.intermediate_size, "intermediate_size")
        return GatedMLP(self.cfg.hidden_size, i1 - i0, self.tp.all_reduce)

    def forward(self, batch: ForwardBatch) -> torch.Tensor:
        """Final hidden states of the rows `batch.logits_indices` selects."""
        h, residual = self.embed(batch.input_ids), None
        for layer in self.layers:
            h, residual = layer(h, residual, batch)
        h, _ = self.norm(h[batch.logits_indices], residual[batch.logits_indices])
        return h

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        if self.tp.size == 1:
            return self.embed_tokens(ids)
        # vocab-parallel: ids outside this rank's rows look up row 0 and are zeroed; the sum over
        # ranks leaves each token's one real row
        local = ids - self.vocab_start
        mine = (local >= 0) & (local < self.vocab_end - self.vocab_start)
        h = self.embed_tokens(torch.where(mine, local, 0)) * mine[:, None].to(self.embed_tokens.weight.dtype)
        return self.tp.all_reduce(h)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        if isinstance(self.lm_head, Fp8Linear):  # lm_head_quantization="fp8" (quantize_lm_head)
            logits = self.lm_head(hidden)
        else:
            weight = self.embed_tokens.weight if self.lm_head is None else self.lm_head.weight
            logits = hidden @ weight.t()
        return self.tp.all_gather_last(logits.float())

    # ------------------------------------------------------------------ weights
    def _shard_slice(self, target: str, fused: str, shard: int) -> slice:
        """Rows of this rank's fused q/k/v or gate/up weight `target` that hold checkpoint tensor
        `shard` (the gate/up split read off the MLP that owns the weight: a dense layer's and a
        shared expert's widths differ)."""
        if fused == ".qkv_proj.":
            attn = self.layers[0].self_attn
            q, kv = attn.q_size, attn.kv_size
            bounds = [0, q, q + kv, q + 2 * kv]
        else:
            inter = self.get_submodule(target.split(fused)[0]).intermediate_size
            bounds = [0, inter, 2 * inter]
        return slice(bounds[shard], bounds[shard + 1])

    def _mlp_width(self, name: str) -> int:
        """The full (unsharded) intermediate size of the gated MLP that checkpoint tensor `name`
        belongs to (the MoE models' shared expert has its own)."""
        return self.cfg.intermediate_size

    def _expected_fills(self, param: str) -> int:
        """How many checkpoint tensors fill parameter `param` (fused ones take several)."""
        return 3 if ".qkv_proj." in param else 2 if ".gate_up_proj." in param else 1

    def _tp_ranges(self, name: str) -> tuple[slice, slice]:
        """This rank's (rows, columns) of a full checkpoint weight (Megatron layout)."""
        tp, cfg, full = self.tp, self.cfg, slice(None)
        hd = cfg.head_dim
        if ".q_proj." in name:
            a, b = tp.split(cfg.num_heads, "number of attention heads")
            return slice(a * hd, b * hd), full
        if ".k_proj." in name or ".v_proj." in name:
            a, b = tp.kv_heads(cfg.num_kv_heads)
            return slice(a * hd, b * hd), full
        if ".o_proj." in name:
            a, b = tp.split(cfg.num_heads, "number of attention heads")
            return full, slice(a * hd, b * hd)
        if ".gate_proj." in name or ".up_proj." in name:
            return slice(*tp.split(self._mlp_width(name), "intermediate_size")), full
        if ".down_proj." in name:
            return full, slice(*tp.split(self._mlp_width(name), "intermediate_size"))
        if name in ("embed_tokens.weight", "lm_head.weight"):
            return slice(self.vocab_start, self.vocab_end), full
        return full, full  # norms: replicated

    def _tp_piece(self, name: str, tensor: torch.Tensor) -> torch.Tensor:
        """This rank's slice of a full checkpoint tensor (all of it at tp=1). An fp8 block-scale
        tensor is cut at the same place in block units, so the rank's slice must start and end
        on block boundaries (no block is shared by two ranks)."""
        if self.tp.size == 1:
            return tensor
        rows, cols = self._tp_ranges(name)
        if rows == slice(None) and cols == slice(None):
            return tensor
        if name.endswith(".weight_scale_inv"):
            bn, bk = self.cfg.checkpoint_fp8_block
            rows, cols = self._in_blocks(name, rows, bn, "rows"), self._in_blocks(name, cols, bk, "columns")
        return tensor[rows] if tensor.dim() == 1 else tensor[rows, cols]  # 1-D: a q/k/v bias

    def _in_blocks(self, name: str, part: slice, block: int, what: str) -> slice:
        if part == slice(None):
            return part
        if part.start % block or part.stop % block:
            raise ValueError(
                f"fp8 checkpoint {self.cfg.path}: tensor-parallel rank {self.tp.rank} takes {what} "
                f"[{part.start}, {part.stop}) of {name[: -len('_scale_inv')]!r}, not on "
                f"weight_block_size {block} boundaries; use a tensor-parallel size that splits "
                f"whole blocks"
            )
        return slice(part.start // block, part.stop // block)

    def _block_rows(self, name: str, rows: slice) -> slice:
        """The rows of an fp8 block-scale tensor that a fused shard's weight rows own (every
        shard must start on a block boundary, so no block straddles two shards)."""
        bn = self.cfg.checkpoint_fp8_block[0]
        if rows.start % bn:
            raise ValueError(
                f"fp8 checkpoint {self.cfg.path}: {name!r} starts at row {rows.start} of a fused "
                f"weight, not a multiple of weight_block_size {bn}; cannot fuse its block scales"
            )
        return slice(rows.start // bn, -(-rows.stop // bn))

    def load_weights(
        self, weights: Iterable[tuple[str, torch.Tensor]], filled: dict[str, int] | None = None
    ) -> None:
        """Copy checkpoint tensors in, fusing q/k/v and gate/up. Every parameter must be
        filled exactly once; anything missing or unexpected is an error. `filled`: the fill
        counts of parameters a subclass fills itself (the MoE models' stacked experts, from a
        filter over `weights`, so the dict is complete once `weights` is exhausted)."""
        params = dict(self.named_parameters())
        filled = filled if filled is not None else {}
        expected_shards = {n: self._expected_fills(n) for n in params}
        for name, tensor in weights:
            name = name.removeprefix("model.")
            if "rotary_emb.inv_freq" in name:
                continue
            if name == "lm_head.weight" and self.cfg.tie_word_embeddings:
                continue  # tied: some checkpoints still store a copy
            kv_scale = KV_SCALE_NAME.fullmatch(name)
            if kv_scale:  # "layers.N.self_attn.k_scale": a scalar for the fp8 KV cache
                layer, which = int(kv_scale[1]), kv_scale[2]
                k, v = self.kv_scales.get(layer, (1.0, 1.0))
                self.kv_scales[layer] = (float(tensor), v) if which == "k" else (k, float(tensor))
                continue
            target, rows = name, slice(None)
            for frag, (fused, shard) in self.stacked_params.items():
                if frag in name:
                    target = name.replace(frag, fused)
                    rows = self._shard_slice(target, fused, shard) if target in params else slice(None)
                    break
            param = params.get(target)
            if param is None:
                raise ValueError(f"unexpected weight {name!r} in checkpoint {self.cfg.path}")
            tensor = self._tp_piece(name, tensor)
            if target.endswith(".weight_scale_inv") and rows != slice(None):
                rows = self._block_rows(name, rows)
            dest = param.data[rows]
            if dest.shape != tensor.shape:
                raise ValueError(
                    f"weight {name!r} has shape {tuple(tensor.shape)}, expected {tuple(dest.shape)}"
                )
            dest.copy_(tensor)
            filled[target] = filled.get(target, 0) + 1
        missing = [n for n, count in expected_shards.items() if filled.get(n, 0) != count]
        if missing:
            raise ValueError(
                f"checkpoint {self.cfg.path} lacks weights for: {', '.join(sorted(missing)[:8])}"
            )
