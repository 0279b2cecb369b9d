"""Scheduler behaviour, driven step by step in this process (no sockets): prefix reuse,
ordering, chunking, abort at every stage, retraction, accounting after every step."""

from __future__ import annotations

import random

import pytest
from helpers import LocalRuntime, hf_greedy


def ids_of(n: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(4, 8192) for _ in range(n)]


def greedy(n: int = 8) -> dict:
    return {"max_new_tokens": n, "temperature": 0, "ignore_eos": True}


def submit(rt: LocalRuntime, prompt_ids: list[int], params: dict):
    return rt.submit(prompt_ids, params)


def run_all(rt: LocalRuntime) -> None:
    rt.run_all()


def generate(rt: LocalRuntime, ids: list[int], params: dict):
    [req] = rt.generate([ids], params)
    return req


@pytest.fixture
def engine():
    return LocalRuntime("llama")


def test_same_prompt_twice_is_cached(engine):
    ids = ids_of(57, 1)
    first = generate(engine, ids, greedy())
    second = generate(engine, ids, greedy())
    assert first.cached_tokens == 0
    assert second.cached_tokens >= len(ids) - 1
    assert second.output_ids == first.output_ids


def test_shared_100_token_prefix_is_reported_cached(engine):
    prefix = ids_of(100, 2)
    a = generate(engine, prefix + ids_of(10, 3), greedy())
    b = generate(engine, prefix + ids_of(12, 4), greedy())
    assert a.cached_tokens == 0
    assert b.cached_tokens >= 100
    assert 0 < engine.scheduler.stats.cache_hit_rate < 1


def test_in_batch_prefix_sharing_computes_the_prefix_once(engine):
    prefix = ids_of(80, 5)
    prompts = [prefix + ids_of(5, 10 + i) for i in range(6)]
    outs = engine.generate(prompts, greedy(4))
    cached = sorted(o.cached_tokens for o in outs)
    # one request computes the shared prefix; the others are deferred a round and hit it
    assert cached[0] == 0 and all(c >= 80 for c in cached[1:])
    for ids, out in zip(prompts, outs):
        assert out.output_ids == hf_greedy("llama", ids, 4)


def test_lpm_orders_longest_cached_prefix_first():
    engine = LocalRuntime("llama")
    hot = ids_of(64, 7)
    generate(engine, hot, {"max_new_tokens": 0})
    cold = [ids_of(30, 20 + i) for i in range(3)]
    warm = hot + ids_of(4, 30)
    order = engine.scheduler.policy.order(
        [submit(engine, c, greedy()) for c in cold] + [submit(engine, warm, greedy())]
    )
    assert order[0].origin_input_ids == warm
    run_all(engine)


def test_fcfs_keeps_arrival_order():
    engine = LocalRuntime("llama", schedule_policy="fcfs")
    reqs = [submit(engine, ids_of(10 + i, 40 + i), greedy()) for i in range(4)]
    assert engine.scheduler.policy.order(engine.scheduler.waiting) == reqs
    run_all(engine)


def test_chunked_prefill_inserts_chunks_into_the_tree():
    engine = LocalRuntime("llama", chunked_prefill_size=16)
    ids = ids_of(70, 8)
    req = submit(engine, ids, greedy(3))
    engine.scheduler.step()
    assert req.is_chunked and req.kv_len == 16
    assert engine.scheduler.tree.total_size == 16  # the chunk is shared at once
    run_all(engine)
    assert req.output_ids == hf_greedy("llama", ids, 3)


@pytest.mark.parametrize("stage", ["waiting", "chunked", "running"])
def test_abort_at_every_stage_frees_everything(stage):
    engine = LocalRuntime("llama", chunked_prefill_size=16)
    other = submit(engine, ids_of(20, 9), greedy(20))
    victim = submit(engine, ids_of(70, 10), greedy(50))
    sched = engine.scheduler
    if stage == "chunked":
        sched.step()  # prefill `other` (20 tokens) fits; victim gets no room in a 16-token chunk yet
        while not victim.is_chunked:
            sched.step()
    elif stage == "running":
        while victim not in sched.running:
            sched.step()
    assert sched.abort_request(victim.rid)
    run_all(engine)
    assert victim.finished_reason["type"] == "abort"
    assert victim.req_pool_idx is None and victim.kv_len == 0
    assert other.finished_reason["type"] == "length"
    assert other.output_ids == hf_greedy("llama", other.origin_input_ids, 20)
    assert not sched.abort_request(victim.rid)  # already finished: nothing to abort


def test_retraction_requeues_at_the_front_and_loses_nothing():
    # a low conservativeness admits more than the pool can decode, forcing retractions
    engine = LocalRuntime("llama", max_total_tokens=120, schedule_conservativeness=0.3)
    prompts = [ids_of(30, 50 + i) for i in range(6)]
    reqs = [submit(engine, p, greedy(30)) for p in prompts]
    run_all(engine)
    assert engine.scheduler.stats.retractions > 0
    for req, ids in zip(reqs, prompts):
        assert req.finished_reason == {"type": "length", "length": 30}
        assert req.output_ids == hf_greedy("llama", ids, 30)


def test_flush_cache_refused_while_busy():
    engine = LocalRuntime("llama")
    submit(engine, ids_of(10, 60), greedy(4))
    assert engine.flush_cache() is False
    run_all(engine)
    assert engine.flush_cache() is True
    assert engine.scheduler.tree.total_size == 0


def test_context_clamps_max_new_tokens():
    engine = LocalRuntime("llama", context_length=64)
    out = generate(engine, ids_of(60, 61), greedy(100))
    assert len(out.output_ids) == 4
    assert out.finished_reason["type"] == "length"
