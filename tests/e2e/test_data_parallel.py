"""Data parallelism on CPU: replicas behind the prefix-aware router. Requests that share a
prefix go where it is cached, the rest balance by load; outputs are the single-replica
outputs; the aggregate cache hit rate stays within 5 points of one replica's."""

from __future__ import annotations

import random

from helpers import hf_greedy

from radixlm import Engine
from radixlm.runtime.managers.dp_router import MIN_USEFUL_PREFIX, Router
from radixlm.testing import build_tiny_model


def ids_of(n: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(4, 8192) for _ in range(n)]


def test_router_prefers_the_cached_prefix_then_the_least_loaded():
    router = Router(3, capacity_tokens=1000)
    a, b = ids_of(100, 1), ids_of(100, 2)
    first = router.route("a0", a + [5])
    assert router.route("a1", a + [6]) == first  # shares 100 tokens with a0
    other = router.route("b0", b)  # no useful prefix anywhere: the least loaded replica
    assert other != first
    third = router.route("c0", ids_of(10, 3))
    assert third not in (first, other)
    router.done(["a0", "a1"])
    assert router.load[first] == 0 and router.owner == {"b0": other, "c0": third}
    # a short shared prefix is not worth a loaded replica
    assert router.route("a2", a[: MIN_USEFUL_PREFIX - 5] + ids_of(50, 9)) == first  # load 0 there again
    # the tree forgets beyond the replica's capacity (LRU)
    for i in range(30):
        router.route(f"x{i}", ids_of(100, 100 + i))
    assert all(tree.total_size <= 1000 + 100 for tree in router.trees)


def workload() -> list[list[int]]:
    groups = [ids_of(120, 10 + g) for g in range(4)]
    return [groups[g] + ids_of(8, 100 * g + i) for g in range(4) for i in range(4)]


def run(engine: Engine, prompts: list[list[int]]) -> list[list[int]]:
    params = {"max_new_tokens": 6, "temperature": 0, "ignore_eos": True}
    outs = []
    for g in range(4):  # a group's first request is cached before the rest arrive
        group = prompts[4 * g : 4 * g + 4]
        outs += [o["output_ids"] for o in engine.generate(input_ids=group[:1], sampling_params=params)]
        outs += [o["output_ids"] for o in engine.generate(input_ids=group[1:], sampling_params=params)]
    return outs


def test_two_replicas_route_by_prefix_and_keep_the_hit_rate():
    path = str(build_tiny_model("llama"))
    prompts = workload()
    with Engine(path, max_total_tokens=4000) as single:
        single_outs = run(single, prompts)
        single_rate = single.get_server_info()["cache_hit_rate"]
    with Engine(path, dp_size=2, max_total_tokens=4000) as engine:
        outs = run(engine, prompts)
        info = engine.get_server_info()
        engine.check_accounting()
        assert engine.flush_cache()
    assert outs == single_outs
    assert outs[0] == hf_greedy("llama", prompts[0], 6)
    assert info["dp_size"] == 2 and len(info["replicas"]) == 2
    replicas = info["replicas"]
    assert sum(r["routed_requests"] for r in replicas) == len(prompts)
    assert sum(r["routed_by_prefix"] for r in replicas) >= 12  # every group's followers
    assert min(r["routed_requests"] for r in replicas) >= 4  # the groups spread over both replicas
    assert all(r["cache_hit_rate"] > 0 for r in replicas)
    assert info["cache_hit_rate"] >= single_rate - 0.05, (info["cache_hit_rate"], single_rate)
