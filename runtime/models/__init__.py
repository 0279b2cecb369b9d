"""Model registry and loading from a local Hugging Face folder (config.json + safetensors)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import torch

from radixlm.runtime.config import ModelConfig
from radixlm.runtime.layers.quantization import (
    DEFAULT_BLOCK,
    quantize_linears,
    quantize_lm_head,
    replace_linears,
)
from radixlm.runtime.model_executor.distributed import TPGroup
from radixlm.runtime.models.llama import LlamaForCausalLM
from radixlm.runtime.models.moe import MoeForCausalLM

# Every supported family shares the Llama decoder; ModelConfig switches on qkv bias (qwen2)
# and q/k norm (qwen3). The mixture-of-experts families swap in a sparse MLP (moe.py).
MODEL_CLASSES = {
    "llama": LlamaForCausalLM,
    "qwen2": LlamaForCausalLM,
    "qwen3": LlamaForCausalLM,
    "mixtral": MoeForCausalLM,
    "qwen2_moe": MoeForCausalLM,
    "qwen3_moe": MoeForCausalLM,
}


def iter_safetensors(folder: str | Path) -> Iterator[tuple[str, torch.Tensor]]:
    from safetensors import safe_open

    folder = Path(folder)
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    else:
        files = sorted(p.name for p in folder.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no .safetensors weights in model folder {str(folder)!r}")
    for fname in files:
        path = folder / fname
        if not path.is_file():
            raise FileNotFoundError(
                f"weight file {fname!r} listed in the index is missing from {str(folder)!r}"
            )
        try:
            handle = safe_open(str(path), framework="pt")
        except Exception as exc:  # safetensors has its own error types for corrupt files
            raise ValueError(f"cannot read weight file {str(path)!r}: {exc}") from exc
        with handle as f:
            for name in f.keys():
                try:
                    tensor = f.get_tensor(name)
                except Exception as exc:
                    raise ValueError(f"cannot read tensor {name!r} from {str(path)!r}: {exc}") from exc
                yield name, tensor


def load_model(
    cfg: ModelConfig,
    dtype: torch.dtype,
    device: torch.device,
    max_positions: int,
    quantization: str | None = None,
    tp: TPGroup | None = None,
    *,
    lm_head_quantization: str | None = None,
) -> torch.nn.Module:
    """The model (this tensor-parallel rank's slice of it) in `dtype` on `device`. An fp8
    checkpoint keeps its fp8 linears and experts; `quantization="fp8"` block-quantises the
    linears and experts of any other checkpoint after loading. `lm_head_quantization="fp8"`
    block-quantises the LM head (this rank's vocabulary rows; a tied model's embedding table
    stays as it is), independently of the rest."""
    cls = MODEL_CLASSES[cfg.family]
    tp = tp or TPGroup()
    with torch.device("meta"):
        model = cls(cfg, max_positions, tp).to(dtype)
        if cfg.checkpoint_fp8_block is not None:
            replace_linears(model, cfg.checkpoint_fp8_block)
    # allocated once, in the final dtype: an 8B model never exists in fp32 on the device
    model = model.to_empty(device=device)
    # buffers (rotary tables) are computed, not loaded: rebuild them on the real device, fp32
    for module in model.modules():
        if hasattr(module, "cos") and hasattr(module, "sin"):
            fresh = type(module)(cfg.head_dim, max_positions, cfg.rope)
            module.cos, module.sin = fresh.cos.to(device), fresh.sin.to(device)
    model.load_weights(iter_safetensors(cfg.path))
    quantized = quantization == "fp8" and cfg.checkpoint_fp8_block is None
    if quantized:
        quantize_linears(model, DEFAULT_BLOCK)
    if lm_head_quantization == "fp8":
        # 128 x 128 blocks whatever an fp8 checkpoint's own block: the head is ours to quantise,
        # and the tuned fp8 kernel configs are for that block
        quantize_lm_head(model, DEFAULT_BLOCK)
    if (quantized or lm_head_quantization == "fp8") and device.type == "cuda":
        torch.cuda.empty_cache()  # the bf16 weights' memory goes back before the KV pool is sized
    return model.eval()
