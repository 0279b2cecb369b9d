"""Tensor and data parallelism on CUDA (NCCL): needs two GPUs; skipped otherwise."""

from __future__ import annotations

import random

import pytest
import torch
from helpers import hf_greedy

from radixlm import Engine
from radixlm.testing import build_tiny_model

pytestmark = pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA devices")


def ids_of(n: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(4, 8192) for _ in range(n)]


@pytest.mark.parametrize("options", [{"tp_size": 2}, {"dp_size": 2}])
def test_two_gpus_greedy_equals_hf(options):
    prompts = [ids_of(5 + 9 * i, 700 + i) for i in range(6)]
    with Engine(
        str(build_tiny_model("llama")), device="cuda", dtype="float32", max_total_tokens=4000, **options
    ) as engine:
        outs = engine.generate(
            input_ids=prompts, sampling_params={"max_new_tokens": 16, "temperature": 0, "ignore_eos": True}
        )
        assert [o["output_ids"] for o in outs] == [hf_greedy("llama", ids, 16) for ids in prompts]
        engine.check_accounting()
