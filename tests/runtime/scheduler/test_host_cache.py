"""The scheduler over a two-tier radix cache on CPU (a small "device" pool and a separate host
pool in ordinary memory): greedy outputs identical with and without the host tier, under
chunked prefill, retraction, overlap, write-through and an fp8 KV cache; host hits on a
multi-turn workload whose working set is many times the device pool; loads in flight held
across steps, and aborted mid-load, with accounting checked after every step."""

from __future__ import annotations

import random

import pytest
from helpers import LocalRuntime

from radixlm.runtime.radix.kv_transfer import LoadTicket
from radixlm.runtime.scheduler.server_info import server_info

GREEDY = {"temperature": 0, "ignore_eos": True}


def multi_turn(rt: LocalRuntime, conversations: int = 8, turns: int = 4, history: int = 60, seed: int = 0):
    """Conversations take turns (all of turn t, then t+1); each turn appends user tokens and
    the reply. Returns every reply, in order."""
    rng = random.Random(seed)
    convs = [[rng.randrange(5, 2000) for _ in range(history)] for _ in range(conversations)]
    replies = []
    for _ in range(turns):
        for c in convs:
            c += [rng.randrange(5, 2000) for _ in range(10)]
        reqs = [rt.submit(list(c), {**GREEDY, "max_new_tokens": 8}) for c in convs]
        rt.run_all()  # checks the accounting after every step
        for c, r in zip(convs, reqs):
            assert r.finished_reason["type"] == "length"
            c += r.output_ids
            replies.append(r.output_ids)
    return replies


@pytest.fixture(scope="module")
def baseline() -> list[list[int]]:
    return multi_turn(LocalRuntime("llama", max_total_tokens=300, max_prefill_tokens=256))


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"hicache_write_policy": "write_through"},
        {"chunked_prefill_size": 32},
        {"overlap_schedule": "on"},
        {"hicache_ratio": 0.5},  # a host tier smaller than the device pool: host eviction all along
    ],
    ids=["write-back", "write-through", "chunked", "overlap", "small-host"],
)
def test_greedy_outputs_are_identical_with_the_host_tier(baseline, options):
    rt = LocalRuntime(
        "llama", max_total_tokens=300, max_prefill_tokens=256, enable_hierarchical_cache=True, **options
    )
    assert multi_turn(rt) == baseline
    info = server_info(rt.config, rt.scheduler)
    assert info["kv_accounting"] == "ok"
    assert info["host_hit_tokens"] > 0 and info["host_loads"] > 0
    assert info["bytes_to_host"] > 0 and info["bytes_to_device"] > 0
    total = info["device_hit_tokens"] + info["host_hit_tokens"] + info["recomputed_tokens"]
    assert total == info["prompt_tokens"]
    assert rt.flush_cache()
    usage = rt.check_accounting()
    assert usage["free_tokens"] == usage["total_tokens"]
    assert usage["host_free_tokens"] == usage["host_total_tokens"]


def test_host_tier_raises_the_hit_rate_when_the_working_set_outgrows_the_device():
    without = LocalRuntime("llama", max_total_tokens=300, max_prefill_tokens=256)
    with_host = LocalRuntime(
        "llama", max_total_tokens=300, max_prefill_tokens=256, enable_hierarchical_cache=True, hicache_ratio=8
    )
    assert multi_turn(without, turns=5) == multi_turn(with_host, turns=5)  # working set ~5x the pool
    a = server_info(without.config, without.scheduler)
    b = server_info(with_host.config, with_host.scheduler)
    assert a["host_hit_tokens"] == 0 and not a["hierarchical_cache"]
    assert b["cache_hit_rate"] > 2 * a["cache_hit_rate"]
    assert b["recomputed_tokens"] < a["recomputed_tokens"] / 2


def test_fp8_kv_cache_round_trips_through_the_host_tier():
    opts = {"max_total_tokens": 300, "max_prefill_tokens": 256, "kv_cache_dtype": "fp8_e4m3"}
    plain = multi_turn(LocalRuntime("llama", **opts), turns=3)
    rt = LocalRuntime("llama", enable_hierarchical_cache=True, **opts)
    assert multi_turn(rt, turns=3) == plain
    assert server_info(rt.config, rt.scheduler)["host_hit_tokens"] > 0


def test_retraction_with_the_host_tier_keeps_outputs():
    prompts = [[20 + i] * 5 + list(range(100 + 7 * i, 130 + 7 * i)) for i in range(6)]
    params = {**GREEDY, "max_new_tokens": 40}
    plain = LocalRuntime("llama", max_total_tokens=160, schedule_conservativeness=0.05)
    rt = LocalRuntime(
        "llama", max_total_tokens=160, schedule_conservativeness=0.05, enable_hierarchical_cache=True
    )
    a = [r.output_ids for r in plain.generate(prompts, params)]
    b = [r.output_ids for r in rt.generate(prompts, params)]
    assert a == b
    assert rt.scheduler.stats.retractions > 0


class HeldTickets:
    """Loads copy at once (CPU) but count as in flight until `land()`: the scheduler must keep
    stepping other requests and admit a loading one only after its copy has landed."""

    def __init__(self, rt: LocalRuntime) -> None:
        self.tickets: list[LoadTicket] = []
        transfer = rt.runner.kv_transfer
        real_load = transfer.load

        def held_load(host_slots, device_slots):
            ticket = real_load(host_slots, device_slots)
            ticket.held = True
            ticket.ready = lambda: not ticket.held
            self.tickets.append(ticket)
            return ticket

        transfer.load = held_load

    def land(self) -> None:
        for t in self.tickets:
            t.held = False


@pytest.fixture()
def two_tier() -> LocalRuntime:
    rt = LocalRuntime("llama", max_total_tokens=200, max_prefill_tokens=256, enable_hierarchical_cache=True)
    yield rt
    rt.runner.kv_transfer.__dict__.pop("load", None)


def _evict_to_host(rt: LocalRuntime, prompt: list[int]) -> HeldTickets:
    """Cache `prompt`, move everything to the host tier, and hold the loads that follow."""
    rt.generate([prompt], {**GREEDY, "max_new_tokens": 2})
    rt.scheduler.cache.make_room(rt.scheduler.cache.kv_pool.num_slots)
    assert rt.scheduler.tree.total_size == 0 and rt.scheduler.tree.host_total_size > 0
    return HeldTickets(rt)


def test_a_loading_request_waits_while_others_run(two_tier):
    rt = two_tier
    prompt = list(range(300, 360))
    held = _evict_to_host(rt, prompt)
    loading = rt.submit(prompt + [7, 8], {**GREEDY, "max_new_tokens": 4})
    other = rt.submit(list(range(1000, 1010)), {**GREEDY, "max_new_tokens": 4})
    for _ in range(12):
        rt.scheduler.step()
        rt.scheduler.check_accounting()
    assert other.finished and not loading.output_ids  # the load is still "in flight"
    assert loading.host_load is not None and rt.scheduler.cache.loads
    held.land()
    rt.run_all()
    assert loading.finished and loading.cached_tokens >= len(prompt)
    assert rt.scheduler.stats.host_cached_tokens >= len(prompt)
    # a second request for the same prefix while it is on the device: a device hit
    again = rt.generate([prompt + [9]], {**GREEDY, "max_new_tokens": 1})[0]
    assert again.cached_tokens == len(prompt)


def test_abort_during_a_load_frees_everything_once_it_lands(two_tier):
    rt = two_tier
    prompt = list(range(400, 470))
    held = _evict_to_host(rt, prompt)
    req = rt.submit(prompt + [5], {**GREEDY, "max_new_tokens": 4})
    rt.scheduler.step()
    assert req.host_load is not None
    rt.scheduler.abort_request(req.rid)
    rt.scheduler.step()
    assert req.finished and req.finished_reason["type"] == "abort"
    assert rt.scheduler.has_work  # the copy still writes its slots: they stay locked
    assert rt.scheduler.tree.protected_size == len(prompt)
    rt.scheduler.check_accounting()
    held.land()
    rt.run_all()
    assert not rt.scheduler.cache.loads and rt.scheduler.tree.protected_size == 0
    assert rt.flush_cache()
    usage = rt.check_accounting()
    assert usage["free_tokens"] == usage["total_tokens"]
    assert usage["host_free_tokens"] == usage["host_total_tokens"]


def test_a_second_request_for_a_loading_prefix_waits_for_that_load(two_tier):
    rt = two_tier
    prompt = list(range(500, 560))
    held = _evict_to_host(rt, prompt)
    first = rt.submit(prompt + [1], {**GREEDY, "max_new_tokens": 3})
    rt.scheduler.step()
    second = rt.submit(prompt + [2], {**GREEDY, "max_new_tokens": 3})
    for _ in range(3):
        rt.scheduler.step()
        rt.scheduler.check_accounting()
    assert len(held.tickets) == 1 and second.host_load is None and not second.output_ids
    held.land()
    rt.run_all()
    assert first.finished and second.finished
    assert second.cached_tokens == len(prompt)
