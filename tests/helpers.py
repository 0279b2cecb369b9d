"""Test helpers: cached engines per tiny model and the Hugging Face oracle."""

from __future__ import annotations

import os

import torch

from radixlm.testing import TINY_MODELS, build_tiny_model

ARCHES = list(TINY_MODELS)
_ENGINES: dict[tuple, object] = {}
_HF: dict[str, object] = {}

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def get_engine(name: str = "llama", **options):
    """A cached Engine per (model, options): building one is cheap but not free."""
    from radixlm import Engine

    key = (name, tuple(sorted(options.items())))
    if key not in _ENGINES:
        _ENGINES[key] = Engine(str(build_tiny_model(name)), **options)
    return _ENGINES[key]


def get_hf(name: str):
    from transformers import AutoModelForCausalLM

    if name not in _HF:
        _HF[name] = AutoModelForCausalLM.from_pretrained(str(build_tiny_model(name)), dtype=torch.float32).eval()
    return _HF[name]


@torch.inference_mode()
def hf_greedy(name: str, ids: list[int], max_new_tokens: int, stop_at_eos: bool = False) -> list[int]:
    """Hugging Face greedy continuation of one prompt (no padding: one request at a time)."""
    model = get_hf(name)
    kw = {} if stop_at_eos else {"eos_token_id": None}
    out = model.generate(torch.tensor([ids]), max_new_tokens=max_new_tokens, do_sample=False,
                         pad_token_id=model.config.pad_token_id, **kw)
    return out[0, len(ids):].tolist()


@torch.inference_mode()
def hf_logprobs(name: str, ids: list[int]) -> torch.Tensor:
    """[len(ids), vocab] log-softmax of the HF model's logits for each prefix."""
    logits = get_hf(name)(torch.tensor([ids])).logits[0].float()
    return torch.log_softmax(logits, dim=-1)


