"""The reasoning gate: a constraint that leaves a reasoning model's thinking free and applies
from its initial state once the think-end token is sampled. At unit level (states, mask rows,
drafts, the batched mask, jump-forward's views) on a tokenizer with `<think>`/`</think>`
added, and through the Engine, where the think-end token is chosen from the model's own
greedy output so that the random weights end their "reasoning" at a known step."""

from __future__ import annotations

import json
import random

import jsonschema
import pytest
import torch
from helpers import get_engine

from radixlm.runtime.constrained.grammar import (
    BEFORE_REASONING,
    IN_REASONING,
    Grammar,
    ReasoningGate,
    build_vocab_mask,
)
from radixlm.runtime.constrained.grammar_cache import GrammarCache
from radixlm.runtime.constrained.vocabulary import TokenizerVocab
from radixlm.runtime.layers.sampling import SamplingParams
from radixlm.runtime.scheduler.jump_forward import _sample_views
from radixlm.runtime.scheduler.request import Req
from radixlm.testing import build_tiny_model

CPU = torch.device("cpu")
ANSWER = r'\{"answer": (yes|no)\}'
SCHEMA = {
    "type": "object",
    "properties": {"answer": {"enum": ["yes", "no"]}, "sure": {"type": "boolean"}},
    "required": ["answer", "sure"],
}


@pytest.fixture(scope="module")
def tokenizer():
    from radixlm.runtime.tokenizer import load_tokenizer

    tok = load_tokenizer(str(build_tiny_model("llama")))
    tok.add_tokens(["<think>", "</think>"])  # as Qwen3 has them: added, not special
    return tok


@pytest.fixture(scope="module")
def vocab(tokenizer):
    return TokenizerVocab(tokenizer, len(tokenizer), [tokenizer.eos_token_id])


@pytest.fixture(scope="module")
def answer(vocab):
    return GrammarCache(vocab, backend="outlines").get(("regex", ANSWER)).result()


def marker_ids(tokenizer) -> tuple[int, int]:
    return tokenizer.convert_tokens_to_ids("<think>"), tokenizer.convert_tokens_to_ids("</think>")


def encode(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False).input_ids


def test_reasoning_is_free_until_the_end_token_then_only_the_grammar_applies(tokenizer, answer):
    start, end = marker_ids(tokenizer)
    g = Grammar(ReasoningGate(answer, end))
    V = len(tokenizer)
    assert g.state == IN_REASONING and not g.is_final and not g.is_complete
    assert not g.compiled.mask_row(g.state, CPU).any()  # nothing banned, stop tokens included
    assert g.draft() == []  # nothing forced: jump-forward waits
    rng = random.Random(0)
    for t in [rng.randrange(V) for _ in range(50)] + [start, tokenizer.eos_token_id]:
        if t != end:
            assert g.advance(t) and g.state == IN_REASONING
    assert g.advance(end) and g.state == answer.initial_state
    # from here on it is the inner grammar from its start: same row, same draft, same rules
    assert torch.equal(g.compiled.mask_row(g.state, CPU), answer.mask_row(answer.initial_state, CPU))
    assert g.draft() == answer.draft(answer.initial_state) and g.draft()  # '{"answer": ' is forced
    assert not g.advance(encode(tokenizer, "hello")[0])
    assert not g.advance(end)  # a second end token is just a token the grammar refuses
    for t in encode(tokenizer, '{"answer": yes}'):
        assert g.advance(t)
    assert g.is_final and g.is_complete


def test_when_the_model_chooses_the_start_token_opens_reasoning_else_the_grammar_applies(tokenizer, answer):
    start, end = marker_ids(tokenizer)
    gate = ReasoningGate(answer, end, start)
    g = Grammar(gate)
    assert g.state == BEFORE_REASONING and g.draft() == [] and not g.is_final
    row = gate.mask_row(BEFORE_REASONING, CPU)
    inner_row = answer.mask_row(answer.initial_state, CPU)
    assert not row[start] and torch.equal(row.clone().index_fill_(0, torch.tensor([start]), True), inner_row)
    assert inner_row[start]  # the shared inner row is left as it was: the gate changed a copy
    assert set(g.allowed()) == set(answer.allowed(answer.initial_state)) | {start}
    thinking = g.at(g.state)
    assert thinking.advance(start) and thinking.state == IN_REASONING
    assert thinking.advance(encode(tokenizer, "hmm")[0]) and thinking.advance(end)
    assert thinking.state == answer.initial_state
    direct = g.at(g.state)  # no <think>: the grammar applies from the first token
    first = encode(tokenizer, "{")[0]
    assert direct.advance(first) and direct.state == answer.next_state(answer.initial_state, first)
    assert not g.at(g.state).advance(encode(tokenizer, "hello")[0])


def test_batched_mask_rows_for_gated_and_plain_grammars(tokenizer, answer):
    start, end = marker_ids(tokenizer)
    V = len(tokenizer)
    thinking = Grammar(ReasoningGate(answer, end))
    done_thinking = Grammar(ReasoningGate(answer, end))
    assert done_thinking.advance(end)
    choosing = Grammar(ReasoningGate(answer, end, start))
    plain = Grammar(answer)
    eos = tokenizer.eos_token_id
    mask = build_vocab_mask([thinking, done_thinking, choosing, plain, None], [[eos]] * 5, V, CPU)
    assert not mask[0].any() and not mask[4].any()
    assert torch.equal(mask[1], mask[3])  # after the end token: exactly the plain grammar's row
    assert set(torch.nonzero(~mask[2]).flatten().tolist()) == set(plain.allowed()) | {start}
    assert mask[1, eos] and mask[1, end]


def test_jump_forward_drafts_nothing_while_thinking_and_the_grammar_after(tokenizer, answer):
    start, end = marker_ids(tokenizer)
    req = Req(rid="r", origin_input_ids=[1], sampling_params=SamplingParams(), seed=0, eos_ids=frozenset())
    req.grammar = Grammar(ReasoningGate(answer, end))
    assert req.grammar.draft() == []
    req.grammar.advance(end)
    draft = req.grammar.draft()
    views = _sample_views(req, draft)
    states = [view[1].state for view in views]
    assert states[0] == answer.initial_state
    expected = answer.initial_state
    for j, t in enumerate(draft):
        expected = answer.next_state(expected, t)
        assert states[j + 1] == expected


def test_the_gate_parameters_are_validated():
    def check(**kw):
        SamplingParams(**kw).validate(100)

    check(reasoning_end_token_id=7, reasoning_start_token_id=6)
    with pytest.raises(ValueError, match=r"reasoning_end_token_id must be a token id in \[0, 100\)"):
        check(reasoning_end_token_id=100)
    with pytest.raises(ValueError, match="reasoning_start_token_id must be a token id"):
        check(reasoning_end_token_id=1, reasoning_start_token_id=True)
    with pytest.raises(ValueError, match="reasoning_start_token_id needs reasoning_end_token_id"):
        check(reasoning_start_token_id=3)
    with pytest.raises(ValueError, match="must be different tokens"):
        check(reasoning_end_token_id=3, reasoning_start_token_id=3)


# ------------------------------------------------------------------------------ through the Engine
def greedy_ids(engine, prompt: str, n: int) -> list[int]:
    return engine.generate(prompt, {"max_new_tokens": n, "temperature": 0, "ignore_eos": True})["output_ids"]


def think_end_at(ids: list[int], k: int) -> int:
    """A token of the free greedy output that first occurs at step k >= 1: the step where
    the gated run, identical to the free one until then, ends its reasoning."""
    for j in range(k, len(ids)):
        if ids[j] not in ids[:j]:
            return j
    raise AssertionError(f"no new token after step {k} in {ids}")


@pytest.mark.parametrize("jump_forward", [True, False])
def test_engine_output_is_free_until_the_end_token_then_matches_the_schema(jump_forward):
    engine = get_engine("llama", disable_jump_forward=not jump_forward)
    prompt = "Think first, then answer:"
    free = greedy_ids(engine, prompt, 12)
    k = think_end_at(free, 3)
    params = {"json_schema": SCHEMA, "temperature": 0, "max_new_tokens": 80}
    out = engine.generate(prompt, {**params, "reasoning_end_token_id": free[k]})
    ids = out["output_ids"]
    assert ids[: k + 1] == free[: k + 1]  # the reasoning was not constrained
    after = engine.tokenizer.decode(ids[k + 1 :])
    jsonschema.validate(json.loads(after), SCHEMA)
    assert out["meta_info"]["finish_reason"]["type"] == "stop"
    # the same request without the gate is constrained from its first token
    plain = engine.generate(prompt, params)
    jsonschema.validate(json.loads(plain["text"]), SCHEMA)


def test_engine_model_that_does_not_open_reasoning_is_constrained_at_once():
    engine = get_engine("llama")
    prompt = "Answer now:"
    free = greedy_ids(engine, prompt, 12)
    params = {"json_schema": SCHEMA, "temperature": 0, "max_new_tokens": 80}
    plain = engine.generate(prompt, params)
    # a start token the model does not pick first (the first candidate almost surely)
    for never in (t for t in range(10, 8000) if t not in free):
        gate = {"reasoning_end_token_id": free[1], "reasoning_start_token_id": never}
        out = engine.generate(prompt, {**params, **gate})
        if out["output_ids"][0] != never:
            break
    assert out["text"] == plain["text"]  # exactly the ungated constrained output
    # and one whose first free token is the start token thinks until the end token
    k = think_end_at(free, 2)
    out = engine.generate(
        prompt, {**params, "reasoning_start_token_id": free[0], "reasoning_end_token_id": free[k]}
    )
    assert out["output_ids"][: k + 1] == free[: k + 1]
    jsonschema.validate(json.loads(engine.tokenizer.decode(out["output_ids"][k + 1 :])), SCHEMA)
