"""Constrained decoding: the vocabulary mapping, schema handling, the batched mask, grammar
compilation off the scheduler's thread, jump-forward's exactness, and the public entries."""

from __future__ import annotations

import concurrent.futures
import json
import re
from typing import Annotated, Literal

import msgspec
import pydantic
import pytest
import torch
from helpers import LocalRuntime, get_engine

from radixlm.runtime.constrained.grammar import Grammar, build_vocab_mask
from radixlm.runtime.constrained.grammar_cache import GrammarCache, ascii_shorthands
from radixlm.runtime.constrained.json_schema import (
    json_schema_to_regex,
    normalize_json_schema,
    unenforced_features,
)
from radixlm.runtime.constrained.vocabulary import TokenizerVocab, token_bytes_table
from radixlm.testing import build_tiny_model

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "age": {"type": "integer", "maxDigits": 2},
        "member": {"type": "boolean"},
    },
    "required": ["name", "age", "member"],
}
LONG_KEYS = {
    "type": "object",
    "properties": {
        "customer_full_name": {"type": "string", "maxLength": 8},
        "shipping_address_line_one": {"type": "string", "maxLength": 8},
        "preferred_delivery_window": {"enum": ["morning", "afternoon"]},
    },
    "required": ["customer_full_name", "shipping_address_line_one", "preferred_delivery_window"],
}


@pytest.fixture(scope="module")
def tokenizer():
    from radixlm.runtime.tokenizer import load_tokenizer

    return load_tokenizer(str(build_tiny_model("llama")))


@pytest.fixture(scope="module")
def vocab(tokenizer):
    return TokenizerVocab(tokenizer, len(tokenizer), [tokenizer.eos_token_id])


# ------------------------------------------------------------------------------ vocabulary
def test_byte_level_tokens_map_back_to_their_raw_bytes(tokenizer, vocab):
    table = vocab.token_bytes
    special = set(tokenizer.added_tokens_decoder)
    assert special and not special & set(table)  # special/added tokens are never allowed
    for token, tid in list(tokenizer.get_vocab().items())[:3000]:
        if tid in special:
            continue
        text = tokenizer.decode([tid])
        if "\ufffd" not in text:  # a whole-character token: its bytes are its text's bytes
            assert table[tid] == text.encode(), (token, tid)
    space_tokens = [t for t, b in table.items() if b.startswith(b" ") and len(b) > 1]
    assert space_tokens, "space-prefixed tokens must keep their leading space"
    assert vocab.anchor_eos not in [t for ids in [table] for t in ids if t in vocab.eos_ids]


def test_sentencepiece_style_tokens_and_byte_fallbacks():
    class SentencePieceLike:
        added_tokens_decoder = {0: "<unk>", 1: "<s>", 2: "</s>"}
        all_special_ids = [0, 1, 2]

        def get_vocab(self):
            return {"<unk>": 0, "<s>": 1, "</s>": 2, "\u2581the": 3, "cat": 4, "<0x41>": 5, "<0xE2>": 6}

    table = token_bytes_table(SentencePieceLike())
    assert table == {3: b" the", 4: b"cat", 5: b"A", 6: b"\xe2"}


def test_space_prefixed_tokens_are_allowed_after_an_opening_brace(vocab, tokenizer):
    compiled = GrammarCache(vocab, backend="outlines").get(("json", normalize_json_schema(PERSON))).result()
    grammar = Grammar(compiled)
    assert grammar.advance(tokenizer.convert_tokens_to_ids("{"))
    allowed = {vocab.token_bytes[t] for t in grammar.allowed()}
    assert b' "' in allowed or b' "name' in allowed  # whitespace then the key, as one token


# ------------------------------------------------------------------------------ schemas
# bounded strings and lists: a random-weight model would otherwise write until max_new_tokens
class PersonModel(pydantic.BaseModel):
    name: str = pydantic.Field(max_length=12)
    language: Literal["python", "rust"]
    tags: list[Annotated[str, pydantic.StringConstraints(max_length=6)]] = pydantic.Field(
        default=[], max_length=2
    )


class PersonStruct(msgspec.Struct):
    name: Annotated[str, msgspec.Meta(max_length=12)]
    member: bool


def test_schema_forms_normalise_to_json_text():
    as_text = normalize_json_schema(json.dumps(PERSON))
    assert json.loads(as_text) == PERSON == json.loads(normalize_json_schema(PERSON))
    assert list(json.loads(as_text)["properties"]) == [
        "name",
        "age",
        "member",
    ]  # order kept: it orders output
    assert json.loads(normalize_json_schema(PersonModel))["properties"]["language"]["enum"] == [
        "python",
        "rust",
    ]
    assert set(json.loads(normalize_json_schema(PersonStruct))["$defs"]["PersonStruct"]["properties"]) == {
        "name",
        "member",
    }
    with pytest.raises(ValueError, match="not valid JSON"):
        normalize_json_schema("{nope")
    with pytest.raises(ValueError, match="JSON object"):
        normalize_json_schema("[1, 2]")
    with pytest.raises(TypeError, match="pydantic model class or a msgspec Struct"):
        normalize_json_schema(3.5)


def test_keywords_the_regex_cannot_enforce_are_refused_by_name_and_place():
    schema = {
        "type": "object",
        "properties": {
            "minimum": {"type": "integer"},
            "n": {"type": "array", "items": {"type": "integer", "maximum": 3}, "uniqueItems": True},
        },
    }
    assert unenforced_features(schema) == ["uniqueItems at /properties/n", "maximum at /properties/n/items"]
    with pytest.raises(ValueError, match="unsupported json_schema feature.*maximum at /properties/n/items"):
        json_schema_to_regex(json.dumps(schema))
    assert json_schema_to_regex(
        json.dumps({"type": "object", "properties": {"minimum": {"type": "integer"}}})
    )
    two_digits = json_schema_to_regex(json.dumps({"type": "integer", "maxDigits": 2}))
    assert re.fullmatch(two_digits, "99") and not re.fullmatch(two_digits, "100")
    for bad, named in [
        ({"type": "string", "pattern": "^a+$", "maxLength": 3}, "pattern together with maxLength"),
        ({"type": "string", "format": "date", "pattern": "^2"}, "format together with pattern"),
        ({"type": "number", "maxDigitsFraction": 2}, "maxDigitsFraction"),
        # below 2 outlines-core writes unbounded digits: a random model then never finishes
        ({"type": "integer", "maxDigits": 1}, "maxDigits other than an integer of at least 2"),
        ({"type": "integer", "maxDigits": "3"}, "maxDigits other than"),
        ({"type": "number", "maxDigitsInteger": 0}, "maxDigitsInteger other than"),
    ]:
        with pytest.raises(ValueError, match=named):
            json_schema_to_regex(json.dumps(bad))
    # outlines-core would write this key into the regex unescaped, so output would not be JSON
    with pytest.raises(ValueError, match="property name with a quote"):
        json_schema_to_regex(json.dumps({"type": "object", "properties": {'say "hi"': {"type": "boolean"}}}))
    with pytest.raises(ValueError, match="unsupported json_schema"):
        json_schema_to_regex(json.dumps({"type": "martian"}))


# ------------------------------------------------------------------------------ grammar cache and mask
def test_cache_hits_failures_and_compile_time(vocab):
    cache = GrammarCache(vocab, backend="outlines")
    first = cache.get(("regex", r"[0-9]{2}")).result()
    assert cache.get(("regex", r"[0-9]{2}")).result() is first
    with pytest.raises(ValueError, match="cannot compile regex"):
        cache.get(("regex", r"(?=a)b")).result()
    with pytest.raises(ValueError, match="cannot compile regex"):  # the failure is cached too
        cache.get(("regex", r"(?=a)b")).result()
    assert (cache.stats.hits, cache.stats.misses, cache.stats.failures) == (2, 2, 1)
    assert cache.stats.compile_time_s > 0


def test_batched_mask_equals_the_rows_allowed_sets(vocab, tokenizer):
    cache = GrammarCache(vocab, backend="outlines")
    digits = Grammar(cache.get(("regex", r"[0-9]{1,3}")).result())
    done = Grammar(cache.get(("regex", r"[0-9]{1,3}")).result())
    for t in tokenizer("12", add_special_tokens=False).input_ids:
        assert done.advance(t)
    assert done.is_final and done.allowed()  # final, and may continue with one more digit
    V = len(tokenizer)
    mask = build_vocab_mask([None, digits, done], [[2], [2], [2, 7]], V, torch.device("cpu"))
    assert mask.shape == (3, V) and not mask[0].any()
    assert set(torch.nonzero(~mask[1]).flatten().tolist()) == set(digits.allowed())
    assert set(torch.nonzero(~mask[2]).flatten().tolist()) == set(done.allowed()) | {2, 7}  # stops let in
    assert build_vocab_mask([None, None], [[], []], V, torch.device("cpu")) is None


def test_a_request_waits_for_its_grammar_while_others_keep_decoding():
    rt = LocalRuntime("llama")
    pending: concurrent.futures.Future = concurrent.futures.Future()
    real_get = rt.grammars.get
    rt.grammars.get = lambda key: pending  # a grammar that takes its time to compile
    ids = rt.tokenizer("Numbers:", add_special_tokens=False).input_ids
    free = rt.submit(ids, {"max_new_tokens": 6, "temperature": 0})
    slow = rt.submit(ids, {"max_new_tokens": 6, "temperature": 0, "regex": "[0-9]+"})
    for _ in range(4):
        rt.scheduler.step()
    assert len(free.output_ids) >= 3 and not slow.output_ids
    assert slow in rt.scheduler.grammar_queue.requests()
    pending.set_result(real_get(("regex", "[0-9]+")).result())
    while rt.scheduler.has_work:
        rt.scheduler.step()
    text = rt.tokenizer.decode(slow.output_ids)
    assert re.fullmatch("[0-9]+", text) and slow.finished_reason["type"] in ("stop", "length")
    # a grammar that fails: the request ends with an error naming it, and nothing leaks
    failing: concurrent.futures.Future = concurrent.futures.Future()
    failing.set_exception(ValueError("cannot compile regex 'x': broken"))
    rt.grammars.get = lambda key: failing
    bad = rt.submit(ids, {"max_new_tokens": 4, "regex": "x"})
    rt.scheduler.step()
    assert bad.finished_reason == {
        "type": "abort",
        "message": "cannot compile regex 'x': broken",
        "status_code": 400,
    }
    rt.scheduler.check_accounting()


# ------------------------------------------------------------------------------ through the Engine
def test_regex_and_schema_outputs_match_and_schema_objects_are_accepted():
    import jsonschema

    # the outlines-core backend (auto gives these schemas to llguidance: test_grammar_backends.py)
    engine = get_engine("llama", grammar_backend="outlines")
    outs = engine.generate(
        ["IP address:", "Person:", "Person:", "Person:"],
        [
            {
                "regex": r"((25[0-5]|2[0-4]\d|1?\d?\d)\.){3}(25[0-5]|2[0-4]\d|1?\d?\d)",
                "temperature": 1.0,
                "seed": 1,
                "max_new_tokens": 64,
            },
            {"json_schema": PERSON, "temperature": 1.0, "seed": 2, "max_new_tokens": 128},
            {"json_schema": PersonModel, "temperature": 0.8, "seed": 3, "max_new_tokens": 160},
            {"json_schema": PersonStruct, "temperature": 0, "max_new_tokens": 160},
        ],
    )
    assert re.fullmatch(r"((25[0-5]|2[0-4]\d|1?\d?\d)\.){3}(25[0-5]|2[0-4]\d|1?\d?\d)", outs[0]["text"])
    jsonschema.validate(json.loads(outs[1]["text"]), PERSON)
    PersonModel.model_validate_json(outs[2]["text"])
    msgspec.json.decode(outs[3]["text"], type=PersonStruct)
    assert all(o["meta_info"]["finish_reason"]["type"] == "stop" for o in outs)
    info = engine.get_server_info()
    assert info["constrained_decoding"] and info["grammar_cache_misses"] >= 4
    assert info["grammar_compile_time_s"] > 0


def test_a_bad_grammar_fails_by_name_and_the_engine_keeps_serving():
    engine = get_engine("llama")
    with pytest.raises(Exception, match="cannot compile regex"):
        engine.generate("x", {"regex": r"(?=a)b", "max_new_tokens": 4})
    # what neither backend enforces is refused by name (numeric bounds go to llguidance)
    with pytest.raises(ValueError, match="unsupported json_schema feature.*not"):
        engine.generate("x", {"json_schema": {"type": "integer", "not": {"const": 3}}, "max_new_tokens": 4})
    # a format no backend knows is an annotation (JSON Schema: validators ignore it): a string
    out = engine.generate("x", {"json_schema": {"type": "string", "format": "bogus", "maxLength": 3}})
    assert isinstance(json.loads(out["text"]), str)
    with pytest.raises(ValueError, match=r"invalid grammar: .*1\(14\)"):
        engine.generate("x", {"grammar": 'start: "a" ( \n', "max_new_tokens": 4})
    with pytest.raises(ValueError, match="invalid grammar: .*unknown name"):
        engine.generate("x", {"grammar": 'start: "a" | b\n', "max_new_tokens": 4})
    with pytest.raises(ValueError, match="invalid ebnf: .*line 2"):
        engine.generate("x", {"ebnf": 'root ::= "x" item\nitem ::= [0-9', "max_new_tokens": 4})
    with pytest.raises(ValueError, match="at most one of regex, json_schema, ebnf, grammar, structural_tag"):
        engine.generate("x", {"ebnf": 'root ::= "x"', "regex": "x", "max_new_tokens": 4})
    out = engine.generate("x", {"regex": "[ab]{3}", "max_new_tokens": 8})
    assert re.fullmatch("[ab]{3}", out["text"])


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_jump_forward_keeps_outputs_identical_and_saves_one_decode_step_per_forced_token(temperature):
    params = {"json_schema": LONG_KEYS, "max_new_tokens": 200, "temperature": temperature, "seed": 11}
    runs = {}
    for jump in (False, True):
        # outlines-core's drafts; llguidance's identity on/off: test_grammar_backends.py (there a
        # request may end on a kept draft token, which saves one step less than it counts)
        engine = get_engine("llama", disable_jump_forward=not jump, grammar_backend="outlines")
        before = engine.get_server_info()["decode_steps"]
        out = engine.generate("Order:", params, return_logprob=True, top_logprobs_num=2)
        runs[jump] = (out, engine.get_server_info()["decode_steps"] - before)
    (off, off_steps), (on, on_steps) = runs[False], runs[True]
    assert on["text"] == off["text"] and on["output_ids"] == off["output_ids"]
    json.loads(on["text"])
    forced = on["meta_info"]["jump_forward_tokens"]
    assert off["meta_info"]["jump_forward_tokens"] == 0 and forced >= 10  # the long keys
    assert off_steps - on_steps == forced  # one request: each kept draft token is a decode step saved
    # logprobs stay one per output token, for the same tokens, with the same values
    for run in (on, off):
        entries = run["meta_info"]["output_token_logprobs"]
        assert [t for _, t in entries] == run["output_ids"]
        assert len(run["meta_info"]["output_top_logprobs"]) == len(run["output_ids"])
    assert [lp for lp, _ in on["meta_info"]["output_token_logprobs"]] == pytest.approx(
        [lp for lp, _ in off["meta_info"]["output_token_logprobs"]], abs=1e-4
    )


def test_the_json_whitespace_pattern_is_an_engine_option():
    engine = get_engine("llama", constrained_json_whitespace_pattern="")
    outs = engine.generate(
        ["Order:"] * 3,
        [{"json_schema": LONG_KEYS, "max_new_tokens": 160, "temperature": 1.0, "seed": s} for s in range(3)],
    )
    for out in outs:
        obj = json.loads(out["text"])
        assert out["text"] == json.dumps(
            obj, separators=(",", ":"), ensure_ascii=False
        )  # not one optional space


def test_shorthand_classes_compile_to_ascii_so_outputs_match_in_every_regex_dialect():
    # outlines-core (Rust) reads \d as any Unicode digit of the newest Unicode; the output must
    # still match under Python's re and JSON Schema's ASCII patterns
    assert ascii_shorthands(r"\d+-\w\s") == r"[0-9]+-[0-9A-Za-z_][\t\n\x0b\x0c\r ]"
    assert ascii_shorthands(r"[\d.]+") == r"[0-9.]+"
    assert ascii_shorthands(r"\\d") == r"\\d"  # an escaped backslash, then a literal d
    assert ascii_shorthands(r"[]\d]") == r"[]0-9]"  # a leading ] is a literal
    assert ascii_shorthands(r"[^\w]\D\W\S") == r"[^\w]\D\W\S"  # complements keep their meaning
    for pattern in (r"\d+-\w\s", r"[\d.]+", r"[]\d]", r"[^\w]x"):
        re.compile(ascii_shorthands(pattern))
