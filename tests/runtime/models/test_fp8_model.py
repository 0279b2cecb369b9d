"""FP8 on the tiny models (CPU: the PyTorch reference path of the same math the Triton
kernels run on GPU): online weight quantisation (`quantization="fp8"`), loading a Hugging
Face block-quantised fp8 checkpoint (fused q/k/v and gate/up block scales), the fp8 KV cache
(`kv_cache_dtype="fp8_e4m3"`, per-layer scales from the checkpoint), agreement with the
unquantised model, and clear errors for checkpoints we cannot load."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from fp8_checkpoints import agreement, fp8_checkpoint

from radixlm import Engine
from radixlm.runtime.config import ModelConfig
from radixlm.runtime.kernels import reference
from radixlm.runtime.layers.quantization import Fp8Linear
from radixlm.runtime.models import iter_safetensors, load_model
from radixlm.testing import build_tiny_model


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_online_fp8_agrees_with_the_unquantised_model(arch):
    path = str(build_tiny_model(arch))
    top1, overlap = agreement(path, path, {"quantization": "fp8"})
    # fp32 vs bf16 on these random tiny models: 95% top-1; e4m3 keeps 3 mantissa bits
    assert top1 >= 0.90 and overlap >= 0.85, (top1, overlap)


def test_fp8_checkpoint_loads_fused_block_scales_exactly(tmp_path):
    src = build_tiny_model("llama")
    folder = fp8_checkpoint(src, tmp_path / "fp8", [32, 32])
    cfg = ModelConfig.from_path(folder)
    assert cfg.checkpoint_fp8_block == (32, 32)
    model = load_model(cfg, torch.float32, torch.device("cpu"), 256)
    plain = load_model(ModelConfig.from_path(src), torch.float32, torch.device("cpu"), 256)
    # blocks never straddle the q/k/v or gate/up shards here, so quantising the shards one by
    # one (the checkpoint) equals quantising the fused weight (what the model must hold)
    for (name, mod), (_, linear) in zip(
        [(n, m) for n, m in model.named_modules() if isinstance(m, Fp8Linear)],
        [
            (n, m)
            for n, m in plain.named_modules()
            if n.endswith(("qkv_proj", "o_proj", "gate_up_proj", "down_proj"))
        ],
    ):
        q, s = reference.block_quant_fp8(linear.weight.data, (32, 32))
        assert torch.equal(mod.weight.view(torch.uint8), q.view(torch.uint8)), name
        assert torch.equal(mod.weight_scale_inv, s), name
    assert sum(isinstance(m, Fp8Linear) for m in model.modules()) == 4 * cfg.num_layers


def test_fp8_checkpoint_serves_and_agrees(tmp_path):
    src = build_tiny_model("llama")
    folder = fp8_checkpoint(src, tmp_path / "fp8", [32, 32])
    top1, overlap = agreement(str(src), str(folder), {})
    assert top1 >= 0.90 and overlap >= 0.85, (top1, overlap)


def test_fp8_checkpoint_errors_are_clear(tmp_path):
    src = build_tiny_model("llama")
    # 48-row blocks: the k shard starts at row 64 of the fused qkv weight, inside a block
    folder = fp8_checkpoint(src, tmp_path / "fp8-48", [48, 32])
    with pytest.raises(Exception, match="not a multiple of weight_block_size 48"):
        load_model(ModelConfig.from_path(folder), torch.float32, torch.device("cpu"), 256)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "awq", "bits": 4}
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="quantization method 'awq' is not supported"):
        ModelConfig.from_path(folder)
    with pytest.raises(ValueError, match="quantization must be None or 'fp8'"):
        Engine(str(src), quantization="int4")


def test_fp8_linear_reference_error_is_within_e4m3_rounding():
    torch.manual_seed(3)
    x, w = torch.randn(7, 300), torch.randn(200, 300) * 0.05
    q, s = reference.block_quant_fp8(w)
    y = reference.fp8_block_linear(x, q, s, None)
    exact = x @ w.t()
    assert ((y - exact).norm() / exact.norm()).item() < 0.05  # two e4m3 roundings (3 mantissa bits)
    # round trip: each weight within half an e4m3 step of its block's scale-relative grid
    err = (reference.block_dequant_fp8(q, s) - w).abs()
    assert (err <= w.abs() * 2**-4 + s.max() * 2**-9).all()
    zeros = reference.per_token_group_quant_fp8(torch.zeros(2, 256))
    assert torch.isfinite(zeros[1]).all() and (zeros[0].float() == 0).all()


def test_fp8_kv_cache_agrees_with_the_unquantised_model():
    path = str(build_tiny_model("llama"))
    # 4-token chunks: every chunk after the first attends to earlier ones through the fp8 cache
    top1, overlap = agreement(
        path,
        path,
        {"kv_cache_dtype": "fp8_e4m3", "chunked_prefill_size": 4},
        {"kv_cache_dtype": "float8_e4m3fn", "quantization": None},
    )
    assert top1 >= 0.95 and overlap >= 0.9, (top1, overlap)


def test_fp8_kv_cache_halves_bytes_and_takes_checkpoint_scales(tmp_path):
    from safetensors.torch import save_file

    from radixlm.runtime.config import EngineConfig
    from radixlm.runtime.model_executor.model_runner import ModelRunner
    from radixlm.runtime.radix.memory_pool import KVPool

    assert KVPool.bytes_per_token(2, 2, 16, torch.float8_e4m3fn) * 2 == KVPool.bytes_per_token(
        2, 2, 16, torch.bfloat16
    )
    src = build_tiny_model("llama")
    folder = tmp_path / "scaled"
    shutil.copytree(src, folder)
    tensors = dict(iter_safetensors(src))
    for layer in range(2):
        tensors[f"model.layers.{layer}.self_attn.k_scale"] = torch.tensor(0.5 + layer)
        tensors[f"model.layers.{layer}.self_attn.v_scale"] = torch.tensor(0.25)
    save_file(tensors, str(folder / "model.safetensors"))
    runner = ModelRunner(
        EngineConfig(str(folder), kv_cache_dtype="fp8_e4m3", max_total_tokens=256),
        ModelConfig.from_path(folder),
    )
    assert runner.kv_pool.k_buffers[0].dtype == torch.float8_e4m3fn
    assert runner.kv_pool.scales == [(0.5, 0.25), (1.5, 0.25)]
    plain = ModelRunner(EngineConfig(str(folder), max_total_tokens=256), ModelConfig.from_path(folder))
    assert plain.kv_pool.scales == [(1.0, 1.0)] * 2  # a bf16/fp32 cache ignores them
