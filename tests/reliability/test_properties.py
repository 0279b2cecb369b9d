"""Property tests (hypothesis) over the pieces that must never lose or corrupt anything.

* The scheduler with its radix cache, as a state machine: any interleaving of arrivals
  (prompts sharing prefixes, varied lengths), aborts and steps on a small KV pool keeps
  the pool invariant and the tree's self-check after every step, drains completely, and a
  request's greedy output depends only on its prompt (not on what else ran, what was
  cached, retracted or aborted): equal prompts give equal outputs, a shorter length a prefix.
  (The radix tree alone against a naive model is tests/runtime/radix/test_radix_cache.py::RadixModel.)
  The same machine over two tiers (a host pool beside the small device pool) adds loads held
  in flight across steps until a rule lands them: arrivals, aborts (of loading requests too),
  evictions to the host and loads interleave, and both tiers' accounting holds after every step.
* Detokenisation: any token stream (special and byte tokens included), fed in any chunking,
  concatenates to the full decode, with skip_special_tokens on and off.
* Constrained decoding: for generated regexes (alternation, classes, bounded repeats,
  literals with escapes), every sampled output matches and stops.
"""

from __future__ import annotations

import re

import pytest
from helpers import LocalRuntime
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from radixlm.runtime.managers.detokenizer import DecodeState, IncrementalDetokenizer
from radixlm.runtime.tokenizer import load_tokenizer
from radixlm.testing import build_tiny_model

SLOW_OK = settings(
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,
    ],
)


# ------------------------------------------------------------------------- scheduler state machine
_RUNTIME: LocalRuntime | None = None
PREFIXES = [[11 + i for i in range(24)], [900 + 3 * i for i in range(40)], []]
TAILS = [[7], [8, 9, 10], [4000 + i for i in range(12)]]  # repeated tails make repeated prompts


def runtime() -> LocalRuntime:
    """One small-pool runtime for every example (the model loads once); each example ends drained."""
    global _RUNTIME
    if _RUNTIME is None:
        _RUNTIME = LocalRuntime(
            "llama", max_total_tokens=120, max_prefill_tokens=64, schedule_conservativeness=0.05
        )
    return _RUNTIME


class SchedulerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.rt = self._runtime()
        # every example from the same scheduler state: hypothesis replays examples (to shrink) and
        # requires the same draws, which `abort` takes from whichever requests are still live
        self.rt.fresh_scheduler()
        self.live: list = []
        self.done: list = []

    def _runtime(self) -> LocalRuntime:
        return runtime()

    @rule(
        burst=st.lists(
            st.tuples(
                st.sampled_from(range(len(PREFIXES))),
                st.one_of(st.sampled_from(TAILS), st.lists(st.integers(4, 40), min_size=1, max_size=12)),
                st.integers(1, 24),
            ),
            min_size=1,
            max_size=6,
        )
    )
    def arrive(self, burst):
        for prefix, tail, max_new in burst:
            params = {"max_new_tokens": max_new, "temperature": 0, "ignore_eos": True}
            self.live.append(self.rt.submit(PREFIXES[prefix] + tail, params))

    @precondition(lambda self: self.live)
    @rule(data=st.data())
    def abort(self, data):
        req = data.draw(st.sampled_from(self.live))
        self.rt.scheduler.abort_request(req.rid)
        self.live.remove(req)

    @rule(n=st.integers(1, 6))
    def step(self, n):
        for _ in range(n):
            if not self.rt.scheduler.has_work:
                break
            self.rt.scheduler.step()
            self._collect()

    def _collect(self) -> None:
        for req in [r for r in self.live if r.finished]:
            self.live.remove(req)
            self.done.append(req)

    @invariant()
    def accounting_balances(self):
        self.rt.scheduler.check_accounting()

    def teardown(self):
        self.rt.run_all()
        self._collect()
        assert not self.live, [r.rid for r in self.live]
        by_prompt: dict[tuple, list[int]] = {}
        for req in sorted(self.done, key=lambda r: len(r.output_ids), reverse=True):
            assert req.finished_reason["type"] == "length", req.finished_reason
            assert len(req.output_ids) == req.sampling_params.max_new_tokens
            key = tuple(req.origin_input_ids)
            longest = by_prompt.setdefault(key, req.output_ids)
            assert req.output_ids == longest[: len(req.output_ids)], key
        # the same prompts again, together on an empty cache: the same tokens
        assert self.rt.flush_cache()
        params = {"temperature": 0, "ignore_eos": True}
        again = {
            key: self.rt.submit(list(key), {**params, "max_new_tokens": len(ids)})
            for key, ids in by_prompt.items()
        }
        self.rt.run_all()
        for key, req in again.items():
            assert req.output_ids == by_prompt[key], key
        assert self.rt.flush_cache()
        usage = self.rt.check_accounting()
        assert usage["free_tokens"] == usage["total_tokens"], usage


TestSchedulerMachine = SchedulerMachine.TestCase
TestSchedulerMachine.settings = settings(SLOW_OK, max_examples=25, stateful_step_count=30)

_TWO_TIER: LocalRuntime | None = None


class TwoTierSchedulerMachine(SchedulerMachine):
    """The scheduler machine with a host tier (smaller than the working set, so it evicts
    too) whose loads stay in flight until `land_loads`: the copy is made at once on CPU, but
    the scheduler sees the ticket as pending and must keep stepping everything else."""

    def __init__(self) -> None:
        super().__init__()
        self.held: list = []
        transfer = self.rt.runner.kv_transfer
        real_load = type(transfer).load

        def held_load(host_slots, device_slots):
            ticket = real_load(transfer, host_slots, device_slots)
            ticket.landed = False
            ticket.ready = lambda: ticket.landed
            ticket.wait = lambda: setattr(ticket, "landed", True)  # a forced wait lands it
            self.held.append(ticket)
            return ticket

        transfer.load = held_load

    def _runtime(self) -> LocalRuntime:
        global _TWO_TIER
        if _TWO_TIER is None:
            _TWO_TIER = LocalRuntime(
                "llama",
                max_total_tokens=120,
                max_prefill_tokens=64,
                schedule_conservativeness=0.05,
                enable_hierarchical_cache=True,
                hicache_ratio=1.5,
            )
        return _TWO_TIER

    @rule(share=st.sampled_from([0.5, 1.0]))
    def land_loads(self, share):
        pending = [t for t in self.held if not t.landed]
        for ticket in pending[: max(1, int(len(pending) * share))]:
            ticket.landed = True

    @invariant()
    def loading_requests_hold_their_prefix(self):
        for load in self.rt.scheduler.cache.loads.values():
            assert load.node.lock_ref > 0

    def teardown(self):
        self.rt.runner.kv_transfer.__dict__.pop("load", None)  # loads from here on land at once
        for ticket in self.held:
            ticket.landed = True
        super().teardown()


TestTwoTierSchedulerMachine = TwoTierSchedulerMachine.TestCase
TestTwoTierSchedulerMachine.settings = settings(SLOW_OK, max_examples=25, stateful_step_count=30)


# ------------------------------------------------------------------------- detokenisation
@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(build_tiny_model("llama"))


@settings(SLOW_OK, max_examples=300)
@given(data=st.data(), skip=st.booleans())
def test_any_stream_in_any_chunking_concatenates_to_the_full_decode(tok, data, skip):
    vocab = len(tok)
    ids = data.draw(
        st.lists(st.one_of(st.integers(0, vocab - 1), st.integers(0, 3), st.integers(4, 300)), max_size=48),
        label="ids",
    )
    cuts = sorted(data.draw(st.lists(st.integers(0, len(ids)), max_size=10), label="cuts"))

    def decode(xs, skip_special):
        return tok.decode(xs, skip_special_tokens=skip_special, clean_up_tokenization_spaces=False)

    detok, state = IncrementalDetokenizer(decode), DecodeState()
    text, pos = "", 0
    for cut in cuts + [len(ids)]:
        text += detok.update(state, ids[pos:cut], skip, False, [], None, False)
        pos = cut
    text += detok.update(state, [], skip, True, [], None, False)
    assert text == decode(ids, skip)


# ------------------------------------------------------------------------- constrained decoding
ATOMS = st.one_of(
    st.sampled_from(["[a-c]", "[0-9]", "x", r"\.", "-", "(yes|no)", "[A-Z]", r"\d", "ab"]),
    st.text(alphabet="abcxyz", min_size=1, max_size=3),
)


@st.composite
def regexes(draw, depth: int = 0):
    """A small regex language with bounded repetition only, so a random model terminates."""
    parts = []
    for _ in range(draw(st.integers(1, 3))):
        if depth < 2 and draw(st.booleans()):
            inner = draw(st.lists(regexes(depth=depth + 1), min_size=1, max_size=3))
            atom = "(" + "|".join(inner) + ")"
        else:
            atom = draw(ATOMS)
        lo = draw(st.integers(0, 2))
        hi = lo + draw(st.integers(0, 2))
        parts.append(atom + draw(st.sampled_from(["", "?", f"{{{lo},{hi}}}", f"{{{max(lo, 1)}}}"])))
    return "".join(parts)


@pytest.fixture(scope="module")
def grammar_runtime():
    return LocalRuntime("llama")


@settings(SLOW_OK, max_examples=40)
@given(pattern=regexes(), seed=st.integers(0, 2**31 - 1))
# found by this test: Rust's Unicode \d allowed U+1CCF8, which Python's re does not call a digit
@example(pattern="([a-c]\\.)(([a-c]|[a-c]|\\d[a-c][a-c]))[a-c]", seed=4094)
def test_every_sampled_output_matches_a_generated_regex(grammar_runtime, pattern, seed):
    # at most 30 characters (so at most 30 tokens): a random model must reach the end inside max_new_tokens
    assume(re._parser.parse(pattern).getwidth()[1] <= 30)
    rt = grammar_runtime
    params = {"max_new_tokens": 64, "temperature": 1.0, "regex": pattern}
    reqs = [rt.submit([5, 6, 7, 8 + i], params, seed=seed + i) for i in range(3)]
    rt.run_all()
    for req in reqs:
        text = rt.tokenizer.decode(req.output_ids, skip_special_tokens=True)
        assert req.finished_reason["type"] == "stop", (pattern, req.finished_reason, text)
        assert re.fullmatch(pattern, text), (pattern, text)
