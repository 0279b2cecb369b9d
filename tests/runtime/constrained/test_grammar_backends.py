"""The grammar-backend layer (runtime/constrained/backend.py): which backend `auto` picks, the
llguidance matcher (masks, drafts, rollback, the reasoning gate), the constraints users write
(numeric bounds, a pattern with lengths, recursive $ref, date-time, GBNF, Lark) end to end
through the Engine, the DSL and the official OpenAI client, and jump-forward's identical-output
guarantee on llguidance."""

from __future__ import annotations

import datetime
import json
import re

import jsonschema
import openai
import pytest
import torch
from helpers import get_engine
from server_process import ServerProcess

import radixlm as rl
from radixlm.runtime.constrained import llguidance_backend
from radixlm.runtime.constrained.backend import Constraint, check_constraint, choose_backend
from radixlm.runtime.constrained.grammar import IN_REASONING, build_vocab_mask
from radixlm.runtime.constrained.grammar_cache import GrammarCache
from radixlm.runtime.constrained.llguidance_backend import LLGuidanceMatcher, closed_objects
from radixlm.runtime.constrained.vocabulary import TokenizerVocab
from radixlm.runtime.tokenizer import load_tokenizer
from radixlm.testing import build_tiny_model

CPU = torch.device("cpu")
AGE = {
    "type": "object",
    "properties": {"age": {"type": "integer", "minimum": 18, "maximum": 65}},
    "required": ["age"],
}
CODE = {
    "type": "object",
    "properties": {"code": {"type": "string", "pattern": "^[A-Z]{2}[0-9]+$", "minLength": 4, "maxLength": 6}},
    "required": ["code"],
}
TREE = {  # a comment thread: recursive through $ref, bounded so a random model finishes
    "$defs": {
        "comment": {
            "type": "object",
            "properties": {
                "author": {"enum": ["ann", "bob", "cy"]},
                "replies": {"type": "array", "items": {"$ref": "#/$defs/comment"}, "maxItems": 2},
            },
            "required": ["author", "replies"],
        }
    },
    "$ref": "#/$defs/comment",
}
WHEN = {"type": "object", "properties": {"at": {"type": "string", "format": "date-time"}}, "required": ["at"]}
PAIR_GBNF = 'root ::= "(" num ", " num ")"\nnum ::= [0-9] | [1-9] [0-9]'
PAIR_RE = r"\((0|[1-9][0-9]?), (0|[1-9][0-9]?)\)"
TICKET_LARK = 'start: "ID-" DIGITS ("/" WORD)?\nDIGITS: /[0-9]{3}/\nWORD: /[a-z]{1,5}/\n'
TICKET_RE = r"ID-[0-9]{3}(/[a-z]{1,5})?"


def is_datetime(text: str) -> bool:
    try:
        datetime.datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        return False
    return "T" in text.upper()


def check(kind: str, text: str) -> None:
    """The output holds to its constraint (raises otherwise)."""
    if kind in ("age", "code", "tree", "when"):
        schema = {"age": AGE, "code": CODE, "tree": TREE, "when": WHEN}[kind]
        value = json.loads(text)
        jsonschema.validate(value, schema)
        if kind == "when":
            assert is_datetime(value["at"]), value
    else:
        assert re.fullmatch(PAIR_RE if kind == "pair" else TICKET_RE, text), text


CASES = {
    "age": {"json_schema": AGE},
    "code": {"json_schema": CODE},
    "tree": {"json_schema": TREE},
    "when": {"json_schema": WHEN},
    "pair": {"ebnf": PAIR_GBNF},
    "ticket": {"grammar": TICKET_LARK},
}


def test_auto_gives_regexes_to_outlines_and_schemas_to_llguidance_unless_only_outlines_takes_one():
    assert choose_backend("auto", Constraint("regex", "[ab]+")) == "outlines"
    for schema in ({"type": "integer"}, AGE, CODE, TREE, WHEN):
        assert choose_backend("auto", Constraint("json", json.dumps(schema))) == "llguidance"
    unique = {"type": "array", "items": {"type": "integer"}, "maxItems": 3, "uniqueItems": False}
    assert choose_backend("auto", Constraint("json", json.dumps(unique))) == "llguidance"
    # llguidance cannot see that a oneOf's branches behind $refs exclude each other; outlines-core
    # takes it (one_of.py proves them disjoint)
    defs = {
        "s": {"type": "string", "maxLength": 5},
        "o": {"type": "object", "properties": {"a": {"type": "integer"}}},
    }
    only_outlines = {"definitions": defs, "oneOf": [{"$ref": "#/definitions/s"}, {"$ref": "#/definitions/o"}]}
    assert choose_backend("auto", Constraint("json", json.dumps(only_outlines))) == "outlines"
    # outlines-core cannot write a recursive model as a regex: refused by name there
    node = {"type": "object", "properties": {"next": {"$ref": "#/$defs/node"}}}
    with pytest.raises(ValueError, match="recursive \\$ref #/\\$defs/node"):
        check_constraint(
            Constraint("json", json.dumps({"$defs": {"node": node}, "$ref": "#/$defs/node"})),
            "outlines",
            None,
        )
    assert choose_backend("auto", Constraint("ebnf", PAIR_GBNF)) == "llguidance"
    assert choose_backend("outlines", Constraint("json", json.dumps(AGE))) == "outlines"
    with pytest.raises(ValueError, match="grammar_backend must be one of"):
        choose_backend("xgrammar", Constraint("regex", "a"))


def test_objects_are_closed_unless_the_schema_opens_them():
    closed = closed_objects(
        {
            "properties": {"a": {"properties": {"b": {"type": "string"}}}},
            "allOf": [{"properties": {"c": {}}}],
            "enum": [{"properties": 1}],
        }
    )
    assert closed["additionalProperties"] is False
    assert closed["properties"]["a"]["additionalProperties"] is False
    assert "additionalProperties" not in closed["allOf"][0]  # each branch would ban the others'
    assert closed["enum"] == [{"properties": 1}]  # data, untouched
    opened = closed_objects({"properties": {"a": {}}, "additionalProperties": {"type": "integer"}})
    assert opened["additionalProperties"] == {"type": "integer"}


@pytest.fixture(scope="module")
def vocab():
    tok = load_tokenizer(str(build_tiny_model("llama")))
    tok.add_tokens(["<think>", "</think>"])
    return TokenizerVocab(tok, len(tok), [tok.eos_token_id])


def encode(vocab, text: str) -> list[int]:
    return vocab.encode(text)


def test_llguidance_matcher_masks_drafts_rolls_back_and_gates_reasoning(vocab):
    cache = GrammarCache(vocab, backend="llguidance")
    compiled = cache.get(("json", json.dumps(AGE))).result()
    m = compiled.new_matcher(None, None)
    assert isinstance(m, LLGuidanceMatcher)
    draft = m.draft()
    assert vocab.tokenizer.decode(draft).startswith("{")  # the forced '{"age":' in natural tokens
    views = m.views(draft)
    assert len(views) == len(draft) + 1
    for t in draft:
        row = m.mask_row(CPU)
        assert not row[t], "the drafted token must be allowed where it is drafted"
        assert row[vocab.tokenizer.eos_token_id], "EOS is the stop rules' business"
        assert m.advance(t)
    whole = '{"age": 42}'
    drafted = vocab.tokenizer.decode(draft)
    assert whole.startswith(drafted)
    tail = encode(vocab, whole[len(drafted) :])
    for t in tail:
        assert m.advance(t)
    assert m.is_final and m.is_complete
    m.rollback(len(tail))  # back to just after the draft: not final, same mask as the view
    assert not m.is_final
    assert torch.equal(m.mask_row(CPU), views[-1].mask_row(CPU))
    # behind a reasoning gate: free until </think>, then the grammar from its start
    end = vocab.tokenizer.convert_tokens_to_ids("</think>")
    gated = compiled.new_matcher(end, None)
    assert gated.gate == IN_REASONING and not gated.mask_row(CPU).any() and gated.draft() == []
    assert gated.advance(7) and gated.advance(end) and gated.gate is None
    assert torch.equal(gated.mask_row(CPU), compiled.new_matcher(None, None).mask_row(CPU))
    gated.rollback(1)
    assert gated.gate == IN_REASONING


@pytest.mark.parametrize("parallel", [True, False])
def test_a_batch_mask_equals_each_rows_own_mask_across_backends_and_gates(vocab, parallel, monkeypatch):
    """build_vocab_mask fills llguidance rows on its thread pool into one buffer and stacks
    outlines-core's cached rows: row for row, the same as each matcher's own mask, in a batch
    that mixes both backends, gated and free rows and rows in different states."""
    monkeypatch.setattr(llguidance_backend, "_PARALLEL", parallel)  # the thread pool, or one by one
    lark = GrammarCache(vocab, backend="llguidance")
    outlines = GrammarCache(vocab, backend="outlines")
    end = vocab.tokenizer.convert_tokens_to_ids("</think>")
    eos = vocab.tokenizer.eos_token_id
    matchers = []
    for cache, kind, text in [
        (lark, "json", json.dumps(AGE)),
        (lark, "json", json.dumps(TREE)),
        (lark, "lark", TICKET_LARK),
        (outlines, "regex", PAIR_RE),
        (lark, "ebnf", PAIR_GBNF),
    ]:
        compiled = cache.get((kind, text)).result()
        for walked in range(3):
            m = compiled.new_matcher(None, None)
            for t in m.draft()[:walked]:
                assert m.advance(t)
            matchers.append(m)
    gated = lark.get(("json", json.dumps(AGE))).result().new_matcher(end, None)
    done = lark.get(("regex", "ab")).result().new_matcher(None, None)
    for t in encode(vocab, "ab"):
        assert done.advance(t)
    rows = [*matchers, gated, None, done]
    stops = [[eos]] * len(rows)
    mask = build_vocab_mask(rows, stops, vocab.vocab_size, CPU)
    for i, m in enumerate(rows):
        if m is None:
            assert not mask[i].any()
            continue
        own = m.mask_row(CPU)[: vocab.vocab_size].clone()
        if m.is_final:
            own[eos] = False
        assert torch.equal(mask[i], own), f"row {i}"
    assert not mask[rows.index(done), eos] and mask[0, eos], "EOS only where the grammar is final"
    only_lark = [m for m in matchers if isinstance(m, LLGuidanceMatcher)]
    assert torch.equal(
        build_vocab_mask(only_lark, [[]] * len(only_lark), vocab.vocab_size, CPU),
        torch.stack([m.mask_row(CPU)[: vocab.vocab_size] for m in only_lark]),
    )


@pytest.mark.parametrize("kind", list(CASES))
def test_everyday_constraints_hold_end_to_end_at_temperature_one(kind):
    engine = get_engine("llama")
    params = [{**CASES[kind], "temperature": 1.0, "seed": seed, "max_new_tokens": 160} for seed in range(4)]
    outs = engine.generate([f"Output {i}:" for i in range(4)], params)
    for out in outs:
        assert out["meta_info"]["finish_reason"]["type"] == "stop", out
        check(kind, out["text"])


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_llguidance_jump_forward_keeps_outputs_identical(temperature):
    schema = {
        "type": "object",
        "properties": {
            "identification_number": {"type": "integer", "minimum": 0, "maximum": 999},
            "classification_label": {"enum": ["alpha", "beta"]},
        },
        "required": ["identification_number", "classification_label"],
    }
    params = {"json_schema": schema, "max_new_tokens": 80, "temperature": temperature, "seed": 5}
    on = get_engine("llama", grammar_backend="llguidance").generate("Row:", params)
    plain = get_engine("llama", grammar_backend="llguidance", disable_jump_forward=True)
    off = plain.generate("Row:", params)
    assert on["output_ids"] == off["output_ids"]
    jsonschema.validate(json.loads(on["text"]), schema)
    assert on["meta_info"]["jump_forward_tokens"] > 0 and off["meta_info"]["jump_forward_tokens"] == 0


def test_the_outlines_backend_refuses_grammars_and_bounds_by_name():
    engine = get_engine("llama", grammar_backend="outlines")
    with pytest.raises(ValueError, match="ebnf needs the llguidance grammar backend"):
        engine.generate("x", {"ebnf": PAIR_GBNF, "max_new_tokens": 4})
    with pytest.raises(ValueError, match="unsupported json_schema feature.*minimum"):
        engine.generate("x", {"json_schema": AGE, "max_new_tokens": 4})


def test_the_dsl_takes_ebnf_grammar_and_bounded_schemas():
    @rl.function
    def form(s):
        s += "Pair: " + rl.gen("pair", ebnf=PAIR_GBNF, max_tokens=32)
        s += "\nTicket: " + rl.gen("ticket", grammar=TICKET_LARK, max_tokens=32)
        s += "\nAge: " + rl.gen("age", json_schema=AGE, max_tokens=32)

    runtime = rl.Runtime(str(build_tiny_model("llama")))
    try:
        states = form.run_batch([{} for _ in range(3)], backend=runtime, temperature=1.0)
    finally:
        runtime.shutdown()
    for state in states:
        assert state.error() is None, state.error()
        check("pair", state["pair"])
        check("ticket", state["ticket"])
        check("age", state["age"])
    with pytest.raises(ValueError, match="at most one of"):
        rl.gen("x", ebnf=PAIR_GBNF, regex="a")


@pytest.fixture(scope="module")
def server():
    srv = ServerProcess(str(build_tiny_model("llama"))).start()
    yield srv
    srv.stop()


@pytest.mark.parametrize("kind", list(CASES))
def test_the_openai_client_gets_each_constraint(server, kind):
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0, timeout=120)
    spec = CASES[kind]
    if "json_schema" in spec:
        extra = {}
        fmt = {"type": "json_schema", "json_schema": {"name": kind, "schema": spec["json_schema"]}}
    else:
        extra, fmt = dict(spec), openai.NOT_GIVEN
    for seed in range(2):
        reply = client.chat.completions.create(
            model="m",
            messages=[{"role": "user", "content": f"Give me a {kind}."}],
            max_tokens=160,
            temperature=1.0,
            seed=seed,
            response_format=fmt,
            extra_body=extra or None,
        )
        assert reply.choices[0].finish_reason == "stop"
        check(kind, reply.choices[0].message.content)
    # vLLM's spelling of a grammar reaches the same constraint
    if kind == "ticket":
        reply = client.completions.create(
            model="m", prompt="Ticket:", max_tokens=32, extra_body={"guided_grammar": TICKET_LARK}
        )
        check(kind, reply.choices[0].text)
    with pytest.raises(openai.BadRequestError, match="invalid ebnf"):
        client.completions.create(model="m", prompt="x", max_tokens=4, extra_body={"ebnf": "root ::= foo"})
