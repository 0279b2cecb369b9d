"""Overlap scheduling (decode step N+1 queued before step N's tokens are processed): outputs,
finish reasons and logprobs are identical with it on or off, whatever the mix of requests,
and KV accounting balances after every step, including while a step is in flight. On CPU
nothing runs concurrently, but the bookkeeping is the same code as on CUDA."""

from __future__ import annotations

import pytest
from helpers import LocalRuntime, get_engine, hf_greedy
from overlap_mix import assert_same_results, ids_of, run_mix


def test_overlap_gives_the_same_outputs_as_plain_steps():
    on, rt_on = run_mix("on")
    off, rt_off = run_mix("off")
    assert_same_results(on, off)
    assert rt_on.scheduler.stats.overlapped_steps > 10  # the fast path really ran
    assert rt_off.scheduler.stats.overlapped_steps == 0
    # every request whose limit is max_new_tokens got exactly that many tokens (none dropped or doubled)
    for req in on:
        if req.finished_reason["type"] == "length":
            assert len(req.output_ids) == req.sampling_params.max_new_tokens
    # a finishing request was fed once more; its extra K/V went to the tree, not astray
    assert rt_on.check_accounting()["in_use_tokens"] == 0


def test_overlap_greedy_equals_hf_and_caches_the_extra_token():
    rt = LocalRuntime("llama", overlap_schedule="on")
    ids = ids_of(30, 7)
    [req] = rt.generate([ids], {"max_new_tokens": 10, "temperature": 0, "ignore_eos": True})
    assert req.output_ids == hf_greedy("llama", ids, 10)
    # the finishing step was fed into one more step whose K/V is cached with the rest
    assert rt.scheduler.tree.match_prefix(ids + req.output_ids).kv_indices.numel() >= len(ids) + 9


def test_overlap_under_memory_pressure_retracts_and_loses_nothing():
    rt = LocalRuntime("llama", max_total_tokens=120, schedule_conservativeness=0.3, overlap_schedule="on")
    prompts = [ids_of(30, 50 + i) for i in range(6)]
    reqs = [rt.submit(p, {"max_new_tokens": 30, "temperature": 0, "ignore_eos": True}) for p in prompts]
    rt.run_all()
    assert rt.scheduler.stats.retractions > 0
    for req, ids in zip(reqs, prompts):
        assert req.finished_reason == {"type": "length", "length": 30}
        assert req.output_ids == hf_greedy("llama", ids, 30)


@pytest.mark.parametrize("when", [0, 1, 2, 5])
def test_abort_while_a_step_is_in_flight(when):
    rt = LocalRuntime("llama", overlap_schedule="on")
    keep = rt.submit(ids_of(12, 1), {"max_new_tokens": 12, "temperature": 0, "ignore_eos": True})
    victim = rt.submit(ids_of(14, 2), {"max_new_tokens": 12, "temperature": 0, "ignore_eos": True})
    sched = rt.scheduler
    for _ in range(when + 2):
        sched.step()
    assert sched.inflight is not None  # the abort arrives while a step is queued
    assert sched.abort_request(victim.rid)
    rt.run_all()
    assert victim.finished_reason["type"] == "abort" and victim.req_pool_idx is None
    assert keep.output_ids == hf_greedy("llama", keep.origin_input_ids, 12)


def test_stop_strings_and_eos_under_overlap_match_plain_steps():
    params = [
        {"max_new_tokens": 24, "temperature": 1.0, "stop": [" the", "e"]},
        {"max_new_tokens": 24, "temperature": 1.2},
        {"max_new_tokens": 24, "temperature": 0, "stop_token_ids": [7, 11, 13]},
    ]
    runs = {}
    for mode in ("on", "off"):
        rt = LocalRuntime("llama", overlap_schedule=mode)
        runs[mode] = [rt.submit(ids_of(8, 40 + i), p, seed=i) for i, p in enumerate(params * 3)]
        rt.run_all()
    assert_same_results(runs["on"], runs["off"])


def test_engine_reports_overlap_and_streams_the_same_tokens():
    engine = get_engine("llama", overlap_schedule="on")
    prompts = [ids_of(10 + i, 70 + i) for i in range(4)]
    params = {"max_new_tokens": 9, "temperature": 0, "ignore_eos": True}
    outs = engine.generate(input_ids=prompts, sampling_params=params)
    for ids, out in zip(prompts, outs):
        assert out["output_ids"] == hf_greedy("llama", ids, 9)
    chunks = list(engine.generate(input_ids=prompts[0], sampling_params=params, stream=True))
    assert chunks[-1]["finished"] and not any(c["finished"] for c in chunks[:-1])
    assert [t for c in chunks for t in c["output_ids"]] == outs[0]["output_ids"]
    info = engine.get_server_info()
    assert info["overlap_schedule"] is True and info["overlapped_steps"] > 0
