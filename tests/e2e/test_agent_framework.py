"""An agent framework's own tool-calling client against `radixlm serve`: LangChain's `ChatOpenAI`
(langchain-openai) with a LangChain `@tool` bound by `bind_tools`, on the trained demo model.
The framework sends the tool, parses the model's call into its own `tool_calls`, runs the tool
(`calculator.invoke(call)` gives the `ToolMessage`) and sends the result back; the model then
answers with the number. Whole responses and streamed ones (LangChain adds the chunks up and
parses the streamed tool-call deltas itself). Nothing here goes through radixlm's own client."""

from __future__ import annotations

from typing import Annotated

import pytest
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.tools import tool
from langchain_core.utils.function_calling import convert_to_openai_tool
from langchain_openai import ChatOpenAI
from server_process import ServerProcess, wait_idle_and_kv_free

from radixlm.demo_model import demo_model_path, tasks


@tool
def calculator(expression: Annotated[str, "for example 12 * 34"]) -> str:
    """Evaluate an arithmetic expression and return the result."""
    a, op, b = expression.split()  # the demo model's calls are "A * B"
    assert op == "*", expression
    return str(int(a) * int(b))


@pytest.fixture(scope="module")
def server():
    srv = ServerProcess(demo_model_path()).start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def llm(server):
    chat = ChatOpenAI(
        base_url=f"{server.url}/v1", api_key="x", model="demo", temperature=0, max_retries=0, timeout=120
    )
    return chat.bind_tools([calculator])


def _ask(llm, messages: list, stream: bool) -> AIMessage:
    if not stream:
        return llm.invoke(messages)
    chunks = list(llm.stream(messages))
    assert len(chunks) > 1
    message = chunks[0]
    for chunk in chunks[1:]:
        message += chunk  # LangChain's own merge of content and tool-call deltas
    return message


def test_the_framework_sends_the_tool_the_demo_model_was_trained_on():
    assert convert_to_openai_tool(calculator) == tasks.CALCULATOR_TOOL


@pytest.mark.parametrize(
    ("a", "b", "stream"), [(1234, 5678, False), (86, 4217, True)], ids=["whole", "streamed"]
)
def test_two_step_tool_loop(llm, server, a, b, stream):
    messages = [HumanMessage(f"Use the calculator: what is {a} * {b}?")]
    first = _ask(llm, messages, stream)
    assert first.response_metadata["finish_reason"] == "tool_calls"
    assert not first.content and not first.invalid_tool_calls
    [call] = first.tool_calls
    assert call["name"] == "calculator"
    assert call["args"] == {"expression": f"{a} * {b}"}
    assert call["id"].startswith("call_")

    result = calculator.invoke(call)  # a ToolCall in, a ToolMessage answering it out
    assert isinstance(result, ToolMessage) and result.tool_call_id == call["id"]
    assert result.content == str(a * b)
    messages += [first, result]

    final = _ask(llm, messages, stream)
    assert final.response_metadata["finish_reason"] == "stop"
    assert not final.tool_calls
    assert str(a * b) in final.content, final.content
    wait_idle_and_kv_free(server)
