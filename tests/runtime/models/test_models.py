"""Model loading: config parsing, rope variants, sharded checkpoints, weight errors, dtypes, and
an unusable model folder failing Engine() with a clear error while other engines keep serving."""

from __future__ import annotations

import json
import random
import shutil

import pytest
import torch
from helpers import assert_serves_as_before, get_engine, hf_greedy

from radixlm import Engine
from radixlm.runtime.config import ModelConfig, RopeConfig
from radixlm.runtime.layers.decoder_blocks import rope_inv_freq
from radixlm.testing import build_tiny_model


def ids_of(n: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(4, 8192) for _ in range(n)]


@pytest.mark.parametrize(
    "rope",
    [
        {"rope_type": "default", "rope_theta": 10000.0},
        {"rope_type": "linear", "rope_theta": 10000.0, "factor": 4.0},
        {
            "rope_type": "llama3",
            "rope_theta": 500000.0,
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
    ],
)
def test_rope_inv_freq_matches_transformers(rope):
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    cfg = LlamaConfig(
        hidden_size=4096, num_attention_heads=32, max_position_embeddings=131072, rope_parameters=dict(rope)
    )
    if rope["rope_type"] == "default":
        expected = 1.0 / (rope["rope_theta"] ** (torch.arange(0, 128, 2, dtype=torch.int64).float() / 128))
    else:
        expected, _ = ROPE_INIT_FUNCTIONS[rope["rope_type"]](cfg, "cpu")
    ours = rope_inv_freq(
        128,
        RopeConfig(
            theta=rope["rope_theta"],
            rope_type=rope["rope_type"],
            factor=rope.get("factor", 1.0),
            low_freq_factor=rope.get("low_freq_factor", 1.0),
            high_freq_factor=rope.get("high_freq_factor", 4.0),
            original_max_position_embeddings=rope.get("original_max_position_embeddings", 8192),
        ),
    )
    torch.testing.assert_close(ours, expected, rtol=0, atol=0)


def test_legacy_rope_scaling_config_is_read(tmp_path):
    folder = tmp_path / "m"
    shutil.copytree(build_tiny_model("llama"), folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg.pop("rope_parameters")
    cfg["rope_theta"] = 500000.0
    cfg["rope_scaling"] = {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 64,
    }
    (folder / "config.json").write_text(json.dumps(cfg))
    mc = ModelConfig.from_path(folder)
    assert (
        mc.rope.rope_type == "llama3"
        and mc.rope.theta == 500000.0
        and mc.rope.original_max_position_embeddings == 64
    )


def test_unsupported_rope_type_is_named(tmp_path):
    folder = tmp_path / "m"
    shutil.copytree(build_tiny_model("llama"), folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["rope_parameters"] = {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0}
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="yarn"):
        ModelConfig.from_path(folder)


def test_config_fields_per_family():
    llama = ModelConfig.from_path(build_tiny_model("llama"))
    qwen2 = ModelConfig.from_path(build_tiny_model("qwen2"))
    qwen3 = ModelConfig.from_path(build_tiny_model("qwen3"))
    assert (llama.attention_bias, llama.qk_norm, llama.tie_word_embeddings) == (False, False, False)
    assert (qwen2.attention_bias, qwen2.qk_norm, qwen2.tie_word_embeddings) == (True, False, True)
    assert (qwen3.attention_bias, qwen3.qk_norm) == (False, True)
    assert set(llama.eos_token_ids) == {0, 2}  # config eos + generation_config eos list


def test_sharded_checkpoint_loads(tmp_path):
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    src = build_tiny_model("qwen3")
    model = AutoModelForCausalLM.from_pretrained(str(src), dtype=torch.float32)
    model.save_pretrained(tmp_path, max_shard_size="1MB")
    PreTrainedTokenizerFast.from_pretrained(str(src)).save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors.index.json").is_file()
    ids = ids_of(30, 1)
    with Engine(str(tmp_path)) as engine:
        out = engine.generate(
            input_ids=ids, sampling_params={"max_new_tokens": 10, "temperature": 0, "ignore_eos": True}
        )
    assert out["output_ids"] == hf_greedy("qwen3", ids, 10)


def test_missing_weight_is_an_error(tmp_path):
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "m"
    shutil.copytree(build_tiny_model("llama"), folder)
    weights = load_file(folder / "model.safetensors")
    weights.pop("model.layers.1.mlp.up_proj.weight")
    save_file(weights, folder / "model.safetensors")
    with pytest.raises(ValueError, match="gate_up_proj"):
        Engine(str(folder))


def test_untied_checkpoint_with_extra_tensor_is_an_error(tmp_path):
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "m"
    shutil.copytree(build_tiny_model("llama"), folder)
    weights = load_file(folder / "model.safetensors")
    weights["model.layers.0.self_attn.unknown.weight"] = torch.ones(2)
    save_file(weights, folder / "model.safetensors")
    with pytest.raises(ValueError, match="unexpected weight"):
        Engine(str(folder))


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_runs_and_mostly_agrees(dtype):
    ids = ids_of(40, 2)
    ref = hf_greedy("llama", ids, 16)
    out = get_engine("llama", dtype=dtype).generate(
        input_ids=ids, sampling_params={"max_new_tokens": 16, "temperature": 0, "ignore_eos": True}
    )
    # half precision may flip a near-tie eventually; the start must agree
    assert out["output_ids"][:4] == ref[:4]


# ---------------------------------------------------------------------------- unusable folders
GOOD_PROMPT = "Once upon a time, in a land far away"
GOOD = {"max_new_tokens": 4, "temperature": 0, "ignore_eos": True}


@pytest.fixture(scope="module")
def good_reference() -> list[int]:
    """The good request's greedy output on the cached engine, before any bad folder is tried."""
    return get_engine("llama").generate(GOOD_PROMPT, GOOD)["output_ids"]


def _copy(src, tmp_path):
    dst = tmp_path / "model"
    shutil.copytree(src, dst)
    return dst


def _missing_folder(src, tmp_path):
    return tmp_path / "does-not-exist"


def _unknown_arch(src, tmp_path):
    dst = _copy(src, tmp_path)
    cfg = json.loads((dst / "config.json").read_text())
    cfg["architectures"] = ["FooForCausalLM"]
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


def _truncate(keep):
    def make(src, tmp_path):
        dst = _copy(src, tmp_path)
        weights = dst / "model.safetensors"
        data = weights.read_bytes()
        weights.write_bytes(data[: keep(len(data))])
        return dst

    return make


def _garbage_weights(src, tmp_path):
    dst = _copy(src, tmp_path)
    (dst / "model.safetensors").write_bytes(b"\xff" * 256)
    return dst


def _no_config(src, tmp_path):
    dst = _copy(src, tmp_path)
    (dst / "config.json").unlink()
    return dst


def _no_weights(src, tmp_path):
    dst = _copy(src, tmp_path)
    (dst / "model.safetensors").unlink()
    return dst


def _bad_rope(src, tmp_path):
    dst = _copy(src, tmp_path)
    cfg = json.loads((dst / "config.json").read_text())
    cfg["rope_parameters"] = {"rope_type": "yarn-ish", "rope_theta": 10000.0}
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


BAD_FOLDERS = [
    ("missing folder", _missing_folder, FileNotFoundError, "not found"),
    ("no config.json", _no_config, FileNotFoundError, "config.json"),
    ("no weights", _no_weights, FileNotFoundError, "safetensors"),
    ("unknown architecture", _unknown_arch, ValueError, "FooForCausalLM"),
    ("unknown rope type", _bad_rope, ValueError, "yarn-ish"),
    ("truncated weights (half)", _truncate(lambda n: n // 2), ValueError, r"cannot read.*model\.safetensors"),
    ("truncated weights (tail)", _truncate(lambda n: n - 64), ValueError, r"cannot read.*model\.safetensors"),
    ("truncated weights (header)", _truncate(lambda n: 10), ValueError, r"cannot read.*model\.safetensors"),
    ("garbage weights", _garbage_weights, ValueError, r"cannot read.*model\.safetensors"),
]


@pytest.mark.parametrize("name, make, exc, match", BAD_FOLDERS, ids=[r[0] for r in BAD_FOLDERS])
def test_unusable_model_folder_fails_engine_clearly(name, make, exc, match, tmp_path, good_reference):
    path = make(build_tiny_model("llama"), tmp_path)
    with pytest.raises(exc, match=match):
        Engine(str(path))
    assert_serves_as_before(get_engine("llama"), GOOD_PROMPT, GOOD, good_reference)
