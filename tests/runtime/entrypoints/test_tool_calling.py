"""OpenAI tool calling on /v1/chat/completions, through the official `openai` client against a
real `radixlm serve`: the trained demo model calls the calculator by itself (tool_choice
"auto") and answers from the result, streamed and not; "required" and a named function are
enforced by a grammar, so even random weights always produce calls that parse and validate;
"none" never returns calls; streamed deltas reassemble to exactly the non-streamed message."""

from __future__ import annotations

import json

import jsonschema
import openai
import pytest
from server_process import ServerProcess

from radixlm.demo_model import demo_model_path, tasks
from radixlm.testing import build_tiny_model

CALCULATOR = tasks.CALCULATOR_TOOL
WEATHER = tasks.WEATHER_TOOL
QUESTION = [{"role": "user", "content": "Use the calculator: what is 1234 * 5678?"}]


def _client(server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def demo():
    srv = ServerProcess(demo_model_path()).start()
    try:
        yield _client(srv)
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def tiny():
    srv = ServerProcess(str(build_tiny_model("llama")), ["--tool-call-parser", "hermes"]).start()
    try:
        yield _client(srv)
    finally:
        srv.stop()


def _bounded(tool: dict) -> dict:
    tool = json.loads(json.dumps(tool))
    for spec in tool["function"]["parameters"]["properties"].values():
        spec["maxLength"] = 12
    return tool


def _reassemble(chunks) -> tuple[str, list[dict], str | None]:
    """A streamed choice's content, tool calls and finish reason, put back together."""
    content, calls, finish = "", {}, None
    for chunk in chunks:
        for choice in chunk.choices:
            delta = choice.delta
            content += delta.content or ""
            for call in delta.tool_calls or []:
                entry = calls.setdefault(call.index, {"id": None, "name": "", "arguments": ""})
                if call.id:
                    assert entry["id"] is None, "a call's id is sent once"
                    entry["id"] = call.id
                if call.function and call.function.name:
                    entry["name"] += call.function.name
                if call.function and call.function.arguments:
                    entry["arguments"] += call.function.arguments
            finish = choice.finish_reason or finish
    return content, [calls[i] for i in sorted(calls)], finish


def test_auto_on_the_demo_model_is_a_real_two_step_tool_loop(demo):
    first = demo.chat.completions.create(
        model="m", messages=QUESTION, tools=[CALCULATOR, WEATHER], temperature=0
    )
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls" and not choice.message.content
    [call] = choice.message.tool_calls
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name == "calculator"
    assert json.loads(call.function.arguments) == {"expression": "1234 * 5678"}
    follow_up = [
        *QUESTION,
        choice.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": str(1234 * 5678)},
    ]
    second = demo.chat.completions.create(model="m", messages=follow_up, tools=[CALCULATOR], temperature=0)
    assert second.choices[0].finish_reason == "stop" and not second.choices[0].message.tool_calls
    assert "7006652" in second.choices[0].message.content


def test_streamed_tool_calls_reassemble_to_the_whole_message(demo):
    kw = {"model": "m", "messages": QUESTION, "tools": [CALCULATOR], "temperature": 0}
    whole = demo.chat.completions.create(**kw).choices[0]
    content, calls, finish = _reassemble(demo.chat.completions.create(stream=True, **kw))
    assert finish == whole.finish_reason == "tool_calls"
    assert content == (whole.message.content or "")
    assert "<tool" not in content  # no partial marker ever leaks into content
    assert [(c["name"], c["arguments"]) for c in calls] == [
        (c.function.name, c.function.arguments) for c in whole.message.tool_calls
    ]


def test_tool_choice_none_answers_in_text(demo):
    out = demo.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "What is 12 + 30?"}], tools=[CALCULATOR],
        tool_choice="none", temperature=0,
    )  # fmt: skip
    assert out.choices[0].message.tool_calls is None and "42" in out.choices[0].message.content


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("choice", ["required", {"type": "function", "function": {"name": "get_weather"}}])
def test_forced_calls_always_parse_and_validate_on_random_weights(tiny, choice, stream):
    # random weights write strings forever: bounded ones let every call finish within max_tokens
    tools = [_bounded(CALCULATOR), _bounded(WEATHER)]
    schemas = {t["function"]["name"]: t["function"]["parameters"] for t in tools}
    for seed in range(3):
        kw = {"model": "m", "messages": QUESTION, "tools": tools, "tool_choice": choice,
              "temperature": 1.0, "seed": seed, "max_tokens": 200}  # fmt: skip
        if stream:
            _, calls, finish = _reassemble(tiny.chat.completions.create(stream=True, **kw))
            calls = [(c["name"], c["arguments"]) for c in calls]
        else:
            message = tiny.chat.completions.create(**kw).choices[0]
            finish = message.finish_reason
            calls = [(c.function.name, c.function.arguments) for c in message.message.tool_calls or []]
        assert finish == "tool_calls" and calls, f"seed {seed}: no call"
        for name, arguments in calls:
            if isinstance(choice, dict):
                assert name == "get_weather"
            jsonschema.validate(json.loads(arguments), schemas[name])


def test_a_strict_tool_holds_the_models_own_call_to_its_schema(demo):
    """tool_choice "auto" with "strict": true: the demo model still decides to call, and the
    call it writes follows the schema even where the model would write something else (here
    an enum that excludes the expression it wants to compute)."""
    strict = json.loads(json.dumps(CALCULATOR))
    strict["function"]["strict"] = True
    strict["function"]["parameters"]["properties"]["expression"] = {"enum": ["2 + 2", "3 * 3"]}
    kw = {"model": "m", "messages": QUESTION, "temperature": 0, "max_tokens": 64}
    free = demo.chat.completions.create(tools=[CALCULATOR], **kw).choices[0].message.tool_calls
    assert free and json.loads(free[0].function.arguments)["expression"] not in ("2 + 2", "3 * 3")
    held = demo.chat.completions.create(tools=[strict], **kw).choices[0]
    assert held.finish_reason == "tool_calls", held
    assert json.loads(held.message.tool_calls[0].function.arguments)["expression"] in ("2 + 2", "3 * 3")
    with pytest.raises(openai.BadRequestError, match="strict"):
        demo.chat.completions.create(tools=[strict], response_format={"type": "json_object"}, **kw)
