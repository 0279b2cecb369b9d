"""Tensor parallelism on CPU with gloo: ranks in separate processes, each holding a slice of
every weight, produce the single-rank model's greedy tokens exactly (HF is the oracle).
tp=2 splits the tiny models' 4 query / 2 KV heads evenly; tp=4 has more ranks than KV
heads, so each KV head is replicated on two ranks."""

from __future__ import annotations

import json
import random

import pytest
import torch.multiprocessing as mp

from helpers import hf_greedy
from radixlm.runtime.distributed import TPGroup
from radixlm.testing import build_tiny_model, tp_greedy_worker


def prompts() -> list[list[int]]:
    rng = random.Random(5)
    return [[rng.randrange(4, 8192) for _ in range(n)] for n in (7, 30, 12, 55)]


@pytest.mark.parametrize("arch,size", [("llama", 2), ("qwen2", 2), ("llama", 4)])
def test_tensor_parallel_greedy_equals_single_rank(arch, size, tmp_path):
    path = str(build_tiny_model(arch))
    ps = prompts()
    mp.start_processes(tp_greedy_worker, args=(size, str(tmp_path / "init"), path, ps, 10, str(tmp_path)),
                       nprocs=size, join=True, start_method="spawn")
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(size)]
    expected = [hf_greedy(arch, ids, 10) for ids in ps]
    for r, out in enumerate(ranks):
        assert out["outputs"] == expected, f"rank {r}"
        assert out["local_heads"] == [4 // size, max(2 // size, 1)]
        assert out["kv_pool_heads"] == max(2 // size, 1)


def test_head_splits():
    assert TPGroup(1, 2).split(8, "x") == (4, 8)
    assert [TPGroup(r, 4).kv_heads(2) for r in range(4)] == [(0, 1), (0, 1), (1, 2), (1, 2)]
    assert [TPGroup(r, 2).kv_heads(8) for r in range(2)] == [(0, 4), (4, 8)]
    with pytest.raises(ValueError, match="divisible by the tensor-parallel size 3"):
        TPGroup(0, 3).split(8, "number of attention heads")
    with pytest.raises(ValueError, match="multiple of the number of KV heads"):
        TPGroup(0, 3).kv_heads(2)
