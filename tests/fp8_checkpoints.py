"""FP8 test helpers shared by tests/runtime/models/test_fp8_model.py and
tests/e2e/test_tensor_parallel.py: an HF-style block-fp8 checkpoint built from a tiny model, and
the per-token agreement of an fp8 engine with the unquantised one."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

from radixlm import Engine
from radixlm.runtime.kernels import reference
from radixlm.runtime.models import iter_safetensors

LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
GREEDY = {"max_new_tokens": 32, "temperature": 0, "ignore_eos": True}


def prompts(n: int, seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(4, 8192) for _ in range(20)] for _ in range(n)]


def fp8_checkpoint(src: Path, dst: Path, block: list[int]) -> Path:
    """The folder `src` with its decoder linears stored the way HF's fp8 quantiser stores
    them: e4m3 `weight` plus fp32 `weight_scale_inv` per block."""
    from safetensors.torch import save_file

    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("*.safetensors", "*.index.json"))
    tensors = {}
    for name, t in iter_safetensors(src):
        if name.endswith(".weight") and any(f".{x}." in name for x in LINEARS):
            q, s = reference.block_quant_fp8(t, tuple(block))
            tensors[name], tensors[name[: -len("weight")] + "weight_scale_inv"] = q, s
        else:
            tensors[name] = t
    save_file(tensors, str(dst / "model.safetensors"))
    cfg = json.loads((dst / "config.json").read_text())
    cfg["quantization_config"] = {
        "quant_method": "fp8",
        "activation_scheme": "dynamic",
        "weight_block_size": block,
    }
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


def teacher_forced_top5(engine: Engine, seqs: list[list[int]]) -> list[list[list[int]]]:
    """Per sequence, the top-5 token ids the model predicts after each of its prefixes."""
    outs = engine.generate(
        input_ids=seqs,
        sampling_params={"max_new_tokens": 1, "temperature": 0},
        return_logprob=True,
        logprob_start_len=0,
        top_logprobs_num=5,
    )
    return [[[t for t, _ in top] for top in o["meta_info"]["input_top_logprobs"][1:]] for o in outs]


def agreement(path: str, fp8_path: str, fp8_options: dict, info: dict | None = None) -> tuple[float, float]:
    """Top-1 agreement and mean top-5 overlap of the fp8 model with the unquantised one over
    the 32 greedy tokens of 16 prompts, both fed the same (unquantised greedy) tokens: once one
    token differs, free-running outputs diverge, so this is the per-token measure."""
    ps = prompts(16)
    with Engine(path) as engine:
        seqs = [
            p + o["output_ids"] for p, o in zip(ps, engine.generate(input_ids=ps, sampling_params=GREEDY))
        ]
        ref = teacher_forced_top5(engine, seqs)
    with Engine(fp8_path, **fp8_options) as engine:
        served = engine.get_server_info()
        for key, value in (info or {"quantization": "fp8"}).items():
            assert served[key] == value, (key, served[key])
        got = teacher_forced_top5(engine, seqs)
    pairs = [(a, b) for r, g in zip(ref, got) for a, b in zip(r[19:], g[19:])]  # the 32 generated positions
    assert len(pairs) == 16 * 32
    top1 = sum(a[0] == b[0] for a, b in pairs) / len(pairs)
    overlap = sum(len(set(a) & set(b)) / 5 for a, b in pairs) / len(pairs)
    return top1, overlap
