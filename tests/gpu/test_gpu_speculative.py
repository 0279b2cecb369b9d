"""Speculative decoding on a CUDA device (Triton kernels, CUDA graphs, overlap on): outputs
identical with it on or off, and drafts from the radix tree accepted. Skipped without CUDA."""

from __future__ import annotations

import random

import pytest
import torch

from radixlm import Engine
from radixlm.testing import build_tiny_model

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def prompts(n: int) -> list[list[int]]:
    rng = random.Random(5)
    pattern = [rng.randrange(4, 8000) for _ in range(9)]
    return [pattern * 6 + [rng.randrange(4, 8000) for _ in range(7 * i)] for i in range(n)]


@pytest.mark.parametrize("algorithm", ["ngram", "lookahead"])
@pytest.mark.parametrize("batch", [1, 5])
def test_outputs_identical_with_speculation_on_gpu(algorithm, batch):
    path = str(build_tiny_model("llama"))
    opts = {"device": "cuda", "dtype": "float32", "max_total_tokens": 4000}
    params = {"max_new_tokens": 48, "temperature": 0, "ignore_eos": True}
    with Engine(path, **opts) as engine:
        plain = [o["output_ids"] for o in engine.generate(input_ids=prompts(batch), sampling_params=params)]
    with Engine(path, speculative_algorithm=algorithm, **opts) as engine:
        first = [o["output_ids"] for o in engine.generate(input_ids=prompts(batch), sampling_params=params)]
        again = engine.generate(input_ids=prompts(batch), sampling_params=params)  # drafts from the tree
        info = engine.get_server_info()
        engine.check_accounting()
    assert first == plain and [o["output_ids"] for o in again] == plain
    if algorithm == "lookahead":
        assert sum(o["meta_info"]["spec_accepted_tokens"] for o in again) > 24 * batch
    assert info["kv_accounting"] == "ok"


def test_sampled_outputs_keep_their_seed_with_speculation_on_gpu():
    path = str(build_tiny_model("llama"))
    opts = {"device": "cuda", "dtype": "float32"}
    params = {"max_new_tokens": 32, "temperature": 0.7, "top_p": 0.9, "seed": 11, "ignore_eos": True}
    with Engine(path, **opts) as engine:
        plain = engine.generate(input_ids=prompts(3), sampling_params=params)
    with Engine(path, speculative_algorithm="lookahead", **opts) as engine:
        engine.generate(input_ids=prompts(3), sampling_params=params)
        again = engine.generate(input_ids=prompts(3), sampling_params=params)
    assert [o["output_ids"] for o in again] == [o["output_ids"] for o in plain]
