"""The radix tree's host tier on CPU: demotion on eviction (write-back), matches that
continue into host-only nodes, loads, adoption on insert, host eviction, write-through, and
the byte-exact round trip of KV through the host pool (fp32, fp16 and fp8 pools)."""

from __future__ import annotations

import logging

import pytest
import torch

from radixlm.runtime.radix.host_pool import HostKVPool, HostPoolSize, host_pool_size
from radixlm.runtime.radix.kv_transfer import KVTransfer, _runs
from radixlm.runtime.radix.memory_pool import KVPool
from radixlm.runtime.radix.radix_cache import RadixCache

LAYERS, HEADS, DIM = 2, 2, 4


class Load:  # what the scheduler's HostLoad is to the tree: something with `done`
    done = False


def make(device_slots: int = 32, host_slots: int = 64, dtype=torch.float32):
    pool = KVPool(device_slots, LAYERS, HEADS, DIM, dtype, torch.device("cpu"))
    per_token = KVPool.bytes_per_token(LAYERS, HEADS, DIM, dtype)
    host = HostKVPool(HostPoolSize(host_slots, per_token), LAYERS, pin=False)
    transfer = KVTransfer(pool, host)
    return RadixCache(pool.free, host=transfer), pool, host


def fill(pool: KVPool, slots: torch.Tensor) -> None:
    """Distinct random K/V in the given slots."""
    for buf in pool.k_buffers + pool.v_buffers:
        buf[slots] = torch.randn(len(slots), HEADS, DIM).to(buf.dtype)


def kv_of(pool: KVPool, slots: torch.Tensor) -> list[torch.Tensor]:
    return [buf[slots].clone() for buf in pool.k_buffers + pool.v_buffers]


def insert(cache: RadixCache, pool: KVPool, key: list[int]) -> torch.Tensor:
    slots = pool.alloc(len(key))
    fill(pool, slots)
    cached = cache.insert(key, slots)
    pool.free(slots[:cached])
    return slots


def test_eviction_demotes_to_host_and_a_match_reports_the_host_nodes():
    cache, pool, host = make()
    slots = insert(cache, pool, list(range(10)))
    before = kv_of(pool, slots)
    assert cache.evict(10) == 10
    cache.self_check()
    assert cache.total_size == 0 and cache.host_total_size == 10
    assert pool.available == 32 and host.available == 54
    m = cache.match_prefix(list(range(12)))
    assert m.kv_indices.numel() == 0 and m.last_node is cache.root and m.host_len == 10
    # load the node back into fresh slots: the same bytes arrive
    node = m.host_nodes[-1]
    cache.inc_lock_ref(node)
    new = pool.alloc(10)
    load = Load()
    host_slots = cache.begin_load(m.host_nodes, new, load)
    cache.host.load(host_slots, new)
    assert cache.match_prefix(list(range(12))).blocked_by is load  # not on the device until done
    load.done = True
    cache.self_check()
    m2 = cache.match_prefix(list(range(12)))
    assert m2.kv_indices.tolist() == new.tolist() and m2.host_len == 0
    assert all(torch.equal(a, b) for a, b in zip(before, kv_of(pool, new)))
    cache.dec_lock_ref(node)
    # evicted again: its host copy is kept, so nothing is copied out a second time
    sent = cache.host.bytes_to_host
    assert cache.evict(10) == 10 and cache.host.bytes_to_host == sent
    cache.self_check()


def test_eviction_keeps_device_residency_prefix_closed():
    cache, pool, _ = make()
    insert(cache, pool, [1, 2, 3, 4])
    insert(cache, pool, [1, 2, 3, 4, 5, 6])
    insert(cache, pool, [1, 2, 7, 8])
    assert cache.evict(2) >= 2
    cache.self_check()  # checks: no device node under a host-only parent
    cache.evict(100)
    cache.self_check()
    assert cache.total_size == 0 and cache.host_total_size == 8


def test_insert_over_host_only_nodes_adopts_the_callers_slots():
    cache, pool, _ = make()
    insert(cache, pool, [1, 2, 3, 4])
    cache.evict(4)
    slots = pool.alloc(6)
    fill(pool, slots)
    assert cache.insert([1, 2, 3, 4, 5, 6], slots) == 0  # nothing was on the device: all taken
    cache.self_check()
    m = cache.match_prefix([1, 2, 3, 4, 5, 6])
    assert m.kv_indices.tolist() == slots.tolist() and m.host_len == 0
    assert cache.host_total_size == 4  # the old host copy stays as a backup


def test_host_eviction_removes_host_only_leaves_and_drops_backups():
    cache, pool, host = make(device_slots=32, host_slots=8)
    insert(cache, pool, [1, 2, 3, 4])
    cache.evict(4)  # host: 4
    insert(cache, pool, [9, 8, 7, 6, 5])
    cache.evict(5)  # needs 5 host slots, 4 free: the LRU host-only leaf [1..4] goes
    cache.self_check()
    assert cache.match_prefix([1, 2, 3, 4]).host_len == 0
    assert cache.match_prefix([9, 8, 7, 6, 5]).host_len == 5
    assert host.available == 3


def test_eviction_without_host_room_drops_the_node_and_its_host_subtree():
    cache, pool, host = make(device_slots=32, host_slots=3)
    insert(cache, pool, [1, 2, 3, 4])
    insert(cache, pool, [1, 2, 3, 4, 5, 6])
    assert cache.evict(2) == 2  # the tail [5, 6] fits the host pool
    assert cache.match_prefix([1, 2, 3, 4, 5, 6]).host_len == 2
    assert cache.evict(4) == 4  # [1..4] cannot get 4 host slots: it goes, its host-only child too
    cache.self_check()
    assert cache.match_prefix([1, 2, 3, 4, 5, 6]).host_len == 0
    assert cache.total_size == cache.host_total_size == 0
    assert pool.available == 32 and host.available == 3


def test_locked_host_nodes_are_not_evicted_from_the_host():
    cache, pool, host = make(device_slots=32, host_slots=4)
    insert(cache, pool, [1, 2, 3, 4])
    cache.evict(4)
    node = cache.match_prefix([1, 2, 3, 4]).host_nodes[-1]
    cache.inc_lock_ref(node)
    assert cache.evict_host(4) == 0
    cache.self_check()
    cache.dec_lock_ref(node)
    assert cache.evict_host(4) == 4 and host.available == 4
    cache.self_check()


def test_write_through_backs_up_a_path_once():
    cache, pool, _ = make()
    insert(cache, pool, [1, 2, 3, 4])
    node = cache.match_prefix([1, 2, 3, 4]).last_node
    assert cache.backup_path(node) == 4
    assert cache.backup_path(node) == 0
    cache.self_check()
    assert cache.host_total_size == 4 and cache.host.bytes_to_host > 0
    sent = cache.host.bytes_to_host
    cache.evict(4)  # already on the host: eviction copies nothing
    assert cache.host.bytes_to_host == sent


def test_split_keeps_both_tiers_aligned():
    cache, pool, _ = make()
    slots = insert(cache, pool, list(range(8)))
    before = kv_of(pool, slots[:3])
    cache.evict(8)
    m = cache.match_prefix([0, 1, 2, 99])  # ends inside the host-only node: split
    assert m.host_len == 3
    cache.self_check()
    node = m.host_nodes[-1]
    cache.inc_lock_ref(node)
    new = pool.alloc(3)
    load = Load()
    cache.host.load(cache.begin_load(m.host_nodes, new, load), new)
    load.done = True
    assert all(torch.equal(a, b) for a, b in zip(before, kv_of(pool, new)))
    cache.dec_lock_ref(node)
    cache.self_check()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float8_e4m3fn])
def test_transfer_round_trip_is_byte_exact(dtype):
    pool = KVPool(40, LAYERS, HEADS, DIM, dtype, torch.device("cpu"))
    per_token = KVPool.bytes_per_token(LAYERS, HEADS, DIM, dtype)
    host = HostKVPool(HostPoolSize(50, per_token), LAYERS, pin=False)
    transfer = KVTransfer(pool, host)
    src = torch.tensor([3, 9, 4, 17, 30, 31, 32], dtype=torch.int64)
    fill(pool, src)
    host.buffer.fill_(0xAB)  # poisoned: what is read back must be what was written
    host_slots = torch.tensor([10, 11, 12, 40, 41, 2, 3], dtype=torch.int64)
    transfer.backup(src, host_slots)
    dst = torch.tensor([1, 2, 5, 6, 7, 8, 20], dtype=torch.int64)
    for buf in pool.k_buffers + pool.v_buffers:
        buf.view(torch.uint8)[dst] = 0xCD
    assert transfer.load(host_slots, dst).ready()
    for buf in pool.k_buffers + pool.v_buffers:
        assert torch.equal(buf[src].view(torch.uint8), buf[dst].view(torch.uint8))
    assert transfer.bytes_to_host == transfer.bytes_to_device == 7 * per_token


def test_runs_of_consecutive_host_slots():
    assert _runs(torch.tensor([4, 5, 6, 9, 10, 2], dtype=torch.int64)) == [(4, 0, 3), (9, 3, 2), (2, 5, 1)]
    assert _runs(torch.empty(0, dtype=torch.int64)) == []


def test_host_pool_size_is_refused_past_available_memory():
    with pytest.raises(ValueError, match="GiB of host memory") as err:
        host_pool_size(size_gb=1e7, ratio=2.0, device_slots=100, bytes_per_token=1024)
    assert "available" in str(err.value)
    size = host_pool_size(size_gb=0, ratio=3.0, device_slots=100, bytes_per_token=1024)
    assert size.num_slots == 300
    with pytest.raises(ValueError, match="no token"):
        host_pool_size(size_gb=1e-9, ratio=2.0, device_slots=100, bytes_per_token=1 << 20)


def test_host_pool_that_cannot_pin_falls_back_with_a_warning(monkeypatch, caplog):
    real_empty = torch.empty

    def no_pinning(*args, **kwargs):
        if kwargs.get("pin_memory"):
            raise RuntimeError("cannot pin memory here")
        return real_empty(*args, **kwargs)

    monkeypatch.setattr(torch, "empty", no_pinning)
    with caplog.at_level(logging.WARNING, logger="radixlm.runtime.radix.host_pool"):
        pool = HostKVPool(HostPoolSize(8, 64), 2, pin=True)
    assert not pool.pinned and pool.buffer.shape == (8, 64)
    assert any("pinned memory unavailable" in r.getMessage() for r in caplog.records)
