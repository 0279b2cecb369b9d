"""Speculative decoding without a draft model (speculative_algorithm ngram | lookahead): outputs,
finish reasons and logprobs are the same as with it off, on every tiny model family and every
way a request samples or stops. Drafts really are accepted where the text repeats (an earlier
request's output in the radix tree, a looping output), a request whose drafts keep failing backs
off, a batch larger than speculative_max_batch drafts nothing, the counters reach meta_info and
server_info, and bad options are refused by name. The conftest checks the KV accounting and
that flush_cache empties the pool after every test; run_all checks accounting after every step."""

from __future__ import annotations

import json
import math
import random

import pytest
from helpers import ARCHES, LocalRuntime, get_engine
from overlap_mix import assert_same_results, run_mix

from radixlm.runtime.config import EngineConfig
from radixlm.testing import build_tiny_model

ALGORITHMS = (None, "ngram", "lookahead")
SPECULATIVE = ("ngram", "lookahead")


def ids_of(n: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(4, 8192) for _ in range(n)]


def repeated(period: int, times: int, seed: int) -> list[int]:
    """A prompt that is one pattern said over and over: n-gram lookup matches all through it."""
    return ids_of(period, seed) * times


def greedy(n: int, **extra) -> dict:
    return {"max_new_tokens": n, "temperature": 0, "ignore_eos": True, **extra}


def run_rounds(name: str, algorithm: str | None, rounds: list[list[tuple]], **options):
    """A fresh runtime; each round (a list of (prompt ids, params, submit kwargs)) is submitted at
    once and runs to completion before the next, so a later round finds the earlier rounds'
    outputs in the radix tree (what lookahead proposes from). Returns (per round: the requests
    and the decode steps the round took), and the runtime."""
    rt = LocalRuntime(name, speculative_algorithm=algorithm, **options)
    out = []
    for batch in rounds:
        before = rt.scheduler.stats.decode_steps
        reqs = [rt.submit(ids, params, **kw) for ids, params, kw in batch]
        rt.run_all()
        out.append((reqs, rt.scheduler.stats.decode_steps - before))
    rt.check_accounting()
    return out, rt


def assert_same(reqs, ref, logprobs: bool = False) -> None:
    """Same outputs and finish reasons; with `logprobs`, one per output token, equal within 1e-5."""
    assert len(reqs) == len(ref)
    for x, y in zip(reqs, ref):
        assert x.output_ids == y.output_ids, (x.rid, x.output_ids, y.output_ids)
        assert x.finished_reason == y.finished_reason, x.rid
        if not logprobs:
            continue
        n = len(x.output_ids)
        assert len(x.output_token_logprobs) == n == len(x.output_top_logprobs), x.rid
        assert [t for _, t in x.output_token_logprobs] == x.output_ids
        for (lx, _), (ly, _) in zip(x.output_token_logprobs, y.output_token_logprobs):
            assert math.isclose(lx, ly, rel_tol=1e-5, abs_tol=1e-5), (x.rid, lx, ly)
        for tx, ty in zip(x.output_top_logprobs, y.output_top_logprobs):
            assert [t for t, _ in tx] == [t for t, _ in ty], x.rid
            for (_, vx), (_, vy) in zip(tx, ty):
                assert math.isclose(vx, vy, rel_tol=1e-5, abs_tol=1e-5), (x.rid, vx, vy)


def compare_algorithms(name: str, rounds: list[list[tuple]], logprobs: bool = False, **options) -> dict:
    """Run the rounds with speculation off, ngram and lookahead; every round's results must equal
    the off run's. Returns {algorithm: (rounds, runtime)}."""
    runs = {alg: run_rounds(name, alg, rounds, **options) for alg in ALGORITHMS}
    off, _ = runs[None]
    for alg in SPECULATIVE:
        for (reqs, _), (ref, _) in zip(runs[alg][0], off):
            assert_same(reqs, ref, logprobs)
    for reqs, _ in off:
        assert all(r.spec_proposed == 0 for r in reqs)
    for alg in SPECULATIVE:
        for reqs, _ in runs[alg][0]:
            assert all(0 <= r.spec_accepted <= r.spec_proposed for r in reqs)
    return runs


def accepted(rounds_result, i: int) -> int:
    reqs, _ = rounds_result[i]
    return sum(r.spec_accepted for r in reqs)


# ------------------------------------------------------------------ identical outputs


@pytest.mark.parametrize("name", ARCHES)
def test_greedy_outputs_are_identical_on_every_family(name):
    prompts = [repeated(6, 10, 1), ids_of(23, 2), repeated(3, 4, 3) + ids_of(5, 4)]
    batch = [(p, greedy(28), {}) for p in prompts]
    runs = compare_algorithms(name, [batch, batch])  # the second round finds the first's outputs
    lookahead, rt = runs["lookahead"]
    assert accepted(lookahead, 1) > 0
    assert lookahead[1][1] < runs[None][0][1][1]  # fewer decode steps than without drafts
    assert rt.scheduler.stats.spec_accepted_tokens == sum(accepted(lookahead, i) for i in range(2))


SAMPLING = {
    "sampled": {"temperature": 0.8, "top_p": 0.9, "top_k": 40},
    "sampled_min_p": {"temperature": 1.2, "min_p": 0.05},
    "penalties_greedy": {
        "temperature": 0,
        "repetition_penalty": 1.3,
        "frequency_penalty": 0.5,
        "presence_penalty": 0.3,
    },
    "penalties_sampled": {
        "temperature": 0.7,
        "top_k": 20,
        "repetition_penalty": 1.2,
        "frequency_penalty": 0.4,
        "presence_penalty": 0.6,
    },
    "min_new_tokens": {"temperature": 1.0, "min_new_tokens": 6},  # EOS allowed after 6
}


@pytest.mark.parametrize("name", ["llama", "qwen2"])  # qwen2's outputs loop: n-gram drafts hold
@pytest.mark.parametrize("setting", list(SAMPLING))
def test_sampling_settings_give_identical_outputs(name, setting):
    params = {"max_new_tokens": 24, "ignore_eos": setting != "min_new_tokens", **SAMPLING[setting]}
    prompts = [repeated(5, 8, 11), ids_of(17, 12)]
    # the same seed samples the same tokens, drafted or not: the second round repeats the first
    batch = [(p, params, {"seed": 7 + i}) for i, p in enumerate(prompts)]
    runs = compare_algorithms(name, [batch, batch])
    lookahead = runs["lookahead"][0]
    for first, second in zip(lookahead[0][0], lookahead[1][0]):
        assert second.output_ids == first.output_ids
    assert accepted(lookahead, 1) > 0


@pytest.mark.parametrize("max_new_tokens", [1, 2, 3])
def test_max_new_tokens_boundaries(max_new_tokens):
    prompt = repeated(4, 6, 21)
    long_run = [(prompt, greedy(30), {})]
    short = [(prompt, greedy(max_new_tokens), {}), (ids_of(9, 22), greedy(max_new_tokens), {})]
    # the tree holds 30 tokens after the prompt, so lookahead would draft past the limit
    runs = compare_algorithms("llama", [long_run, short, short])
    for alg in ALGORITHMS:
        for reqs, steps in runs[alg][0][1:]:
            assert [len(r.output_ids) for r in reqs] == [max_new_tokens] * 2
            assert all(r.finished_reason == {"type": "length", "length": max_new_tokens} for r in reqs)
            # one token comes from the prefill; drafts never pass the limit
            assert all(r.spec_proposed <= max(max_new_tokens - 2, 0) for r in reqs)
            assert steps <= max_new_tokens - 1


def test_drafts_stop_at_the_context_length():
    rt_opts = {"context_length": 64}
    prompt = repeated(5, 10, 31)  # 50 tokens: 14 to go before the context is full
    batch = [(prompt, greedy(30), {})]
    runs = compare_algorithms("llama", [batch, batch], **rt_opts)
    for alg in ALGORITHMS:
        for reqs, _ in runs[alg][0]:
            assert len(reqs[0].output_ids) == 14 and reqs[0].finished_reason["type"] == "length"


def test_stop_strings_and_stop_token_ids_cut_accepted_drafts():
    prompt = repeated(7, 6, 41)
    [([ref], _)], rt = run_rounds("llama", None, [[(prompt, greedy(40), {})]])
    text = rt.tokenizer.decode(ref.output_ids[18:21], skip_special_tokens=False)
    stop_word = text.strip()[:6] or text
    stop_id = ref.output_ids[12]
    # the first round puts 40 tokens in the tree; the later rounds stop inside them, so
    # lookahead's drafts run past the stop and must be cut there
    rounds = [
        [(prompt, greedy(40), {})],
        [(prompt, greedy(40, stop=[stop_word]), {})],
        [(prompt, greedy(40, stop_token_ids=[stop_id]), {})],
        [(prompt, greedy(40, stop=[stop_word], no_stop_trim=True), {})],
    ]
    runs = compare_algorithms("llama", rounds)
    off = runs[None][0]
    for i in (1, 2, 3):
        [req], _ = off[i]
        assert req.finished_reason["type"] == "stop", req.finished_reason
        assert len(req.output_ids) < 40
    assert off[2][0][0].output_ids[-1] == stop_id
    assert accepted(runs["lookahead"][0], 1) > 0


@pytest.mark.parametrize("temperature", [0, 0.9])
def test_logprobs_are_identical_and_one_per_output_token(temperature):
    params = {"max_new_tokens": 20, "temperature": temperature, "ignore_eos": True}
    prompts = [repeated(6, 6, 51), ids_of(14, 52)]
    kw = {"return_logprob": True, "top_logprobs_num": 3, "logprob_start_len": 0}
    batch = [(p, params, {**kw, "seed": 3 + i}) for i, p in enumerate(prompts)]
    runs = compare_algorithms("llama", [batch, batch], logprobs=True)
    lookahead = runs["lookahead"][0]
    assert accepted(lookahead, 1) > 0  # drafted rows produced some of the logprobs compared
    for alg in ALGORITHMS:
        for (reqs, _), (ref, _) in zip(runs[alg][0], runs[None][0]):
            for x, y in zip(reqs, ref):  # prompt logprobs are untouched by drafting
                assert len(x.input_token_logprobs) == len(x.origin_input_ids)
                assert [t for _, t in x.input_token_logprobs] == [t for _, t in y.input_token_logprobs]


@pytest.mark.parametrize("jump_forward", [True, False])
def test_a_batch_mixing_grammars_and_free_requests(jump_forward):
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string", "maxLength": 8}, "age": {"type": "integer"}},
        "required": ["name", "age"],
        "additionalProperties": False,
    }
    batch = [
        (repeated(6, 8, 61), greedy(24), {}),
        (ids_of(15, 62), {"max_new_tokens": 40, "temperature": 0, "json_schema": json.dumps(schema)}, {}),
        (repeated(4, 9, 63), {"max_new_tokens": 20, "temperature": 0.8, "ignore_eos": True}, {"seed": 5}),
        (ids_of(11, 64), {"max_new_tokens": 14, "temperature": 0, "regex": "(yes|no|maybe)[0-9]{2,5}"}, {}),
    ]
    runs = compare_algorithms("llama", [batch, batch], disable_jump_forward=not jump_forward)
    for alg in ALGORITHMS:
        for (reqs, _), (ref, _) in zip(runs[alg][0], runs[None][0]):
            for i in (1, 3):  # grammar requests: no speculative drafts, the same forced tokens
                assert reqs[i].spec_proposed == 0
                assert reqs[i].jump_forward_tokens == ref[i].jump_forward_tokens
                assert jump_forward or reqs[i].jump_forward_tokens == 0
            assert not jump_forward or reqs[1].jump_forward_tokens > 0  # the schema's keys
            assert rt_text(runs[alg][1], reqs[1]).startswith('{"name": "')
    lookahead = runs["lookahead"][0]
    assert lookahead[1][0][0].spec_accepted > 0 and lookahead[1][0][2].spec_accepted > 0


def rt_text(rt: LocalRuntime, req) -> str:
    return rt.tokenizer.decode(req.output_ids, skip_special_tokens=True)


@pytest.mark.parametrize("algorithm", SPECULATIVE)
def test_overlap_mix_is_identical_with_speculation(algorithm):
    """The overlap test's request mix (every way to sample or stop, staggered arrivals): with
    overlap scheduling on, drafting steps drain the step in flight first."""
    ref, _ = run_mix("off")
    for overlap in ("off", "on"):
        reqs, rt = run_mix(overlap, speculative_algorithm=algorithm)
        assert_same_results(reqs, ref)
        assert rt.check_accounting()["in_use_tokens"] == 0


def test_memory_pressure_retracts_and_loses_nothing():
    """A pool too small for every request: drafts wait for memory, retraction still works and
    the outputs are the unconstrained ones (qwen2's looping outputs keep n-gram drafts coming)."""
    prompts = [repeated(5, 6, 70 + i) for i in range(6)]
    batch = [(p, greedy(30), {}) for p in prompts]
    [(ref, _)], _ = run_rounds("qwen2", None, [batch])
    for alg in SPECULATIVE:
        [(reqs, _)], rt = run_rounds(
            "qwen2", alg, [batch], max_total_tokens=140, schedule_conservativeness=0.3
        )
        assert rt.scheduler.stats.retractions > 0
        assert rt.scheduler.stats.spec_accepted_tokens > 0
        assert_same(reqs, ref)


def test_lookahead_without_the_radix_cache_falls_back_to_ngram():
    batch = [(ids_of(30, 2), greedy(40), {})]
    runs = compare_algorithms("qwen2", [batch, batch], disable_radix_cache=True)
    for (a, _), (b, _) in zip(runs["lookahead"][0], runs["ngram"][0]):  # no tree to read
        assert [r.spec_proposed for r in a] == [r.spec_proposed for r in b]
        assert [r.spec_accepted for r in a] == [r.spec_accepted for r in b]
        assert a[0].spec_accepted > 0  # qwen2's loop


@pytest.mark.parametrize("when", [0, 1, 3])
def test_abort_between_drafted_steps_frees_everything(when):
    rt = LocalRuntime("llama", speculative_algorithm="lookahead")
    prompt = ids_of(30, 130)
    [first] = rt.generate([prompt], greedy(40))  # the tree now holds the continuation
    keep = rt.submit(prompt, greedy(40))
    victim = rt.submit(prompt, greedy(40), seed=1)
    sched = rt.scheduler
    while victim.spec_accepted == 0:
        sched.step()
    for _ in range(when):
        sched.step()
    assert not victim.finished_reason and sched.abort_request(victim.rid)
    rt.run_all()
    assert victim.finished_reason["type"] == "abort" and victim.req_pool_idx is None
    assert keep.output_ids == first.output_ids and keep.spec_accepted > 0


# ------------------------------------------------------------------ drafts that hold


@pytest.mark.parametrize("name", ["llama", "mistral", "qwen3"])
def test_lookahead_replays_an_earlier_output_and_saves_decode_steps(name):
    """Speculation off gives the reference; with lookahead, the same prompt sent again after
    the first finished is proposed its own earlier output from the tree: nearly every draft
    holds and it takes a fraction of the decode steps, with the same tokens."""
    prompt, n = ids_of(40, 80), 64
    [(ref, ref_steps)], _ = run_rounds(name, None, [[(prompt, greedy(n), {})]])
    assert ref_steps == n - 1  # the prefill samples the first token
    # a branch: a prompt that ends inside the first output (mid tree node), continued greedily
    branch = prompt + ref[0].output_ids[:10]
    [(branch_ref, _)], _ = run_rounds(name, None, [[(branch, greedy(n - 10), {})]])
    rounds = [[(prompt, greedy(n), {})], [(prompt, greedy(n), {})], [(branch, greedy(n - 10), {})]]
    result, rt = run_rounds(name, "lookahead", rounds)
    (first, _), (again, steps), (branched, branch_steps) = result
    assert_same(first, ref)
    assert_same(again, ref)
    assert_same(branched, branch_ref)
    [req] = again
    assert req.spec_accepted >= 0.8 * (n - 1) and req.spec_accepted == req.spec_proposed
    assert steps <= (n - 1) // 4
    assert branched[0].spec_accepted > 0 and branch_steps <= (n - 11) // 4
    info = rt.scheduler.stats
    assert info.spec_accepted_tokens == sum(r.spec_accepted for r in first + again + branched)


def test_ngram_accepts_a_looping_output():
    """qwen2's random weights fall into a loop: prompt lookup predicts it from the output itself."""
    prompt, n = ids_of(30, 2), 96
    [(ref, ref_steps)], _ = run_rounds("qwen2", None, [[(prompt, greedy(n), {})]])
    [(reqs, steps)], _ = run_rounds("qwen2", "ngram", [[(prompt, greedy(n), {})]])
    assert_same(reqs, ref)
    assert len(set(ref[0].output_ids[n // 2 :])) <= 3, "the model no longer loops: pick another"
    assert reqs[0].spec_accepted >= n // 3
    assert steps < 0.75 * ref_steps


class PartlyRightProposer:
    """Proposes the reference continuation with one wrong token after the first `h` (h cycling
    through `holds`): exactly h tokens of each draft must be kept, whatever the sampling."""

    def __init__(self, reference: list[int], holds=(2, 0, 3, 1, 5, 4)) -> None:
        self.reference, self.holds = reference, holds
        self.expected_accepted = 0
        self.calls = 0

    def propose(self, req, max_tokens: int) -> list[int]:
        i, h = len(req.output_ids), self.holds[self.calls % len(self.holds)]
        self.calls += 1
        ref = self.reference[i : i + max_tokens + 1]
        draft = [t if k != h else (t + 1) % 8192 for k, t in enumerate(ref)][:max_tokens]
        self.expected_accepted += next((k for k, (a, b) in enumerate(zip(draft, ref)) if a != b), len(draft))
        return draft


PARTLY = {
    "greedy_logprobs": ({"temperature": 0}, {"return_logprob": True, "top_logprobs_num": 2}),
    "sampled_penalties": (
        {"temperature": 0.9, "top_k": 50, "repetition_penalty": 1.2, "presence_penalty": 0.5},
        {"seed": 17},
    ),
    "stop_token": ({"temperature": 0}, {}),
}


@pytest.mark.parametrize("case", list(PARTLY))
def test_partly_right_drafts_keep_exactly_the_part_that_holds(case):
    extra, kw = PARTLY[case]
    prompt, n = ids_of(25, 95), 48
    params = {"max_new_tokens": n, "ignore_eos": True, **extra}
    [([free], _)], _ = run_rounds("llama", None, [[(prompt, params, kw)]])
    if case == "stop_token":
        params = {**params, "stop_token_ids": [free.output_ids[30]]}
    [(ref, _)], _ = run_rounds("llama", None, [[(prompt, params, kw)]])
    rt = LocalRuntime("llama", speculative_algorithm="ngram", speculative_num_draft_tokens=6)
    stub = rt.scheduler.proposer = PartlyRightProposer(free.output_ids)
    req = rt.submit(prompt, params, **kw)
    rt.run_all()
    assert_same([req], ref, logprobs=kw.get("return_logprob", False))
    assert stub.calls > 5 and req.spec_accepted == stub.expected_accepted > 0
    if case == "stop_token":
        assert req.finished_reason["type"] == "stop" and len(req.output_ids) <= 31


# ------------------------------------------------------------------ when not to draft


class WrongProposer:
    """Always proposes a token that is not the greedy one (known from a reference run)."""

    def __init__(self, reference: list[int]) -> None:
        self.reference = reference
        self.calls: list[int] = []  # len(output_ids) at each proposal

    def propose(self, req, max_tokens: int) -> list[int]:
        if max_tokens <= 0:
            return []
        self.calls.append(len(req.output_ids))
        wrong = (self.reference[len(req.output_ids)] + 1) % 8192
        return [wrong] * max_tokens


def test_a_request_whose_drafts_always_fail_backs_off():
    prompt, n = ids_of(20, 90), 96
    [(ref, ref_steps)], _ = run_rounds("llama", None, [[(prompt, greedy(n), {})]])
    rt = LocalRuntime("llama", speculative_algorithm="ngram")
    stub = WrongProposer(ref[0].output_ids)
    rt.scheduler.proposer = stub
    before = rt.scheduler.stats.decode_steps
    [req] = rt.generate([prompt], greedy(n))
    assert_same([req], ref)
    assert req.spec_accepted == 0
    # back-off doubles after each all-rejected step: proposals at decode steps 1, 2, 4, 8, ...
    assert len(stub.calls) <= math.ceil(math.log2(n)) + 1, stub.calls
    assert req.spec_proposed <= len(stub.calls) + 1 <= n // 8
    assert rt.scheduler.stats.decode_steps - before == ref_steps  # rejected drafts cost no step


def test_no_drafts_while_more_requests_decode_than_speculative_max_batch():
    """Requests with different lengths: drafting starts only once few enough are left."""
    lengths = [6, 6, 10, 40, 40]
    batch = [(repeated(4, 5, 100 + i), greedy(m), {}) for i, m in enumerate(lengths)]
    [(ref, _)], _ = run_rounds("llama", None, [batch])
    for max_batch in (2, 5):
        rt = LocalRuntime("llama", speculative_algorithm="lookahead", speculative_max_batch=max_batch)
        for _ in range(2):  # the second round finds the first round's outputs in the tree
            reqs = [rt.submit(ids, params) for ids, params, _ in batch]
            real = rt.scheduler.proposer
            running_at_proposal: list[int] = []

            def spy(req, max_tokens, real=real, seen=running_at_proposal, rt=rt):
                seen.append(len(rt.scheduler.running))
                return real.propose(req, max_tokens)

            rt.scheduler.proposer = type("Spy", (), {"propose": staticmethod(spy)})()
            rt.run_all()
            rt.scheduler.proposer = real
            assert_same(reqs, ref)
        assert running_at_proposal and max(running_at_proposal) <= max_batch
        short = [r.spec_proposed for r in reqs[:3]]
        if max_batch == 2:  # the short ones finish while more than 2 decode: never drafted
            assert short == [0, 0, 0]
            assert reqs[3].spec_accepted > 0 and reqs[4].spec_accepted > 0
        else:
            assert all(p > 0 for p in short)


def test_no_drafts_with_a_batch_always_above_speculative_max_batch():
    batch = [(repeated(4, 5, 110 + i), greedy(16), {}) for i in range(4)]
    runs = compare_algorithms("llama", [batch, batch], speculative_max_batch=3)
    for alg in SPECULATIVE:
        assert runs[alg][1].scheduler.stats.spec_proposed_tokens == 0


# ------------------------------------------------------------------ through the Engine


def test_engine_reports_speculation_in_meta_info_and_server_info():
    prompt = ids_of(30, 120)
    params = greedy(24)
    off = get_engine("llama")
    ref = off.generate(input_ids=prompt, sampling_params=params)
    assert "spec_proposed_tokens" not in ref["meta_info"]
    assert off.get_server_info()["spec_acceptance_rate"] is None
    engine = get_engine("llama", speculative_algorithm="lookahead")
    info0 = engine.get_server_info()
    first = engine.generate(input_ids=prompt, sampling_params=params)
    again = engine.generate(input_ids=prompt, sampling_params=params)
    info = engine.get_server_info()
    assert first["output_ids"] == again["output_ids"] == ref["output_ids"]
    meta = again["meta_info"]
    assert isinstance(first["meta_info"]["spec_proposed_tokens"], int)
    assert 0 < meta["spec_accepted_tokens"] <= meta["spec_proposed_tokens"]
    assert info["speculative_algorithm"] == "lookahead"
    proposed = info["spec_proposed_tokens"] - info0["spec_proposed_tokens"]
    taken = info["spec_accepted_tokens"] - info0["spec_accepted_tokens"]
    assert proposed == first["meta_info"]["spec_proposed_tokens"] + meta["spec_proposed_tokens"]
    assert taken == first["meta_info"]["spec_accepted_tokens"] + meta["spec_accepted_tokens"]
    assert math.isclose(
        info["spec_acceptance_rate"], info["spec_accepted_tokens"] / info["spec_proposed_tokens"]
    )
    assert info["generated_tokens"] - info0["generated_tokens"] == 48
    assert info["decode_steps"] - info0["decode_steps"] < 46  # 23 + 23 without drafts


@pytest.mark.parametrize(
    "option, value",
    [
        ("speculative_algorithm", "eagle"),
        ("speculative_algorithm", "NGRAM"),
        ("speculative_num_draft_tokens", 0),
        ("speculative_num_draft_tokens", 33),
        ("speculative_max_batch", 0),
    ],
)
def test_bad_speculative_options_are_refused_by_name(option, value):
    from radixlm import Engine

    path = str(build_tiny_model("llama"))
    with pytest.raises(ValueError, match=option):
        EngineConfig.from_kwargs(path, **{option: value})
    with pytest.raises(ValueError, match=option):
        Engine(path, **{option: value})  # refused before any process starts


def test_speculative_flags_on_the_command_line():
    from radixlm.runtime.entrypoints.cli import build_parser

    flags = "--speculative-algorithm ngram --speculative-num-draft-tokens 4 --speculative-max-batch 2"
    args = build_parser().parse_args(["serve", "--model", "m", *flags.split()])
    assert args.speculative_algorithm == "ngram"
    assert (args.speculative_num_draft_tokens, args.speculative_max_batch) == (4, 2)
    defaults = build_parser().parse_args(["serve", "--model", "m"])
    assert (defaults.speculative_algorithm, defaults.speculative_num_draft_tokens) == (None, 8)
    assert defaults.speculative_max_batch == 16


def test_a_loop_fills_the_whole_ngram_draft():
    from radixlm.runtime.scheduler.draft_proposers import NgramIndex

    assert NgramIndex().propose([1, 2, 3] + [7] * 10, 8) == [7] * 8
    assert NgramIndex().propose([1, 2, 3] + [7, 8] * 10, 5) == [7, 8, 7, 8, 7]
    assert NgramIndex().propose([1, 2, 3, 4, 9, 1, 2, 3], 3) == [4, 9, 1]
    assert NgramIndex().propose([1, 2, 3, 4], 3) == []


@pytest.mark.parametrize("algorithm", ["ngram", "lookahead"])
def test_requests_with_nothing_to_propose_keep_overlap_scheduling(algorithm):
    """Random text gives the proposer nothing to copy: after a few empty proposals the
    requests back off, and decode overlaps as it does with speculation off."""
    rt = LocalRuntime("llama", overlap_schedule="on", speculative_algorithm=algorithm)
    reqs = rt.generate([ids_of(30, 1), ids_of(20, 2)], greedy(60))
    plain = LocalRuntime("llama", overlap_schedule="on")
    ref = plain.generate([ids_of(30, 1), ids_of(20, 2)], greedy(60))
    assert [r.output_ids for r in reqs] == [r.output_ids for r in ref]
    st = rt.scheduler.stats
    assert st.overlapped_steps >= 0.75 * plain.scheduler.stats.overlapped_steps


def test_data_parallel_server_info_merges_the_acceptance_rate():
    from radixlm.runtime.managers.dp_router import Router, merge_replies
    from radixlm.runtime.managers.messages import ControlReply

    base = {"prompt_tokens": 10, "cached_tokens": 0, "kv_accounting": "ok"}
    infos = [
        {**base, "spec_proposed_tokens": 10, "spec_accepted_tokens": 10, "spec_acceptance_rate": 1.0},
        {**base, "spec_proposed_tokens": 90, "spec_accepted_tokens": 0, "spec_acceptance_rate": 0.0},
    ]
    replies = [ControlReply(rid="x", op="server_info", ok=True, data=info) for info in infos]
    ok, data, _ = merge_replies("server_info", replies, Router(2, 1000))
    assert ok and data["spec_proposed_tokens"] == 100 and data["spec_acceptance_rate"] == pytest.approx(0.1)
