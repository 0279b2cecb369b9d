"""A random-weight Qwen3-MoE Hugging Face folder, generated on the device and written shard by shard.

bench_moe.py's model: a Qwen3-30B-A3B-shaped checkpoint (or fewer layers, or a tiny one for a CPU
smoke run) whose tensors are drawn on the device (a 30B model drawn on the CPU would take longer
than the benchmark), moved to the host one layer at a time and saved as one safetensors shard per
layer with a `model.safetensors.index.json`: the layout of a real Qwen checkpoint, one tensor per
expert and projection (`model.layers.L.mlp.experts.E.gate_proj.weight`), so both radixlm's loader
and transformers' read it as they would the real model. Matrices are N(0, std), norm gains 1. The
tokenizer files are radixlm's offline test tokenizer (prompts are token ids; its vocabulary is
smaller than the model's, which nothing here needs).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import torch

QWEN3_30B_A3B = dict(
    hidden_size=2048,
    num_hidden_layers=48,
    num_experts=128,
    num_experts_per_tok=8,
    moe_intermediate_size=768,
    intermediate_size=6144,  # dense MLP size; unused (no mlp_only_layers)
    num_attention_heads=32,
    num_key_value_heads=4,
    head_dim=128,
    vocab_size=151936,
    max_position_embeddings=40960,
    rms_norm_eps=1e-6,
    norm_topk_prob=True,
    decoder_sparse_step=1,
    mlp_only_layers=[],
    tie_word_embeddings=False,
    rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
)
TINY = dict(
    QWEN3_30B_A3B,
    hidden_size=64,
    num_hidden_layers=2,
    num_experts=8,
    num_experts_per_tok=2,
    moe_intermediate_size=32,
    intermediate_size=128,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    vocab_size=8192,
    max_position_embeddings=4096,
)


def layer_tensors(cfg: dict, layer: int, gen: torch.Generator, device: str, dtype: torch.dtype, std: float):
    """One decoder layer's checkpoint tensors, drawn on `device`, returned on the host."""
    h, heads, kv, hd = (
        cfg["hidden_size"],
        cfg["num_attention_heads"],
        cfg["num_key_value_heads"],
        cfg["head_dim"],
    )
    e, inter = cfg["num_experts"], cfg["moe_intermediate_size"]

    def rand(*shape: int) -> torch.Tensor:
        return (torch.randn(shape, generator=gen, device=device, dtype=torch.float32) * std).to(dtype)

    pre = f"model.layers.{layer}."
    out = {
        pre + "self_attn.q_proj.weight": rand(heads * hd, h),
        pre + "self_attn.k_proj.weight": rand(kv * hd, h),
        pre + "self_attn.v_proj.weight": rand(kv * hd, h),
        pre + "self_attn.o_proj.weight": rand(h, heads * hd),
        pre + "self_attn.q_norm.weight": torch.ones(hd, dtype=dtype),
        pre + "self_attn.k_norm.weight": torch.ones(hd, dtype=dtype),
        pre + "input_layernorm.weight": torch.ones(h, dtype=dtype),
        pre + "post_attention_layernorm.weight": torch.ones(h, dtype=dtype),
        pre + "mlp.gate.weight": rand(e, h),
    }
    # drawn stacked (three launches, three copies to the host), saved one tensor per expert; the
    # clones give each its own storage (safetensors refuses tensors that share memory)
    for proj, shape in (("gate_proj", (inter, h)), ("up_proj", (inter, h)), ("down_proj", (h, inter))):
        stacked = rand(e, *shape).cpu()
        for i in range(e):
            out[f"{pre}mlp.experts.{i}.{proj}.weight"] = stacked[i].clone()
    return {k: v.cpu() for k, v in out.items()}


def build_folder(
    cfg: dict,
    folder: str | Path,
    device: str,
    dtype: torch.dtype = torch.bfloat16,
    seed: int = 0,
    std: float = 0.02,
) -> Path:
    """Write the checkpoint of `cfg` (QWEN3_30B_A3B's keys) to `folder`, replacing it."""
    from safetensors.torch import save_file
    from transformers import Qwen3MoeConfig

    from radixlm.testing import build_tokenizer_files

    folder = Path(folder)
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    t0 = time.perf_counter()
    gen = torch.Generator(device=device).manual_seed(seed)
    weight_map: dict[str, str] = {}
    total = 0

    def save(tensors: dict[str, torch.Tensor], name: str) -> None:
        nonlocal total
        save_file(tensors, str(folder / name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(tensors, name))
        total += sum(t.numel() * t.element_size() for t in tensors.values())

    h, vocab = cfg["hidden_size"], cfg["vocab_size"]
    embed = (torch.randn((vocab, h), generator=gen, device=device) * std).to(dtype).cpu()
    head = (torch.randn((vocab, h), generator=gen, device=device) * std).to(dtype).cpu()
    save(
        {
            "model.embed_tokens.weight": embed,
            "lm_head.weight": head,
            "model.norm.weight": torch.ones(h, dtype=dtype),
        },
        "model-embed.safetensors",
    )
    layers = cfg["num_hidden_layers"]
    for layer in range(layers):
        save(layer_tensors(cfg, layer, gen, device, dtype, std), f"model-layer{layer:03d}.safetensors")
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=1)
    )
    hf_cfg = Qwen3MoeConfig(
        **cfg, bos_token_id=None, eos_token_id=0, pad_token_id=0, architectures=["Qwen3MoeForCausalLM"]
    )
    hf_cfg.dtype = str(dtype).removeprefix("torch.")
    hf_cfg.save_pretrained(folder)
    for f in build_tokenizer_files().iterdir():
        if f.is_file():
            shutil.copy(f, folder / f.name)
    print(
        f"built {folder}: {layers} layers, {total / 1e9:.2f} GB in {time.perf_counter() - t0:.1f} s",
        flush=True,
    )
    return folder
