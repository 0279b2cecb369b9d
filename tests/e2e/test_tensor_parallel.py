"""Tensor parallelism on CPU with gloo: ranks in separate processes, each holding a slice of
every weight, produce the single-rank model's greedy tokens exactly (HF is the oracle).
tp=2 splits the tiny models' 4 query / 2 KV heads evenly; tp=4 has more ranks than KV
heads, so each KV head is replicated on two ranks."""

from __future__ import annotations

import json
import random

import pytest
import torch
import torch.multiprocessing as mp
from helpers import hf_greedy

from radixlm.runtime.model_executor.distributed import TPGroup
from radixlm.testing import build_tiny_model, tp_greedy_worker


def prompts() -> list[list[int]]:
    rng = random.Random(5)
    return [[rng.randrange(4, 8192) for _ in range(n)] for n in (7, 30, 12, 55)]


@pytest.mark.parametrize(
    "arch,size", [("llama", 2), ("qwen2", 2), ("llama", 4), ("qwen3-moe", 2), ("mixtral", 2)]
)
def test_tensor_parallel_greedy_equals_single_rank(arch, size, tmp_path):
    """The MoE models split every expert's intermediate dimension (and the dense layers') across
    the ranks; the routers are replicated and the block's partial outputs summed once."""
    path = str(build_tiny_model(arch))
    ps = prompts()
    mp.start_processes(
        tp_greedy_worker,
        args=(size, str(tmp_path / "init"), path, ps, 10, str(tmp_path)),
        nprocs=size,
        join=True,
        start_method="spawn",
    )
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


def test_engine_with_two_ranks_serves_like_one():
    """`Engine(tp_size=2)`: two scheduler processes, rank 0 on the sockets broadcasting what
    arrives; greedy equals HF, streaming, a constrained request (both ranks must admit it in
    the same step, though each compiles the grammar on its own), accounting."""
    import re

    from radixlm import Engine

    path = str(build_tiny_model("llama"))
    ps = prompts()
    with Engine(path, tp_size=2, max_total_tokens=4000) as engine:
        info = engine.get_server_info()
        assert info["tp_size"] == 2
        assert sum(name.startswith("scheduler") for name in engine.process_ids) == 2
        outs = engine.generate(
            input_ids=ps, sampling_params={"max_new_tokens": 10, "temperature": 0, "ignore_eos": True}
        )
        assert [o["output_ids"] for o in outs] == [hf_greedy("llama", ids, 10) for ids in ps]
        chunks = list(
            engine.generate(
                input_ids=ps[1],
                sampling_params={"max_new_tokens": 10, "temperature": 0, "ignore_eos": True},
                stream=True,
            )
        )
        assert [t for c in chunks for t in c["output_ids"]] == outs[1]["output_ids"]
        regex = "(red|green|blue)-[0-9]{3}"
        out = engine.generate("Colour code:", {"max_new_tokens": 20, "temperature": 0.8, "regex": regex})
        assert re.fullmatch(regex, out["text"]), out["text"]
        engine.check_accounting()
        assert engine.flush_cache()


def test_two_nodes_on_one_machine(tmp_path):
    """--nnodes 2: node 1 runs `radixlm serve --node-rank 1` (its rank only, no clients), node
    0 the Engine with rank 0; they meet at dist_init_addr and serve like one rank."""
    import socket
    import subprocess
    import sys

    from radixlm import Engine

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    path = str(build_tiny_model("llama"))
    common = dict(tp_size=2, nnodes=2, dist_init_addr=f"127.0.0.1:{port}", max_total_tokens=4000)
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "radixlm.runtime.entrypoints.cli",
            "serve",
            "--model",
            path,
            "--tp-size",
            "2",
            "--nnodes",
            "2",
            "--node-rank",
            "1",
            "--dist-init-addr",
            common["dist_init_addr"],
            "--max-total-tokens",
            "4000",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        with Engine(path, **common) as engine:
            ps = prompts()[:2]
            outs = engine.generate(
                input_ids=ps, sampling_params={"max_new_tokens": 8, "temperature": 0, "ignore_eos": True}
            )
            assert [o["output_ids"] for o in outs] == [hf_greedy("llama", ids, 8) for ids in ps]
        assert worker.wait(timeout=30) == 0  # rank 1 follows rank 0's shutdown
        assert "radixlm worker node 1/2 ready" in worker.stdout.read()
    finally:
        if worker.poll() is None:
            worker.kill()
    with pytest.raises(ValueError, match="worker ranks only"):
        Engine(path, **{**common, "node_rank": 1})
    with pytest.raises(ValueError, match="need dist_init_addr"):
        Engine(path, tp_size=2, nnodes=2)


def test_online_fp8_with_two_ranks_agrees_with_the_unquantised_model():
    """Each rank block-quantises the weight slice it loaded (its row-parallel layers quantise
    their activations over the rank's own columns), so the per-token agreement with the
    unquantised model is what one fp8 rank gives."""
    from fp8_checkpoints import agreement

    path = str(build_tiny_model("llama"))
    top1, overlap = agreement(
        path,
        path,
        {"tp_size": 2, "quantization": "fp8", "max_total_tokens": 4000},
        {"quantization": "fp8", "tp_size": 2},
    )
    assert top1 >= 0.90 and overlap >= 0.85, (top1, overlap)


def test_serve_accepts_sglang_short_flags():
    from radixlm.runtime.entrypoints.cli import build_parser

    args = build_parser().parse_args(["serve", "--model", "m", "--tp", "2", "--dp", "3"])
    assert (args.tp_size, args.dp_size) == (2, 3)
    args = build_parser().parse_args(["serve", "--model", "m", "--tp-size", "4", "--dp-size", "2"])
    assert (args.tp_size, args.dp_size) == (4, 2)


def test_fp8_checkpoint_with_two_ranks_serves_like_one(tmp_path):
    """An HF block-fp8 checkpoint under TP=2: each rank loads its rows/columns of every e4m3
    weight and the matching rows/columns of its block scales (16x16 blocks: every rank's slice
    is whole blocks). The row-parallel layers quantise activations in groups of 16 columns, so
    each rank's groups are the single-rank model's groups: per token the two agree."""
    from fp8_checkpoints import agreement, fp8_checkpoint

    path = build_tiny_model("llama")
    fp8 = str(fp8_checkpoint(path, tmp_path / "fp8", [16, 16]))
    top1, overlap = agreement(
        fp8, fp8, {"tp_size": 2, "max_total_tokens": 4000}, {"quantization": "fp8", "tp_size": 2}
    )
    assert top1 >= 0.98 and overlap >= 0.95, (top1, overlap)


def test_fp8_moe_checkpoint_with_two_ranks_equals_one_rank(tmp_path):
    """Qwen3-MoE's experts from a block-fp8 checkpoint under TP=2: each rank takes its rows of
    every expert's gate and up, its columns of down, and the matching block scales (16x16 blocks:
    a rank's 16 of the 32 intermediate rows are one block). The down projection then quantises
    the same groups of 16 as one rank does, so greedy tokens equal the single rank's."""
    from fp8_checkpoints import fp8_checkpoint

    path = str(fp8_checkpoint(build_tiny_model("qwen3-moe"), tmp_path / "fp8", [16, 16]))
    ps = prompts()
    (tmp_path / "one").mkdir()
    threads = torch.get_num_threads()
    try:  # one rank in this process, as the baseline
        tp_greedy_worker(0, 1, str(tmp_path / "init1"), path, ps, 10, str(tmp_path / "one"))
    finally:
        torch.set_num_threads(threads)
    single = json.loads((tmp_path / "one" / "rank0.json").read_text())["outputs"]
    mp.start_processes(
        tp_greedy_worker,
        args=(2, str(tmp_path / "init"), path, ps, 10, str(tmp_path)),
        nprocs=2,
        join=True,
        start_method="spawn",
    )
    for r in range(2):
        assert json.loads((tmp_path / f"rank{r}.json").read_text())["outputs"] == single, f"rank {r}"


def test_fp8_checkpoint_whose_blocks_straddle_ranks_is_refused(tmp_path):
    """32-row blocks over TP=4: a rank's 16 rows of k_proj are half a block."""
    from fp8_checkpoints import fp8_checkpoint

    from radixlm import Engine

    fp8 = str(fp8_checkpoint(build_tiny_model("llama"), tmp_path / "fp8", [32, 32]))
    with pytest.raises(Exception, match="not on weight_block_size 32 boundaries"):
        Engine(fp8, tp_size=4, max_total_tokens=4000)


def test_two_ranks_with_the_host_tier_serve_like_one():
    """The host tier under tensor parallelism: each rank keeps its KV shard in its own host
    pool, and the leader broadcasts which loads landed so both ranks admit the same requests.
    A multi-turn workload several times the device pool: greedy equals HF, host hits occur."""
    from radixlm import Engine

    path = str(build_tiny_model("llama"))
    rng = random.Random(9)
    convs = [[rng.randrange(4, 8192) for _ in range(50)] for _ in range(6)]
    params = {"max_new_tokens": 6, "temperature": 0, "ignore_eos": True}
    opts = {"tp_size": 2, "max_total_tokens": 200, "enable_hierarchical_cache": True, "hicache_ratio": 4}
    with Engine(path, **opts) as engine:
        for _ in range(3):
            for c in convs:
                c += [rng.randrange(4, 8192) for _ in range(8)]
            outs = engine.generate(input_ids=[list(c) for c in convs], sampling_params=params)
            for c, o in zip(convs, outs):
                assert o["output_ids"] == hf_greedy("llama", c, 6)
                c += o["output_ids"]
        info = engine.get_server_info()
        assert info["host_hit_tokens"] > 0 and info["kv_accounting"] == "ok"
        engine.check_accounting()
        assert engine.flush_cache()
