"""RadixCache: unit tests of insert / match / split / locks / LRU eviction, and a hypothesis
state machine that checks the tree against a naive prefix-set model with full slot accounting."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from radixlm.runtime.radix.radix_cache import RadixCache


# ----------------------------------------------------------------------------- helpers
class Recorder:
    """free_slots callback that remembers every slot handed back, call by call."""

    def __init__(self) -> None:
        self.calls: list[list[int]] = []

    def __call__(self, slots: torch.Tensor) -> None:
        assert slots.dtype == torch.int64
        self.calls.append(slots.tolist())

    @property
    def slots(self) -> list[int]:
        return [s for call in self.calls for s in call]


def t(xs) -> torch.Tensor:
    return torch.tensor(list(xs), dtype=torch.int64)


def make(disable: bool = False) -> tuple[RadixCache, Recorder]:
    rec = Recorder()
    return RadixCache(rec, disable=disable), rec


def tree_slots(cache: RadixCache) -> list[int]:
    return sorted(cache.all_slots().tolist())


# ----------------------------------------------------------------------------- unit tests
def test_empty_tree():
    cache, rec = make()
    m = cache.match_prefix([1, 2, 3])
    assert m.kv_indices.dtype == torch.int64 and m.kv_indices.numel() == 0
    assert m.last_node is cache.root
    assert cache.match_prefix([]).kv_indices.numel() == 0
    assert cache.total_size == cache.evictable_size == cache.protected_size == 0
    assert cache.evict(10) == 0
    assert rec.calls == []
    cache.self_check()


def test_insert_then_match_exact_and_longer_and_shorter():
    cache, _ = make()
    assert cache.insert([1, 2, 3, 4], t([10, 11, 12, 13])) == 0
    assert cache.total_size == 4 and cache.evictable_size == 4 and cache.protected_size == 0
    assert cache.match_prefix([1, 2, 3, 4]).kv_indices.tolist() == [10, 11, 12, 13]
    # a longer query matches only the cached part
    assert cache.match_prefix([1, 2, 3, 4, 5, 6]).kv_indices.tolist() == [10, 11, 12, 13]
    # a diverging query matches up to the divergence
    assert cache.match_prefix([1, 2, 9]).kv_indices.tolist() == [10, 11]
    # no shared first token: nothing
    assert cache.match_prefix([2, 1]).kv_indices.tolist() == []
    cache.self_check()
    assert tree_slots(cache) == [10, 11, 12, 13]


def test_insert_does_not_alias_the_callers_tensor():
    cache, _ = make()
    value = t([5, 6, 7])
    cache.insert([1, 2, 3], value)
    value.fill_(-1)
    assert cache.match_prefix([1, 2, 3]).kv_indices.tolist() == [5, 6, 7]


def test_partial_match_splits_node_with_correct_value_slices():
    cache, _ = make()
    cache.insert([1, 2, 3, 4, 5], t([20, 21, 22, 23, 24]))
    assert len(cache.root.children) == 1
    m = cache.match_prefix([1, 2, 9])
    assert m.kv_indices.tolist() == [20, 21]
    # the match ended inside the node: last_node now covers exactly the matched tokens
    assert m.last_node.key == [1, 2]
    assert m.last_node.value.tolist() == [20, 21]
    assert m.last_node.parent is cache.root
    [lower] = m.last_node.children.values()
    assert lower.key == [3, 4, 5] and lower.value.tolist() == [22, 23, 24]
    assert lower.parent is m.last_node
    # nothing changed in content or counters
    assert cache.total_size == 5 and cache.evictable_size == 5
    assert cache.match_prefix([1, 2, 3, 4, 5]).kv_indices.tolist() == [20, 21, 22, 23, 24]
    assert tree_slots(cache) == [20, 21, 22, 23, 24]
    cache.self_check()


def test_match_ending_exactly_at_node_boundary_does_not_split():
    cache, _ = make()
    cache.insert([1, 2], t([1, 2]))
    cache.insert([1, 2, 3, 4], t([100, 101, 3, 4]))
    node_count = sum(1 for _ in cache._nodes())
    m = cache.match_prefix([1, 2])
    assert m.kv_indices.tolist() == [1, 2]
    assert m.last_node.key == [1, 2]
    assert sum(1 for _ in cache._nodes()) == node_count


def test_insert_returns_overlap_and_takes_only_the_rest():
    cache, rec = make()
    assert cache.insert([1, 2, 3], t([10, 11, 12])) == 0
    # shares [1, 2] with the cached run, diverges at the third token
    assert cache.insert([1, 2, 7, 8], t([30, 31, 32, 33])) == 2
    # the tree kept its own slots for [1, 2] and took 32, 33 only
    assert cache.match_prefix([1, 2, 7, 8]).kv_indices.tolist() == [10, 11, 32, 33]
    assert cache.match_prefix([1, 2, 3]).kv_indices.tolist() == [10, 11, 12]
    assert tree_slots(cache) == [10, 11, 12, 32, 33]
    assert cache.total_size == 5
    # a fully cached key: returns its full length and takes nothing
    assert cache.insert([1, 2, 7], t([40, 41, 42])) == 3
    # a key that ends inside a node: fully cached too
    assert cache.insert([1], t([50])) == 1
    assert tree_slots(cache) == [10, 11, 12, 32, 33]
    # extension of a cached key
    assert cache.insert([1, 2, 3, 4, 5], t([60, 61, 62, 63, 64])) == 3
    assert cache.match_prefix([1, 2, 3, 4, 5]).kv_indices.tolist() == [10, 11, 12, 63, 64]
    assert cache.total_size == 7
    assert rec.calls == []  # insert never frees anything itself
    cache.self_check()


def test_insert_empty_key():
    cache, _ = make()
    assert cache.insert([], t([])) == 0
    assert cache.total_size == 0
    cache.self_check()


def test_lock_protects_from_eviction_and_moves_counters():
    cache, rec = make()
    cache.insert([1, 2, 3, 4], t([10, 11, 12, 13]))
    cache.insert([5, 6], t([20, 21]))
    m = cache.match_prefix([1, 2, 3, 4])
    cache.inc_lock_ref(m.last_node)
    assert cache.protected_size == 4 and cache.evictable_size == 2 and cache.total_size == 6
    cache.self_check()
    # asking for everything frees only the unlocked tokens
    assert cache.evict(100) == 2
    assert sorted(rec.slots) == [20, 21]
    assert cache.evictable_size == 0 and cache.protected_size == 4
    assert cache.evict(100) == 0
    assert cache.match_prefix([1, 2, 3, 4]).kv_indices.tolist() == [10, 11, 12, 13]
    cache.self_check()
    # unlock: the tokens become evictable again
    cache.dec_lock_ref(m.last_node)
    assert cache.protected_size == 0 and cache.evictable_size == 4
    assert cache.evict(1) == 4  # a whole leaf goes
    assert sorted(rec.slots) == [10, 11, 12, 13, 20, 21]
    assert cache.total_size == 0
    cache.self_check()


def test_lock_on_a_prefix_protects_only_the_prefix():
    cache, rec = make()
    cache.insert([1, 2, 3, 4, 5, 6], t(range(100, 106)))
    m = cache.match_prefix([1, 2, 3])  # splits; lock the upper half
    cache.inc_lock_ref(m.last_node)
    assert cache.protected_size == 3 and cache.evictable_size == 3
    assert cache.evict(100) == 3
    assert sorted(rec.slots) == [103, 104, 105]
    assert cache.match_prefix([1, 2, 3, 4, 5, 6]).kv_indices.tolist() == [100, 101, 102]
    cache.self_check()
    cache.dec_lock_ref(m.last_node)
    assert cache.evictable_size == 3 and cache.protected_size == 0
    cache.self_check()


def test_nested_locks_count():
    cache, _ = make()
    cache.insert([1, 2, 3, 4], t([1, 2, 3, 4]))
    outer = cache.match_prefix([1, 2]).last_node
    inner = cache.match_prefix([1, 2, 3, 4]).last_node
    cache.inc_lock_ref(inner)
    cache.inc_lock_ref(outer)
    cache.inc_lock_ref(inner)
    assert cache.protected_size == 4
    cache.self_check()
    cache.dec_lock_ref(inner)
    assert cache.protected_size == 4
    cache.dec_lock_ref(inner)
    assert cache.protected_size == 2 and cache.evictable_size == 2
    cache.self_check()
    cache.dec_lock_ref(outer)
    assert cache.protected_size == 0 and cache.evictable_size == 4
    with pytest.raises(AssertionError):
        cache.dec_lock_ref(outer)


def test_split_of_a_locked_node_keeps_the_lock_counts():
    cache, rec = make()
    cache.insert([1, 2, 3, 4], t([1, 2, 3, 4]))
    node = cache.match_prefix([1, 2, 3, 4]).last_node
    cache.inc_lock_ref(node)
    cache.match_prefix([1, 2])  # splits the locked node
    cache.self_check()
    assert cache.protected_size == 4 and cache.evictable_size == 0
    assert cache.evict(10) == 0
    cache.dec_lock_ref(node)  # releases both halves
    assert cache.protected_size == 0 and cache.evictable_size == 4
    cache.self_check()
    assert cache.evict(10) == 4
    assert sorted(rec.slots) == [1, 2, 3, 4]


def test_insert_below_a_locked_node_is_evictable():
    cache, rec = make()
    cache.insert([1, 2], t([1, 2]))
    node = cache.match_prefix([1, 2]).last_node
    cache.inc_lock_ref(node)
    assert cache.insert([1, 2, 3], t([0, 0, 3])) == 2
    assert cache.protected_size == 2 and cache.evictable_size == 1
    cache.self_check()
    assert cache.evict(5) == 1
    assert rec.slots == [3]
    cache.dec_lock_ref(node)


def test_lru_least_recently_matched_leaf_goes_first():
    cache, rec = make()
    cache.insert([1, 1], t([10, 11]))
    cache.insert([2, 2], t([20, 21]))
    cache.insert([3, 3], t([30, 31]))
    # touch in the order 1, 3, 2: leaf [1, 1] is now the least recently used
    cache.match_prefix([1, 1])
    cache.match_prefix([3, 3])
    cache.match_prefix([2, 2])
    assert cache.evict(1) == 2
    assert rec.calls == [[10, 11]]
    assert cache.evict(1) == 2
    assert rec.calls[-1] == [30, 31]
    assert cache.evict(1) == 2
    assert rec.calls[-1] == [20, 21]
    assert cache.total_size == 0


def test_lru_insertion_counts_as_use_and_evict_stops_once_enough_is_freed():
    cache, rec = make()
    cache.insert([1], t([10]))
    cache.insert([2], t([20]))
    cache.insert([3], t([30]))
    cache.match_prefix([1])  # order of use now: 2, 3, 1
    assert cache.evict(2) == 2
    assert sorted(rec.slots) == [20, 30]
    assert cache.match_prefix([1]).kv_indices.tolist() == [10]
    cache.self_check()


def test_a_partial_match_refreshes_only_the_matched_part():
    cache, rec = make()
    cache.insert([1, 2, 3, 4], t([10, 11, 12, 13]))
    cache.insert([5, 6], t([50, 51]))
    cache.match_prefix([1, 2])  # split: [1,2] is fresh, its child [3,4] keeps the old time
    assert cache.evict(1) == 2
    assert sorted(rec.slots) == [12, 13]
    assert cache.evict(1) == 2
    assert sorted(rec.calls[-1]) == [50, 51]
    assert cache.evict(1) == 2
    assert sorted(rec.calls[-1]) == [10, 11]


def test_parent_is_evicted_after_its_children():
    cache, rec = make()
    cache.insert([1, 2, 3], t([10, 11, 12]))
    cache.insert([1, 2, 4], t([10, 11, 14]))  # parent [1, 2] with children [3], [4]
    cache.insert([9], t([90]))
    cache.match_prefix([9])  # [9] is the most recently used
    # the parent is older than [9] but not a leaf until both children are gone
    assert cache.evict(2) == 2
    assert sorted(rec.slots) == [12, 14]
    assert cache.match_prefix([1, 2]).kv_indices.tolist() == [10, 11]
    cache.self_check()
    # match([9]) refreshes it, so the now-leaf parent [1, 2] goes first
    cache.match_prefix([9])
    assert cache.evict(1) == 2
    assert sorted(rec.calls[-1]) == [10, 11]
    assert cache.match_prefix([9]).kv_indices.tolist() == [90]
    cache.self_check()


def test_evict_frees_a_parent_in_the_same_call_when_needed():
    cache, rec = make()
    cache.insert([1, 2, 3], t([10, 11, 12]))
    cache.match_prefix([1, 2])  # split into [1,2] -> [3]
    assert cache.evict(3) == 3
    assert sorted(rec.slots) == [10, 11, 12]
    assert len(rec.calls) == 1  # handed back in one batch
    assert cache.total_size == 0 and cache.root.children == {}
    cache.self_check()


def test_disabled_cache():
    cache, rec = make(disable=True)
    assert cache.insert([1, 2, 3], t([1, 2, 3])) == 0
    m = cache.match_prefix([1, 2, 3])
    assert m.kv_indices.numel() == 0 and m.kv_indices.dtype == torch.int64
    assert m.last_node is cache.root
    cache.inc_lock_ref(m.last_node)
    cache.dec_lock_ref(m.last_node)
    assert cache.total_size == 0
    assert cache.evict(10) == 0
    assert rec.calls == []
    cache.self_check()


def test_reset_forgets_everything_without_freeing():
    cache, rec = make()
    cache.insert([1, 2, 3], t([1, 2, 3]))
    node = cache.match_prefix([1, 2]).last_node
    cache.inc_lock_ref(node)
    cache.reset()
    assert rec.calls == []
    assert cache.total_size == cache.evictable_size == cache.protected_size == 0
    assert cache.match_prefix([1, 2, 3]).kv_indices.numel() == 0
    assert cache.all_slots().numel() == 0
    cache.self_check()
    # usable again, slots can be reused after a reset
    assert cache.insert([1, 2, 3], t([1, 2, 3])) == 0
    assert cache.match_prefix([1, 2, 3]).kv_indices.tolist() == [1, 2, 3]
    cache.self_check()


def test_self_check_detects_broken_invariants():
    cache, _ = make()
    cache.insert([1, 2, 3], t([1, 2, 3]))
    cache.insert([4, 5], t([4, 5]))
    cache.self_check()
    cache.evictable_size += 1
    with pytest.raises(AssertionError):
        cache.self_check()
    cache.evictable_size -= 1
    node = cache.root.children[4]
    saved = node.value
    node.value = t([1, 5])  # slot 1 is also used by [1]
    with pytest.raises(AssertionError):
        cache.self_check()
    node.value = t([9])
    with pytest.raises(AssertionError):
        cache.self_check()
    node.value = saved
    cache.self_check()


# ----------------------------------------------------------------------------- property test
ALPHABET = st.integers(0, 3)
SEQS = st.lists(ALPHABET, min_size=1, max_size=12)


class RadixModel(RuleBasedStateMachine):
    """The tree against a naive model.

    model:   tuple(prefix) -> slot of the prefix's last token, for every cached prefix
             (prefix-closed: all prefixes of inserted keys, minus evicted ones);
    access:  tuple(prefix) -> logical time of the last insert/match that covered it;
    locks:   held (node, path) pairs; every prefix of a held path is locked.
    Slots:   every slot ever allocated is in exactly one of: handed back by the tree through
             free_slots, held by the tree, or kept by the test (the overlap insert returned).
    """

    def __init__(self) -> None:
        super().__init__()
        self.freed: list[int] = []
        self.cache = RadixCache(lambda s: self.freed.extend(s.tolist()))
        self.next_slot = 1
        self.kept: list[int] = []  # slots the tree did not take, back with the "allocator"
        self.model: dict[tuple, int] = {}
        self.access: dict[tuple, int] = {}
        self.clock = 0
        self.locks: list[tuple[object, tuple]] = []

    # -- model helpers
    def cached_len(self, seq) -> int:
        n = 0
        while n < len(seq) and tuple(seq[: n + 1]) in self.model:
            n += 1
        return n

    def locked(self) -> set[tuple]:
        return {path[:i] for _, path in self.locks for i in range(1, len(path) + 1)}

    def touch(self, seq, n: int) -> None:
        self.clock += 1
        for i in range(1, n + 1):
            self.access[tuple(seq[:i])] = self.clock

    # -- rules
    @rule(data=st.data(), seq=SEQS, extend=st.booleans())
    def insert(self, data, seq, extend):
        """Insert a random key, or extend (or re-insert) a cached prefix so that inserts often
        end inside a node or exactly at its end."""
        if extend and self.model:
            base = data.draw(st.sampled_from(sorted(self.model)))
            seq = list(base) + seq[: data.draw(st.integers(0, 6))]
        self._insert(seq)

    def _insert(self, seq):
        slots = list(range(self.next_slot, self.next_slot + len(seq)))
        self.next_slot += len(seq)
        expected = self.cached_len(seq)
        value = torch.tensor(slots, dtype=torch.int64)
        got = self.cache.insert(seq, value)
        assert got == expected, (seq, got, expected)
        value.fill_(-1)  # the caller may reuse its buffer: the tree must have copied its part
        self.kept.extend(slots[:got])
        for i in range(got, len(seq)):
            self.model[tuple(seq[: i + 1])] = slots[i]
        self.touch(seq, len(seq))

    @rule(
        data=st.data(),
        seq=st.lists(ALPHABET, min_size=1, max_size=14),
        cached=st.booleans(),
        lock=st.booleans(),
    )
    def match(self, data, seq, cached, lock):
        """Match a random key, or a cached prefix (which often ends inside a node: a split)."""
        if cached and self.model:
            seq = list(data.draw(st.sampled_from(sorted(self.model))))
        self._match(seq, lock)

    def _match(self, seq, lock):
        m = self.cache.match_prefix(seq)
        n = self.cached_len(seq)
        assert m.kv_indices.dtype == torch.int64
        assert m.kv_indices.tolist() == [self.model[tuple(seq[: i + 1])] for i in range(n)], seq
        # last_node covers exactly the matched tokens
        path, node = [], m.last_node
        while node is not self.cache.root:
            path[:0] = node.key
            node = node.parent
        assert path == list(seq[:n])
        self.touch(seq, n)
        if lock:
            before = self.cache.protected_size
            self.cache.inc_lock_ref(m.last_node)
            self.locks.append((m.last_node, tuple(seq[:n])))
            assert self.cache.protected_size == len(self.locked()) >= before

    @precondition(lambda self: self.locks)
    @rule(data=st.data())
    def unlock(self, data):
        # release a random held lock; the last one only half the time, so that evictions
        # often run while something is locked
        if len(self.locks) == 1 and data.draw(st.booleans()):
            return
        i = data.draw(st.integers(0, len(self.locks) - 1))
        node, path = self.locks.pop(i)
        self.cache.dec_lock_ref(node)
        assert self.cache.protected_size == len(self.locked())

    @precondition(lambda self: self.model)
    @rule(n=st.integers(1, 10))
    def evict(self, n):
        before_evictable = self.cache.evictable_size
        before_freed = len(self.freed)
        locked = self.locked()
        got = self.cache.evict(n)
        new = self.freed[before_freed:]
        assert got == len(new)
        assert got >= min(n, before_evictable)
        assert got <= before_evictable
        assert self.cache.evictable_size == before_evictable - got
        by_slot = {slot: p for p, slot in self.model.items()}
        evicted = {by_slot[s] for s in new}  # KeyError: freed a slot the tree did not hold
        assert len(evicted) == len(new)
        assert not (evicted & locked), "evicted a locked token"
        for p in evicted:
            del self.model[p]
        # eviction removes whole subtrees: what is left stays prefix-closed
        for p in self.model:
            assert p[:-1] == () or p[:-1] in self.model
        # LRU: nothing evicted is more recent than an unlocked leaf that was kept
        if evicted:
            newest_evicted = max(self.access[p] for p in evicted)
            children = {p[:-1] for p in self.model}
            for p in self.model:
                if p not in children and p not in locked:
                    assert self.access[p] >= newest_evicted, (p, self.access[p], newest_evicted)
        for p in evicted:
            del self.access[p]

    # -- invariants
    @invariant()
    def tree_consistent(self):
        self.cache.self_check()

    @invariant()
    def slots_accounted(self):
        in_tree = self.cache.all_slots().tolist()
        assert sorted(in_tree) == sorted(self.model.values())
        everything = self.freed + in_tree + self.kept
        assert len(everything) == len(set(everything)), "a slot is owned twice"
        assert set(everything) == set(range(1, self.next_slot)), "a slot was lost"

    @invariant()
    def sizes(self):
        locked = self.locked()
        assert self.cache.total_size == len(self.model)
        assert self.cache.protected_size == len(locked)
        assert self.cache.evictable_size == len(self.model) - len(locked)
        assert locked <= self.model.keys()

    def teardown(self):
        for node, _ in self.locks:
            self.cache.dec_lock_ref(node)
        self.cache.self_check()
        assert self.cache.protected_size == 0
        total = self.cache.total_size
        assert self.cache.evict(10**9) == total
        assert self.cache.total_size == 0 and self.cache.all_slots().numel() == 0
        assert sorted(self.freed + self.kept) == list(range(1, self.next_slot))


RadixModel.TestCase.settings = settings(
    max_examples=100,
    stateful_step_count=50,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestRadixModel = RadixModel.TestCase
