"""parallel_tool_calls against the parser family: hermes and mistral write several calls in a
turn, llama3 (Llama 3.1+ JSON calls) one. Unset means OpenAI's default, which llama3 quietly
turns off; an explicit true it cannot honour is refused by name, and the plan a chat request
gets (tool_serving.plan_tools) forces a single call for it."""

from __future__ import annotations

import re

import pytest

from radixlm.runtime.entrypoints.openai_protocol import ChatCompletionRequest
from radixlm.runtime.entrypoints.tool_serving import plan_tools
from radixlm.runtime.function_call.parsers import PARSERS
from radixlm.runtime.function_call.tool_grammar import SINGLE_CALL_FAMILIES, parallel_calls, tool_call_regex

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"enum": ["Paris", "Oslo"]}}},
        },
    }
]
PARIS = '{"name": "get_weather", "parameters": {"city": "Paris"}}'
LLAMA_TEMPLATE = '<|start_header_id|>{{ tools }} "parameters" <|python_tag|>'  # detect_parser: llama3


def body(**fields) -> ChatCompletionRequest:
    return ChatCompletionRequest(messages=[{"role": "user", "content": "weather?"}], **fields)


@pytest.mark.parametrize("family", sorted(PARSERS))
@pytest.mark.parametrize("requested", [None, False, True])
def test_parallel_calls_follows_the_request_where_the_family_can(family, requested):
    if family in SINGLE_CALL_FAMILIES:
        if requested:
            with pytest.raises(ValueError, match=rf"parallel_tool_calls.*'{family}' tool-call parser"):
                parallel_calls(family, requested)
        else:
            assert parallel_calls(family, requested) is False
    else:
        assert parallel_calls(family, requested) is (requested is not False)


def test_only_llama3_is_a_single_call_family():
    assert SINGLE_CALL_FAMILIES == {"llama3"}
    with pytest.raises(ValueError, match="unknown tool-call parser 'nope'"):
        parallel_calls("nope", None)


@pytest.mark.parametrize(
    "choice", ["auto", "required", {"type": "function", "function": {"name": "get_weather"}}]
)
@pytest.mark.parametrize("configured, template", [("llama3", None), (None, LLAMA_TEMPLATE)])
def test_plan_tools_refuses_parallel_tool_calls_true_for_llama3(choice, configured, template):
    request = body(tools=TOOLS, tool_choice=choice, parallel_tool_calls=True)
    with pytest.raises(ValueError, match=r"parallel_tool_calls is true.*'llama3'"):
        plan_tools(request, template, configured)


@pytest.mark.parametrize("parallel", [None, False])
def test_plan_tools_forces_a_single_llama3_call_when_parallel_is_unset_or_off(parallel):
    plan = plan_tools(body(tools=TOOLS, tool_choice="required", parallel_tool_calls=parallel), None, "llama3")
    assert plan.family == "llama3"
    regex = plan.constraint["regex"]
    assert regex == tool_call_regex(TOOLS, "required", "llama3", parallel=False)
    assert re.fullmatch(regex, PARIS)
    assert not re.fullmatch(regex, f"{PARIS}; {PARIS}")


def test_plan_tools_lets_hermes_and_mistral_call_in_parallel():
    for family in ("hermes", "mistral"):
        for parallel in (None, True):
            plan = plan_tools(
                body(tools=TOOLS, tool_choice="required", parallel_tool_calls=parallel), None, family
            )
            assert plan.constraint["regex"] == tool_call_regex(TOOLS, "required", family, parallel=True)
        plan = plan_tools(body(tools=TOOLS, tool_choice="required", parallel_tool_calls=False), None, family)
        assert plan.constraint["regex"] == tool_call_regex(TOOLS, "required", family, parallel=False)


def test_parallel_tool_calls_true_is_harmless_where_no_tools_are_used():
    # no tools, or tool_choice "none" (the tools are left out): nothing is parsed, nothing refused
    assert plan_tools(body(parallel_tool_calls=True), None, "llama3").family is None
    plan = plan_tools(body(tools=TOOLS, tool_choice="none", parallel_tool_calls=True), None, "llama3")
    assert plan.family is None and plan.constraint == {}
