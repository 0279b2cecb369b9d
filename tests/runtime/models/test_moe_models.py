"""Mixture-of-experts models (runtime/models/moe.py) on the tiny random Mixtral (top-2 of 8),
Qwen3-MoE (top-4 of 16, renormalised, a dense middle layer) and Qwen2-MoE (shared expert)
checkpoints: greedy tokens equal Hugging Face transformers' for single requests, batches, cached
prefixes (CPU, fp32: the reference MoE path); which layers are sparse; expert
stacking from both checkpoint layouts; fp8 experts (online and from a block-fp8 checkpoint)."""

from __future__ import annotations

import json
import random
import shutil

import pytest
import torch
from fp8_checkpoints import agreement, fp8_checkpoint
from helpers import assert_greedy_matches_hf, get_engine, hf_greedy

from radixlm.runtime.config import ModelConfig, MoeConfig
from radixlm.runtime.kernels import reference
from radixlm.runtime.layers.moe import FusedMoE, SparseMoeBlock
from radixlm.runtime.layers.quantization import quantize_linears
from radixlm.runtime.models import iter_safetensors, load_model
from radixlm.testing import build_tiny_model

GREEDY = {"max_new_tokens": 12, "temperature": 0, "ignore_eos": True}


def random_prompts(count: int, lo: int, hi: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(4, 8192) for _ in range(rng.randint(lo, hi))] for _ in range(count)]


def cpu_model(path, quantization=None):
    return load_model(ModelConfig.from_path(path), torch.float32, torch.device("cpu"), 256, quantization)


# ------------------------------------------------------------------------------ HF parity
@pytest.mark.parametrize("name", ["mixtral", "qwen3-moe"])
def test_single_request_batch_and_cached_prefix_match_hf(name):
    engine = get_engine(name)
    ids = random_prompts(1, 40, 40, seed=1)[0]
    out = engine.generate(input_ids=ids, sampling_params={**GREEDY, "max_new_tokens": 20})
    assert out["output_ids"] == hf_greedy(name, ids, 20)
    # a batch of mixed lengths: experts get uneven numbers of tokens, some none
    prompts = random_prompts(6, 2, 70, seed=2)
    outs = engine.generate(input_ids=prompts, sampling_params=GREEDY)
    for p, o in zip(prompts, outs):
        assert_greedy_matches_hf(name, p, o["output_ids"])
    # extends over a cached prefix: the MoE block sees only the new tokens
    prefix = random_prompts(1, 60, 60, seed=3)[0]
    engine.generate(input_ids=prefix, sampling_params={"max_new_tokens": 0})  # warm the cache
    prompts = [prefix + s for s in random_prompts(4, 1, 30, seed=4)]
    outs = engine.generate(input_ids=prompts, sampling_params=GREEDY)
    for p, o in zip(prompts, outs):
        assert o["meta_info"]["cached_tokens"] >= 60
        assert_greedy_matches_hf(name, p, o["output_ids"])


def test_qwen2_moe_shared_expert_matches_hf():
    prompts = random_prompts(3, 5, 50, seed=5)
    outs = get_engine("qwen2-moe").generate(input_ids=prompts, sampling_params=GREEDY)
    for p, o in zip(prompts, outs):
        assert_greedy_matches_hf("qwen2-moe", p, o["output_ids"])


# ------------------------------------------------------------------------------ structure
def test_sparse_layers_follow_hf_rules():
    qwen = ModelConfig.from_path(build_tiny_model("qwen3-moe"))
    assert qwen.family == "qwen3_moe" and qwen.qk_norm
    assert qwen.moe == MoeConfig(16, 4, 32, True, (0, 2), 0)  # mlp_only_layers [1]
    mixtral = ModelConfig.from_path(build_tiny_model("mixtral"))
    assert mixtral.moe == MoeConfig(8, 2, 64, True, (0, 1), 0)
    qwen2 = ModelConfig.from_path(build_tiny_model("qwen2-moe"))
    assert qwen2.attention_bias and qwen2.moe.shared_expert_intermediate_size == 64
    assert not qwen2.moe.renormalize
    raw = {"num_experts": 4, "moe_intermediate_size": 8, "decoder_sparse_step": 2, "mlp_only_layers": [3]}
    assert MoeConfig.from_raw("qwen3_moe", raw, 6).sparse_layers == (1, 5)
    model = cpu_model(build_tiny_model("qwen3-moe"))
    kinds = [type(layer.mlp).__name__ for layer in model.layers]
    assert kinds == ["SparseMoeBlock", "GatedMLP", "SparseMoeBlock"]
    experts = model.layers[0].mlp.experts
    assert experts.w13_weight.shape == (16, 64, 64) and experts.w2_weight.shape == (16, 64, 32)


def test_experts_are_stacked_from_per_expert_tensors():
    path = build_tiny_model("mixtral")
    model = cpu_model(path)
    tensors = dict(iter_safetensors(path))
    experts = model.layers[1].mlp.experts
    for e in (0, 5):
        w1, w3, w2 = (
            tensors[f"model.layers.1.block_sparse_moe.experts.{e}.{w}.weight"] for w in ("w1", "w3", "w2")
        )
        assert torch.equal(experts.w13_weight[e], torch.cat([w1, w3]))
        assert torch.equal(experts.w2_weight[e], w2)
    assert torch.equal(
        model.layers[1].mlp.gate.weight, tensors["model.layers.1.block_sparse_moe.gate.weight"]
    )


def test_stacked_checkpoint_layout_loads_the_same(tmp_path):
    """transformers >= 5 keeps experts stacked in memory (`mlp.experts.gate_up_proj` [E, 2I, H]);
    a folder saved that way loads into the same weights."""
    from safetensors.torch import save_file

    src = build_tiny_model("qwen3-moe")
    folder = tmp_path / "stacked"
    shutil.copytree(src, folder)
    tensors = dict(iter_safetensors(src))
    for layer in (0, 2):
        pre = f"model.layers.{layer}.mlp.experts."
        gate, up, down = (
            torch.stack([tensors.pop(f"{pre}{e}.{p}.weight") for e in range(16)])
            for p in ("gate_proj", "up_proj", "down_proj")
        )
        tensors[pre + "gate_up_proj"], tensors[pre + "down_proj"] = torch.cat([gate, up], dim=1), down
    save_file(tensors, str(folder / "model.safetensors"))
    a, b = cpu_model(src), cpu_model(folder)
    for (name, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.equal(p, q), name


def test_missing_or_extra_expert_is_an_error(tmp_path):
    from safetensors.torch import save_file

    src = build_tiny_model("qwen3-moe")
    folder = tmp_path / "m"
    shutil.copytree(src, folder)
    tensors = dict(iter_safetensors(src))
    tensors.pop("model.layers.2.mlp.experts.7.up_proj.weight")
    save_file(tensors, str(folder / "model.safetensors"))
    with pytest.raises(ValueError, match=r"layers\.2\.mlp\.experts\.w13_weight"):
        cpu_model(folder)
    tensors["model.layers.2.mlp.experts.7.up_proj.weight"] = torch.zeros(32, 64)
    tensors["model.layers.1.mlp.experts.0.up_proj.weight"] = torch.zeros(32, 64)  # layer 1 is dense
    save_file(tensors, str(folder / "model.safetensors"))
    with pytest.raises(ValueError, match="not a sparse layer"):
        cpu_model(folder)


# ------------------------------------------------------------------------------------ fp8
def test_online_fp8_quantises_the_experts():
    model = cpu_model(build_tiny_model("qwen3-moe"))
    plain = model.layers[2].mlp.experts.w13_weight.detach().clone()
    assert quantize_linears(model) == 2 * 3 + 2 + 2  # qkv and o a layer, the dense MLP, 2 expert stacks
    experts = model.layers[2].mlp.experts
    assert experts.w13_weight.dtype == reference.FP8_DTYPE and experts.block_size == (128, 128)
    q, s = reference.block_quant_fp8(plain[3], (128, 128))
    assert torch.equal(experts.w13_weight[3].view(torch.uint8), q.view(torch.uint8))
    assert torch.equal(experts.w13_weight_scale_inv[3], s)


def test_fp8_moe_checkpoint_loads_block_scales_exactly(tmp_path):
    src = build_tiny_model("qwen3-moe")
    folder = fp8_checkpoint(src, tmp_path / "fp8", [16, 32])
    model = cpu_model(folder)
    plain = cpu_model(src)
    for layer in (0, 2):
        got, want = model.layers[layer].mlp.experts, plain.layers[layer].mlp.experts
        assert isinstance(model.layers[layer].mlp, SparseMoeBlock) and isinstance(got, FusedMoE)
        for e in range(16):
            # 16-row blocks never straddle gate and up (I = 32), so per-tensor = per-stack quantisation
            for name in ("w13_weight", "w2_weight"):
                q, s = reference.block_quant_fp8(getattr(want, name)[e], (16, 32))
                assert torch.equal(getattr(got, name)[e].view(torch.uint8), q.view(torch.uint8)), (layer, e)
                assert torch.equal(getattr(got, name + "_scale_inv")[e], s), (layer, e)
    top1, overlap = agreement(str(src), str(folder), {})
    assert top1 >= 0.85 and overlap >= 0.85, (top1, overlap)


def test_fp8_moe_checkpoint_whose_blocks_straddle_gate_and_up_is_refused(tmp_path):
    folder = fp8_checkpoint(build_tiny_model("qwen3-moe"), tmp_path / "fp8", [48, 32])
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["quantization_config"]["weight_block_size"] == [48, 32]
    with pytest.raises(ValueError, match="not a multiple of weight_block_size 48"):
        cpu_model(folder)
