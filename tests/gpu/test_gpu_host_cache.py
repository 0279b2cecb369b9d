"""The host tier on a CUDA device: pinned host pool, copies on the transfer stream, loads
polled while the batch runs. Greedy fp32 outputs equal the same run without the tier, with
fp8 KV too, and Hugging Face's; KV bytes survive the round trip exactly. Skipped without CUDA."""

from __future__ import annotations

import random

import pytest
import torch
from helpers import hf_greedy

from radixlm import Engine
from radixlm.runtime.radix.host_pool import HostKVPool, HostPoolSize
from radixlm.runtime.radix.kv_transfer import STAGING_BYTES, KVTransfer
from radixlm.runtime.radix.memory_pool import KVPool
from radixlm.testing import build_tiny_model

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def conversations(n: int, turns: int, seed: int = 0):
    rng = random.Random(seed)
    return [[rng.randrange(4, 8000) for _ in range(120)] for _ in range(n)], rng


def multi_turn(engine: Engine, n: int = 12, turns: int = 4) -> list[list[int]]:
    convs, rng = conversations(n, turns)
    replies = []
    for _ in range(turns):
        for c in convs:
            c += [rng.randrange(4, 8000) for _ in range(16)]
        outs = engine.generate(
            input_ids=[list(c) for c in convs],
            sampling_params={"max_new_tokens": 8, "temperature": 0, "ignore_eos": True},
        )
        for c, o in zip(convs, outs):
            c += o["output_ids"]
            replies.append(o["output_ids"])
        engine.check_accounting()
    return replies


@pytest.mark.parametrize("kv", ["auto", "fp8_e4m3"])
def test_greedy_outputs_with_the_host_tier_equal_without_it_on_gpu(kv):
    path = str(build_tiny_model("llama"))
    opts = {"device": "cuda", "dtype": "float32", "max_total_tokens": 600, "kv_cache_dtype": kv}
    with Engine(path, **opts) as engine:
        plain = multi_turn(engine)
    with Engine(path, enable_hierarchical_cache=True, hicache_ratio=6, **opts) as engine:
        tiered = multi_turn(engine)
        info = engine.get_server_info()
    assert tiered == plain
    assert info["hicache_pinned"] and info["host_hit_tokens"] > 0 and info["kv_accounting"] == "ok"
    assert info["bytes_to_device"] > 0 and info["load_latency_ms_p50"] is not None


def test_host_tier_outputs_match_hugging_face():
    path = str(build_tiny_model("llama"))
    opts = {"device": "cuda", "dtype": "float32", "max_total_tokens": 300}
    with Engine(path, enable_hierarchical_cache=True, **opts) as e:
        convs, _ = conversations(6, 1, seed=3)
        params = {"max_new_tokens": 6, "temperature": 0, "ignore_eos": True}
        e.generate(input_ids=convs, sampling_params=params)  # the pool holds ~2: the rest go to host
        outs = e.generate(input_ids=[c + [11, 12] for c in convs], sampling_params=params)
        assert e.get_server_info()["host_hit_tokens"] > 0
    for c, o in zip(convs, outs):
        assert o["output_ids"] == hf_greedy("llama", c + [11, 12], 6)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float8_e4m3fn])
def test_transfer_round_trip_is_byte_exact_on_gpu(dtype):
    layers, heads, dim = 4, 8, 128
    per_token = KVPool.bytes_per_token(layers, heads, dim, dtype)
    n = STAGING_BYTES // per_token + 300  # more than one staging chunk
    slots = n + 1000
    pool = KVPool(slots, layers, heads, dim, dtype, torch.device("cuda"))
    host = HostKVPool(HostPoolSize(2 * slots, per_token), layers, pin=True)
    assert host.pinned
    transfer = KVTransfer(pool, host)
    src = torch.randperm(slots, device="cuda")[:n] + 1
    for buf in pool.k_buffers + pool.v_buffers:
        buf.view(torch.uint8).copy_(torch.randint(0, 255, buf.view(torch.uint8).shape, device="cuda"))
    host.buffer.fill_(0xAB)
    half = n // 2  # two runs of host slots, apart
    host_slots = torch.cat([torch.arange(100, 100 + half), torch.arange(slots, slots + n - half)])
    transfer.backup(src, host_slots)
    dst = (torch.randperm(slots, device="cuda") + 1)[:n]
    want = [buf[src].view(torch.uint8).clone() for buf in pool.k_buffers + pool.v_buffers]
    for buf in pool.k_buffers + pool.v_buffers:
        buf.view(torch.uint8)[dst] = 0xCD
    ticket = transfer.load(host_slots, dst)
    ticket.wait()
    assert ticket.ready()
    for w, buf in zip(want, pool.k_buffers + pool.v_buffers):
        assert torch.equal(buf[dst].view(torch.uint8), w)
