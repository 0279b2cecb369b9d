"""Structural tags (runtime/constrained/structural_tag.py): free text whose tagged segments
follow their JSON schemas. Refusals by name; the matcher on hand-written text; sampled outputs
at temperature 1.0 through the Engine, SGLang's /generate and the official OpenAI client, each
segment parsed and validated."""

from __future__ import annotations

import json

import httpx
import jsonschema
import openai
import pytest
import torch
from helpers import get_engine
from server_process import ServerProcess

from radixlm.runtime.constrained.grammar_cache import GrammarCache
from radixlm.runtime.constrained.structural_tag import normalize_structural_tag
from radixlm.runtime.constrained.vocabulary import TokenizerVocab
from radixlm.runtime.tokenizer import load_tokenizer
from radixlm.testing import build_tiny_model

DIGIT = {
    "type": "object",
    "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 9}},
    "required": ["n"],
}
WORD = {"type": "object", "properties": {"w": {"enum": ["yes", "no"]}}, "required": ["w"]}
# the trigger is a letter that ends 12% of the tiny vocabulary's tokens, so that a random model
# opens segments often (the free text can hold the trigger only where a segment begins)
TAG = {
    "structures": [
        {"begin": "e(call ", "schema": DIGIT, "end": ")"},
        {"begin": "e(ask ", "schema": WORD, "end": ")"},
    ],
    "triggers": ["e"],
}
SCHEMA_OF = {s["begin"]: s["schema"] for s in TAG["structures"]}


def segments(text: str, finished: bool) -> list[dict]:
    """Each tagged segment's value, validated; raises where the text breaks the tag. An
    unfinished output may end inside a segment."""
    found, at = [], 0
    decoder = json.JSONDecoder()
    while (start := text.find("e", at)) >= 0:
        rest = text[start:]
        begin = next((b for b in SCHEMA_OF if rest.startswith(b)), None)
        if begin is None:
            assert not finished and any(b.startswith(rest) for b in SCHEMA_OF), f"bad begin at {rest!r}"
            return found
        body = rest[len(begin) :]
        try:
            value, end = decoder.raw_decode(body)
        except ValueError:
            assert not finished, f"unfinished JSON in a finished output: {rest!r}"
            return found
        jsonschema.validate(value, SCHEMA_OF[begin])
        if not body[end:].startswith(")"):
            assert not finished and body[end:] == "", f"missing end at {body[end:]!r}"
            return found
        found.append(value)
        at = start + len(begin) + end + 1
    return found


@pytest.mark.parametrize(
    ("tag", "match"),
    [
        ("not json", "must be JSON text"),
        ({"structures": TAG["structures"]}, "exactly 'structures' and 'triggers'"),
        ({**TAG, "extra": 1}, r"unknown: extra"),
        ({**TAG, "triggers": []}, "triggers must be a non-empty list"),
        ({**TAG, "triggers": ["e", "e(c"]}, "is a prefix of trigger"),
        ({**TAG, "triggers": ["e", "e"]}, "triggers repeat"),
        ({**TAG, "structures": []}, "structures must be a non-empty list"),
        (
            {**TAG, "structures": [{"begin": "e(", "schema": DIGIT}]},
            r"structures\[0\] must be an object with",
        ),
        (
            {**TAG, "structures": [{"begin": "[x", "schema": DIGIT, "end": "]"}]},
            "starts with none of the triggers",
        ),
        ({**TAG, "triggers": ["e", "<"]}, r"trigger\(s\) \['<'\] begin no structure"),
        (
            {**TAG, "structures": [{"begin": "e(", "schema": [1], "end": ")"}]},
            "schema must be a JSON schema object",
        ),
    ],
)
def test_bad_tags_are_refused_by_name(tag, match):
    with pytest.raises(ValueError, match=match):
        normalize_structural_tag(tag)


@pytest.fixture(scope="module")
def vocab():
    tok = load_tokenizer(str(build_tiny_model("llama")))
    return TokenizerVocab(tok, len(tok), [tok.eos_token_id])


def walk(matcher, vocab, text: str) -> bool:
    return all(matcher.advance(t) for t in vocab.encode(text))


def test_the_matcher_frees_text_and_holds_each_segment(vocab):
    compiled = (
        GrammarCache(vocab, backend="llguidance")
        .get(("structural_tag", normalize_structural_tag(TAG)))
        .result()
    )
    ok = compiled.new_matcher(None, None)
    assert ok.is_final, "free text may stop before any segment"
    assert walk(ok, vocab, 'So: e(call {"n": 7}) and e(ask {"w": "no"}) ok.') and ok.is_final
    inside = compiled.new_matcher(None, None)
    assert walk(inside, vocab, 'so e(call {"n": ') and not inside.is_final, "no stop inside a segment"
    eos = vocab.tokenizer.eos_token_id
    assert inside.mask_row(torch.device("cpu"))[eos]
    assert not walk(compiled.new_matcher(None, None), vocab, 'a e(call {"n": 12})'), "12 > maximum"
    assert not walk(compiled.new_matcher(None, None), vocab, "a e(tell "), "a begin no structure has"
    assert not walk(compiled.new_matcher(None, None), vocab, 'a e(ask {"w": "yes"}]'), "the end is forced"
    # one bad segment schema is refused with its place
    bad = {
        **TAG,
        "structures": [{"begin": "e(", "schema": {"type": "array", "uniqueItems": True}, "end": ")"}],
    }
    with pytest.raises(ValueError, match=r"structures\[0\]\.schema: unsupported json_schema.*uniqueItems"):
        GrammarCache(vocab, backend="llguidance").get(
            ("structural_tag", normalize_structural_tag(bad))
        ).result()


def test_sampled_outputs_keep_every_segment_to_its_schema():
    engine = get_engine("llama")
    params = [
        {"structural_tag": TAG, "temperature": 1.0, "seed": seed, "max_new_tokens": 96} for seed in range(12)
    ]
    outs = engine.generate([f"Notes {i}:" for i in range(12)], params)
    total = 0
    for out in outs:
        total += len(segments(out["text"], out["meta_info"]["finish_reason"]["type"] == "stop"))
    assert total >= 3, f"only {total} segments in 12 outputs: the test would not exercise the tag"
    with pytest.raises(ValueError, match="structural_tag needs the llguidance grammar backend"):
        get_engine("llama", grammar_backend="outlines").generate(
            "x", {"structural_tag": TAG, "max_new_tokens": 4}
        )


@pytest.fixture(scope="module")
def server():
    srv = ServerProcess(str(build_tiny_model("llama"))).start()
    yield srv
    srv.stop()


def test_generate_and_the_openai_client_take_structural_tags_and_ebnf(server):
    with httpx.Client(base_url=server.url, timeout=120) as http:
        r = http.post(
            "/generate",
            json={
                "text": [f"Log {i}:" for i in range(6)],
                "sampling_params": {
                    "structural_tag": json.dumps(TAG),
                    "temperature": 1.0,
                    "max_new_tokens": 64,
                },
            },
        )
        assert r.status_code == 200, r.text
        for out in r.json():
            segments(out["text"], out["meta_info"]["finish_reason"]["type"] == "stop")
        pair = http.post(
            "/generate",
            json={
                "text": "Pair:",
                "sampling_params": {"ebnf": 'root ::= "(" [0-9] ", " [0-9] ")"', "max_new_tokens": 16},
            },
        )
        assert pair.status_code == 200, pair.text
        text = pair.json()["text"]
        assert len(text) == 6 and text[0] == "(" and text[2:4] == ", " and text[5] == ")", text
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0, timeout=120)
    for seed in range(3):
        reply = client.chat.completions.create(
            model="m",
            messages=[{"role": "user", "content": "Call the tools."}],
            max_tokens=64,
            temperature=1.0,
            seed=seed,
            response_format={"type": "structural_tag", **TAG},
        )
        choice = reply.choices[0]
        segments(choice.message.content, choice.finish_reason == "stop")
    with pytest.raises(openai.BadRequestError, match="begin no structure"):
        client.chat.completions.create(
            model="m",
            messages=[{"role": "user", "content": "x"}],
            max_tokens=4,
            response_format={"type": "structural_tag", **TAG, "triggers": ["e", "<"]},
        )
