"""Tools in the DSL: a gen offers functions, its value holds the calls the model wrote, and the
program runs them and appends their results.

    TOOLS = [calculator, get_weather]          # Python functions (tool_schema.py), or OpenAI tool dicts

    @rl.function
    def agent(s, question):
        s += rl.system(rl.tools_prompt(TOOLS))   # the tools, listed in the system turn
        s += rl.user(question)
        for step in range(4):
            s += rl.assistant(rl.gen(f"reply{step}", tools=TOOLS))
            calls = s.tool_calls(f"reply{step}")  # the same as s[f"reply{step}"].tool_calls
            if not calls:
                return s[f"reply{step}"]          # no call: the reply is the answer
            for call in calls:
                s += rl.tool_response(rl.run_tool_call(call, TOOLS))

The convention is Hermes / Qwen2.5's, the one the demo model is trained on
(runtime/function_call/hermes_prompt.py): the tools as JSON lines in the system turn, a call
written `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`, a result as the chat
template's tool turn (or, where the template has none, a user turn inside `<tool_response>`).
A gen with tools does not add them to the prompt itself: the program says where they go, so
its prefix stays the same text turn after turn and the radix cache reuses it.

tool_choice: "auto" (the default) generates freely and reads the calls out of the text (what
does not parse as a call to an offered tool stays content); "required", or one tool (its name,
the function itself, or OpenAI's {"type": "function", "function": {"name": ...}}), constrains
the output to calls with a regex built from the parameter schemas, so a finished forced output
always parses and its arguments validate; "none" reads no calls.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from radixlm.lang import ir
from radixlm.runtime.function_call.hermes_prompt import tools_system_prompt
from radixlm.runtime.function_call.parsers import HermesParser
from radixlm.runtime.function_call.tool_grammar import (
    TOOL_CHOICE_MODES,
    ToolChoice,
    check_tool_choice,
    forced_call_constraint,
    validate_tools,
)

Tool = Callable[..., Any] | dict[str, Any]  # a Python function, or an OpenAI tool dict
FAMILY = "hermes"  # the call format tools_prompt asks for, and the one gen reads


@dataclass(frozen=True)
class ToolCall:
    """One call the model wrote: the tool's name and its arguments (a JSON object), parsed and
    as written."""

    name: str
    arguments: dict[str, Any]
    arguments_json: str


class ToolReply(str):
    """The value of `gen(name, tools=...)`: the generated text, as for any gen (so `s[name]`
    is still the text), with the calls read from it (`tool_calls`) and the text outside them
    (`content`)."""

    content: str
    tool_calls: list[ToolCall]

    def __new__(cls, text: str, content: str, tool_calls: list[ToolCall]) -> ToolReply:
        reply = super().__new__(cls, text)
        reply.content = content
        reply.tool_calls = list(tool_calls)
        return reply

    def __reduce__(self) -> tuple:  # pickles (and copies) with its calls
        return (ToolReply, (str(self), self.content, self.tool_calls))


class ToolSet:
    """Tools as one gen offers them: the checked OpenAI specs, and the functions behind them."""

    def __init__(self, tools: Sequence[Tool]) -> None:
        if isinstance(tools, (str, bytes, dict)) or not isinstance(tools, Sequence):
            raise TypeError(
                f"tools must be a list of Python functions or OpenAI tool dicts, got {type(tools).__name__}"
            )
        from radixlm.lang.tool_schema import function_tool  # pydantic only loads for function tools

        specs: list[dict[str, Any]] = []
        self.functions: dict[str, Any] = {}  # name -> FunctionTool
        for tool in tools:
            if isinstance(tool, dict):
                specs.append(tool)
            else:
                described = function_tool(tool)
                specs.append(described.spec)
                self.functions.setdefault(described.name, described)
        self.specs = validate_tools(specs)  # also refuses two tools of one name
        self.names = [spec["function"]["name"] for spec in self.specs]

    def choice(self, tool_choice: Any) -> ToolChoice:
        """tool_choice checked against these tools; a tool's name or its function names it."""
        if callable(tool_choice):
            from radixlm.lang.tool_schema import function_tool

            tool_choice = function_tool(tool_choice).name
        if isinstance(tool_choice, str) and tool_choice not in TOOL_CHOICE_MODES:
            tool_choice = {"type": "function", "function": {"name": tool_choice}}
        return check_tool_choice(tool_choice, self.specs)


@dataclass(frozen=True, eq=False)
class GenTools:
    """What a gen with tools carries to the interpreter: the tools, the choice, and the
    constraint that forces a call ({"regex": ...} or {"grammar": ...}; empty unless the choice
    forces one: tool_grammar.forced_call_constraint)."""

    tools: ToolSet
    choice: ToolChoice
    constraint: dict[str, str]

    def reply(self, text: str) -> ToolReply:
        if self.choice.mode == "none":
            return ToolReply(text, text, [])
        content, parsed = HermesParser(self.tools.names).parse(text)
        calls = [ToolCall(c.name, json.loads(c.arguments), c.arguments) for c in parsed]
        return ToolReply(text, content, calls)


def gen_tools(
    tools: Sequence[Tool] | None, tool_choice: Any, parallel_tool_calls: bool | None, constrained: bool
) -> GenTools | None:
    """A gen's tools (None without), checked now, so a bad tool fails where the program writes
    the gen. `constrained`: the gen also has choices, a regex, a JSON schema or a dtype."""
    if tools is None:
        if tool_choice is not None or parallel_tool_calls is not None:
            raise ValueError("tool_choice and parallel_tool_calls need tools=[...]")
        return None
    if constrained:
        raise ValueError("tools cannot be combined with choices, regex, json_schema or dtype")
    toolset = ToolSet(tools)
    choice = toolset.choice(tool_choice)
    constraint: dict[str, str] = {}
    if choice.forces_call:
        specs = json.dumps(toolset.specs, sort_keys=True)
        constraint = dict(_forcing_constraint(specs, choice, parallel_tool_calls is not False))
    return GenTools(toolset, choice, constraint)


@functools.lru_cache(maxsize=256)  # a tool loop forces the same call shape turn after turn
def _forcing_constraint(specs_json: str, choice: ToolChoice, parallel: bool) -> tuple[tuple[str, str], ...]:
    return tuple(forced_call_constraint(json.loads(specs_json), choice, FAMILY, parallel).items())


# ---------------------------------------------------------------------------------------- helpers
def tool_spec(tool: Tool) -> dict[str, Any]:
    """The OpenAI tool dict of a function (or a tool dict, checked): what tools_prompt lists."""
    return ToolSet([tool]).specs[0]


def tools_prompt(tools: Sequence[Tool], system: str | None = None) -> str:
    """The system turn's text that offers `tools` (after your own `system` text, if any):
    `s += rl.system(rl.tools_prompt(TOOLS, "You are a helpful assistant."))`."""
    return tools_system_prompt(ToolSet(tools).specs, system)


def tool_response(result: str) -> ir.ExprList:
    """A tool's result as its own turn, in the backend's chat template: the template's tool
    turn where it has one, else a user turn inside <tool_response></tool_response>."""
    if not isinstance(result, str):
        raise TypeError(f"tool_response takes the result as text, got {type(result).__name__}")
    return ir.ExprList([ir.RoleBegin("tool"), ir.Constant(result), ir.RoleEnd("tool")])


def run_tool_call(call: ToolCall, tools: Sequence[Tool]) -> str:
    """Run a call against the Python functions in `tools`, its arguments checked with the model
    the schema came from. Returns the result as text (a str as is, anything else as JSON), or
    an error text starting "error: " that the model can read and act on: an unknown tool, bad
    arguments, or any exception the function raised. A call to an OpenAI tool dict, which has
    no function here, is the program's mistake: ValueError."""
    from radixlm.lang.tool_schema import ToolArgumentError

    toolset = ToolSet(tools)
    tool = toolset.functions.get(call.name)
    if tool is None:
        if call.name in toolset.names:
            raise ValueError(f"tool {call.name!r} is an OpenAI tool dict: there is no Python function to run")
        return f"error: no tool named {call.name[:40]!r}; the tools are {', '.join(toolset.functions)}"
    try:
        positional, keyword = tool.bind(call.arguments)
    except ToolArgumentError as exc:
        return f"error: {exc}"
    try:
        result = tool.function(*positional, **keyword)
    except Exception as exc:  # the model reads what went wrong instead of the program ending
        return f"error: {exc}" if str(exc) else f"error: {call.name} raised {type(exc).__name__}"
    if isinstance(result, str):
        return result
    import pydantic_core

    return json.dumps(pydantic_core.to_jsonable_python(result, fallback=str), ensure_ascii=False)
