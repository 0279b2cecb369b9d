"""Tool calling fuzzed through a real `radixlm serve`, with the official `openai` client: random
tool sets (nested objects, enums, arrays of scalars and of objects, optional parameters) on
random-weight models, one server per parser family, under every tool_choice mode, sampled at
temperature 1.0 with a fixed seed per request.

* "required" / a named function: the answer is tool calls (finish_reason "tool_calls") to
  offered functions (the named one only), whose arguments are JSON that validates against the
  function's schema; one call where the request or the family rules out parallel calls;
* "none": never a call; "auto": content only (random weights write text), or, where a regex
  (SGLang's extension) holds the output to some text and then calls, that text as content and
  the calls read back and validating as above;
* the same request streamed (same seed) reassembles to exactly the non-streamed message: the
  content, each call's name and arguments, the finish reason and the token count; only the
  call ids differ, and each is sent once, first, well-formed;
* `parallel_tool_calls: true` on the llama3 family (one call per turn) is a 400 naming the
  field and the family, and the server answers as before afterwards.

All cases are sent at once (both forms of a case share a batch), then judged one test each.
Random weights write digits and strings forever: integers carry maxDigits, strings maxLength,
arrays maxItems, numbers are enums, so every call ends well within max_tokens.
"""

from __future__ import annotations

import json
import random
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx
import jsonschema
import openai
import pytest
from server_process import ServerProcess, wait_idle_and_kv_free

from radixlm.runtime.function_call.tool_grammar import tool_call_regex
from radixlm.testing import build_tiny_model

SEED = 20240611
FAMILY_MODELS = {"hermes": "qwen2", "llama3": "llama", "mistral": "mistral"}  # a random model each
MODES = ("none", "auto", "required", "named")
SETS_PER_FAMILY = 4
FORCED_MAX_TOKENS = 384  # every forced call finishes well within it (several, for mistral)
FREE_MAX_TOKENS = 32  # "none" and free "auto": random weights write text until the limit
CALL_ID = re.compile(r"call_[0-9a-f]{24}")
QUESTIONS = [
    "Look this up for me, please.",
    "What is the weather in Lisbon tomorrow?",
    "Book two seats and tell me the total.",
    "Summarise the open tickets.",
]
PROPERTY_NAMES = ["city", "unit", "query", "limit", "tags", "when", "flag", "owner", "mode", "range", "point"]
ENUM_WORDS = ["red", "green", "blue", "c", "f", "fast", "slow", "on", "off", "a b", "x-1"]
TOOL_VERBS = ["get", "find", "book", "list", "make", "send"]
TOOL_NOUNS = ["weather", "ticket", "seat", "report", "user", "file.v2", "quota-left"]


# ------------------------------------------------------------------------------ random tool sets
def _scalar(rng: random.Random) -> dict[str, Any]:
    kind = rng.choice(["string", "string", "integer", "number", "boolean", "enum"])
    if kind == "string":  # random weights write strings forever: a maxLength ends them
        spec: dict[str, Any] = {"type": "string", "maxLength": rng.randint(1, 8)}
        if rng.random() < 0.3:
            spec["minLength"] = 1
    elif kind == "enum":
        spec = {"enum": rng.sample(ENUM_WORDS, rng.randint(1, 4)) + ([7] if rng.random() < 0.3 else [])}
    elif kind == "integer":  # its digits bounded: outlines-core's maxDigits (minimum/maximum are refused)
        spec = {"type": "integer", "maxDigits": rng.randint(2, 4)}  # 1 is dropped: see MaxDigitsValidator
    elif kind == "number":  # a number's fraction and exponent cannot be bounded: a few values
        spec = {"type": "number", "enum": rng.sample([0, 1.5, -2, 0.25, 1e3, 42], rng.randint(1, 3))}
    else:
        spec = {"type": kind}
    if rng.random() < 0.3:
        spec["description"] = f"the {kind}"
    return spec


def _object(rng: random.Random, depth: int, max_properties: int = 3) -> dict[str, Any]:
    names = rng.sample(PROPERTY_NAMES, rng.randint(1, max_properties))
    spec: dict[str, Any] = {"type": "object", "properties": {n: _value(rng, depth - 1) for n in names}}
    required = [n for n in names if rng.random() < 0.5]  # the others are optional
    if required:
        spec["required"] = required
    if rng.random() < 0.3:
        spec["additionalProperties"] = False
    return spec


def _value(rng: random.Random, depth: int) -> dict[str, Any]:
    r = rng.random()
    if depth > 0 and r < 0.25:
        return _object(rng, depth, max_properties=2)
    if depth > 0 and r < 0.45:
        items = _object(rng, depth, max_properties=2) if rng.random() < 0.4 else _scalar(rng)
        spec = {"type": "array", "items": items, "maxItems": rng.randint(1, 3)}
        if rng.random() < 0.3:
            spec["minItems"] = 1
        return spec
    return _scalar(rng)


def random_tools(rng: random.Random) -> list[dict[str, Any]]:
    names = rng.sample([f"{v}_{n}" for v in TOOL_VERBS for n in TOOL_NOUNS], rng.randint(1, 3))
    tools = []
    for name in names:
        function: dict[str, Any] = {"name": name}
        if rng.random() < 0.7:
            function["description"] = f"{name.replace('_', ' ')} for the user"
        r = rng.random()
        if r < 0.8:
            function["parameters"] = _object(rng, depth=2)
        elif r < 0.9:
            function["parameters"] = {"type": "object", "properties": {}}
        # else: no parameters at all (an empty object is the only argument)
        tools.append({"type": "function", "function": function})
    return tools


@dataclass(frozen=True)
class Case:
    id: str
    family: str
    mode: str
    tools: list[dict[str, Any]]
    question: str
    seed: int
    parallel: bool | None  # parallel_tool_calls as sent (None: left out)
    named: str | None = None
    regex: str | None = None  # "auto" only: the output held to text and then calls (SGLang's regex)

    @property
    def tool_choice(self) -> str | dict:
        if self.mode == "named":
            return {"type": "function", "function": {"name": self.named}}
        return self.mode

    @property
    def one_call_only(self) -> bool:
        return self.parallel is False or self.family == "llama3"

    @property
    def must_call(self) -> bool:
        return self.mode in ("required", "named") or self.regex is not None

    def request(self) -> dict[str, Any]:
        kw: dict[str, Any] = {
            "model": "m",
            "messages": [{"role": "user", "content": self.question}],
            "tools": self.tools,
            "tool_choice": self.tool_choice,
            "temperature": 1.0,
            "seed": self.seed,
            "max_tokens": FORCED_MAX_TOKENS if self.must_call else FREE_MAX_TOKENS,
        }
        if self.parallel is not None:
            kw["parallel_tool_calls"] = self.parallel
        if self.regex is not None:
            kw["extra_body"] = {"regex": self.regex}
        return kw


def _text_then_calls(tools: list[dict], family: str, parallel: bool) -> str:
    """Some text (llama3: none, its calls open the output), then calls in the family's format,
    for "auto" to read back: content before calls, then the calls."""
    text = "" if family == "llama3" else "[A-Za-z][A-Za-z ,.]{0,10}[ \n]?"
    return text + tool_call_regex(tools, "required", family, parallel=parallel)


def _cases() -> list[Case]:
    rng = random.Random(SEED)
    cases = []
    for family in FAMILY_MODELS:
        for k in range(SETS_PER_FAMILY):
            tools = random_tools(rng)
            question = rng.choice(QUESTIONS)
            for mode in MODES:
                # llama3 refuses an explicit true (tested below); elsewhere any of the three
                parallel = rng.choice([None, False] if family == "llama3" else [None, False, True])
                named = rng.choice(tools)["function"]["name"] if mode == "named" else None
                seed = rng.randrange(2**31)
                cid, regex = f"{family}-set{k}-{mode}", None
                if mode == "auto" and k % 2:  # random weights never call by themselves: make them
                    regex = _text_then_calls(tools, family, parallel is not False and family != "llama3")
                    cid += "+calls"
                cases.append(Case(cid, family, mode, tools, question, seed, parallel, named, regex))
    return cases


CASES = _cases()


# ------------------------------------------------------------------------------ servers and answers
def _client(server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0, timeout=300)


@pytest.fixture(scope="module")
def servers():
    """One `radixlm serve` per parser family (one after the other: on two cores, starting them
    side by side saves little and leaves each less of its readiness timeout)."""
    started: dict[str, ServerProcess] = {}
    try:
        for family, model in FAMILY_MODELS.items():
            srv = ServerProcess(str(build_tiny_model(model)), ["--tool-call-parser", family])
            started[family] = srv.start()
        yield started
    finally:
        for srv in started.values():
            srv.stop()


def _whole(client: openai.OpenAI, case: Case) -> dict[str, Any]:
    return client.chat.completions.create(**case.request()).model_dump()


def _streamed(client: openai.OpenAI, case: Case) -> list[dict[str, Any]]:
    chunks = client.chat.completions.create(
        stream=True, stream_options={"include_usage": True}, **case.request()
    )
    return [chunk.model_dump() for chunk in chunks]


@pytest.fixture(scope="module")
def answers(servers):
    """case id -> (the non-streamed completion, the streamed chunks), every request in flight
    at once; a request that failed leaves its future, to fail its own case only."""
    clients = {family: _client(srv) for family, srv in servers.items()}
    with ThreadPoolExecutor(max_workers=2 * len(CASES)) as pool:
        whole = {c.id: pool.submit(_whole, clients[c.family], c) for c in CASES}
        streamed = {c.id: pool.submit(_streamed, clients[c.family], c) for c in CASES}
    for client in clients.values():
        client.close()
    return {c.id: (whole[c.id], streamed[c.id]) for c in CASES}


# ------------------------------------------------------------------------------ judging one case
def reassemble(chunks: list[dict[str, Any]]) -> tuple[dict[str, Any], str | None, dict | None]:
    """A streamed choice as (message, finish_reason, usage), checking the delta protocol on the
    way: one choice, the role first, each call's id, type and name once in its first delta,
    then argument fragments only, indexes 0, 1, ... in order."""
    content: list[str] = []
    calls: list[dict[str, Any]] = []
    finish, usage, role = None, None, None
    for chunk in chunks:
        assert chunk["object"] == "chat.completion.chunk"
        if chunk.get("usage"):
            usage = chunk["usage"]
        for choice in chunk["choices"]:
            assert choice["index"] == 0 and finish is None, "one choice, nothing after its finish"
            delta = choice["delta"]
            assert not delta.get("reasoning_content"), "no reasoning is streamed"
            if delta.get("role"):
                assert role is None, "the role is sent once"
                role = delta["role"]
            content.append(delta.get("content") or "")
            for call in delta.get("tool_calls") or []:
                if call["index"] == len(calls):  # a new call: its first delta names it
                    assert call["id"] and call["type"] == "function" and call["function"]["name"], call
                    calls.append({"id": call["id"], "name": call["function"]["name"], "arguments": ""})
                else:
                    assert call["index"] == len(calls) - 1, f"delta for call {call['index']} out of order"
                    assert call["id"] is None and call["function"]["name"] is None, call
                calls[-1]["arguments"] += call["function"]["arguments"] or ""
            finish = choice["finish_reason"] or finish
    assert role == "assistant"
    return {"content": "".join(content), "tool_calls": calls}, finish, usage


def _check_call_ids(ids: list[str]) -> None:
    assert all(CALL_ID.fullmatch(i) for i in ids), ids
    assert len(set(ids)) == len(ids), f"call ids repeat: {ids}"


def _schemas(case: Case) -> dict[str, dict]:
    return {t["function"]["name"]: t["function"].get("parameters") or {"type": "object"} for t in case.tools}


def _max_digits(validator, max_digits, instance, schema):
    if isinstance(instance, int) and not isinstance(instance, bool) and len(str(abs(instance))) > max_digits:
        yield jsonschema.ValidationError(f"{instance} has more than maxDigits {max_digits} digits")


# JSON Schema 2020-12 plus the integer bound the server enforces (outlines-core's maxDigits;
# 0.2.14 silently drops maxDigits 1, so the fuzz asks for 2 to 4)
MaxDigitsValidator = jsonschema.validators.extend(jsonschema.Draft202012Validator, {"maxDigits": _max_digits})


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_fuzzed_tool_calls_validate_and_stream_to_the_same_message(answers, case):
    whole, chunks = (future.result() for future in answers[case.id])
    [choice] = whole["choices"]
    message, finish = choice["message"], choice["finish_reason"]
    calls = message["tool_calls"] or []
    schemas = _schemas(case)
    assert message["role"] == "assistant"
    assert not message.get("reasoning_content")

    content = message["content"]
    if case.mode == "none":
        assert not calls and finish in ("stop", "length") and isinstance(content, str)
    elif case.must_call:  # forced, or (auto) held to text then calls by the regex
        assert finish == "tool_calls" and calls, f"no call: {finish} {content!r}"
        if case.regex is None or case.family == "llama3":
            assert content is None, "calls only"
        else:  # the text before the calls is content, the whitespace before the marker dropped
            assert content and content == content.rstrip(" \n"), content
        if case.one_call_only:
            assert len(calls) == 1, [c["function"]["name"] for c in calls]
        for call in calls:
            name = call["function"]["name"]
            assert name == case.named if case.mode == "named" else name in schemas
            MaxDigitsValidator(schemas[name]).validate(json.loads(call["function"]["arguments"]))
    else:  # auto, free: random weights write text; calls (if ever) are to offered functions
        assert finish == "tool_calls" if calls else finish in ("stop", "length")
        for call in calls:
            assert call["function"]["name"] in schemas
            assert isinstance(json.loads(call["function"]["arguments"]), dict)
        if not calls:
            assert isinstance(content, str)
    for call in calls:
        assert call["type"] == "function"
    _check_call_ids([c["id"] for c in calls])

    streamed, streamed_finish, usage = reassemble(chunks)
    assert streamed_finish == finish
    assert streamed["content"] == (content or "")
    assert [(c["name"], c["arguments"]) for c in streamed["tool_calls"]] == [
        (c["function"]["name"], c["function"]["arguments"]) for c in calls
    ]
    _check_call_ids([c["id"] for c in streamed["tool_calls"]])
    assert usage == whole["usage"]  # same seed, same tokens


def test_the_fuzz_samples_rather_than_repeats(answers):
    """Temperature 1.0 with different seeds: the outputs differ (the fuzz is not one answer)."""
    outputs = set()
    for case in CASES:
        message = answers[case.id][0].result()["choices"][0]["message"]
        calls = [(c["function"]["name"], c["function"]["arguments"]) for c in message["tool_calls"] or []]
        outputs.add((message["content"], tuple(calls)))  # not the ids: those differ anyway
    assert len(outputs) > len(CASES) // 2


def test_every_server_ends_idle_with_its_kv_accounted_for(servers, answers):
    for srv in servers.values():
        wait_idle_and_kv_free(srv)


# ------------------------------------------------------------------------------ parallel_tool_calls
def test_parallel_tool_calls_true_on_a_single_call_family_is_refused_by_name(servers):
    srv = servers["llama3"]
    case = next(c for c in CASES if c.family == "llama3" and c.mode == "required")
    body = {**case.request(), "max_tokens": 16}
    before = httpx.post(f"{srv.url}/v1/chat/completions", json=body, timeout=120)
    assert before.status_code == 200, before.text
    for mode in ("auto", "required"):
        r = httpx.post(
            f"{srv.url}/v1/chat/completions",
            json={**body, "tool_choice": mode, "parallel_tool_calls": True},
            timeout=60,
        )
        assert r.status_code == 400, r.text
        error = r.json()["error"]
        assert "parallel_tool_calls" in error["message"] and "llama3" in error["message"], error
    after = httpx.post(f"{srv.url}/v1/chat/completions", json=body, timeout=120)
    assert after.status_code == 200, after.text
    assert _without_ids(after.json()) == _without_ids(before.json())


def _without_ids(completion: dict) -> list[dict]:
    """The choices with each call's id (fresh per response) blanked."""
    out = []
    for choice in completion["choices"]:
        calls = [{**c, "id": None} for c in choice["message"].get("tool_calls") or []]
        out.append({**choice, "message": {**choice["message"], "tool_calls": calls}})
    return out
