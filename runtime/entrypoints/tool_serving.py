"""Tool calling on /v1/chat/completions: the request's tools checked, the conversation rendered
with them, a forced call turned into a grammar, and the output turned back into OpenAI's
`message.tool_calls` (whole, or as streamed deltas).

The parser family is `--tool-call-parser` when given, else detected from the chat template
(runtime/function_call), else Hermes. A model whose chat template ignores `tools` gets the
documented fallback in the Hermes / Qwen2.5 convention: the tools listed in the system turn
(hermes_prompt.tools_system_prompt), earlier calls written as `<tool_call>...</tool_call>` in
the assistant turns, results as user turns inside `<tool_response></tool_response>`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from radixlm.runtime.function_call import (
    ContentDelta,
    ToolCallStream,
    ToolChoice,
    check_tool_choice,
    detect_parser,
    forced_call_constraint,
    get_parser,
    new_call_id,
    parallel_calls,
    strict_tool_tag,
    validate_tools,
)
from radixlm.runtime.function_call.hermes_prompt import (
    tool_call_text,
    tool_response_text,
    tools_system_prompt,
)


@dataclass(frozen=True)
class ToolPlan:
    """What a chat request asks of tools: the checked tools (None: none offered), the
    choice, the parser family reading the output (None: no parsing) and the constraint a
    forced call adds to the sampling parameters."""

    tools: list[dict[str, Any]] | None
    choice: ToolChoice
    family: str | None
    constraint: dict[str, str]

    def parser(self):
        names = [tool["function"]["name"] for tool in self.tools or []]
        return get_parser(self.family)(names)


def plan_tools(body: Any, chat_template: str | None, configured_family: str | None) -> ToolPlan:
    """The request's tools, tool_choice and parallel_tool_calls, checked (ValueError names the
    problem)."""
    tools = validate_tools(body.tools) if body.tools is not None else None
    choice = check_tool_choice(body.tool_choice, tools)
    if not tools or choice.mode == "none":
        # "none": the tools are left out of the prompt too (as vLLM's
        # --exclude-tools-when-tool-choice-none), since a model shown tools may well call them
        return ToolPlan(None, choice, None, {})
    family = configured_family or detect_parser(chat_template) or "hermes"
    # llama3 writes one call per turn: an explicit parallel_tool_calls true is refused, unset is off
    parallel = parallel_calls(family, body.parallel_tool_calls)
    constraint: dict[str, str] = {}
    if choice.forces_call:
        if body.constraint():
            raise ValueError(
                f'tool_choice "{choice.mode}" is itself a constraint on the output; '
                "it cannot be combined with response_format, regex or json_schema"
            )
        constraint = forced_call_constraint(tools, choice, family, parallel)
    elif (tag := strict_tool_tag(tools, family)) is not None:
        if body.constraint():
            raise ValueError(
                'tools marked "strict" hold their calls to their schemas, itself a constraint on the '
                "output; it cannot be combined with response_format, regex or json_schema"
            )
        constraint = {"structural_tag": tag}
    return ToolPlan(tools, choice, family, constraint)


def template_messages(body: Any) -> list[dict[str, Any]]:
    """The conversation as chat-template messages: an assistant's tool_calls with their
    arguments parsed (templates write them with `tojson`), a tool message checked against
    the calls before it (ValueError names the message)."""
    messages: list[dict[str, Any]] = []
    call_ids: set[str] = set()
    for i, m in enumerate(body.messages):
        out: dict[str, Any] = {"role": m.role, "content": m.text()}
        if m.role == "assistant" and m.tool_calls:
            calls = []
            for j, call in enumerate(m.tool_calls):
                where = f"messages[{i}].tool_calls[{j}]"
                try:
                    arguments = json.loads(call.function.arguments)
                except ValueError:
                    raise ValueError(f"{where}.function.arguments is not JSON text") from None
                if not isinstance(arguments, dict):
                    raise ValueError(f"{where}.function.arguments must be a JSON object")
                call_ids.add(call.id)
                calls.append({"id": call.id, "type": "function",
                              "function": {"name": call.function.name, "arguments": arguments}})  # fmt: skip
            out["tool_calls"] = calls
        elif m.role == "tool":
            if not m.tool_call_id:
                raise ValueError(f"messages[{i}] is a tool message without tool_call_id")
            if m.tool_call_id not in call_ids:
                raise ValueError(
                    f"messages[{i}].tool_call_id {m.tool_call_id!r} answers no tool call of an earlier "
                    "assistant message"
                )
            out["tool_call_id"] = m.tool_call_id
            if m.name:
                out["name"] = m.name
        messages.append(out)
    return messages


def render(
    tokenizer: Any,
    messages: list[dict[str, Any]],
    tools: list[dict] | None,
    template_kwargs: dict[str, Any] | None = None,
) -> str:
    """The prompt text: the model's own template with `tools=`, or the Hermes fallback when
    the template does not use them. `template_kwargs`: the request's chat_template_kwargs
    (enable_thinking...), variables every rendering sees."""

    def apply(msgs: list[dict[str, Any]], **kw: Any) -> str:
        return tokenizer.apply_chat_template(
            msgs, tokenize=False, add_generation_prompt=True, **(template_kwargs or {}), **kw
        )

    if not tools:
        return apply(messages)
    with_tools = apply(messages, tools=tools)
    if with_tools != apply(messages):  # the template writes the tools itself
        return with_tools
    return apply(_fallback(messages, tools))


def _fallback(messages: list[dict[str, Any]], tools: list[dict]) -> list[dict[str, Any]]:
    """Messages any plain template renders: tools in the system turn, calls and results as text."""
    out: list[dict[str, Any]] = []
    for m in messages:
        if m["role"] == "assistant" and m.get("tool_calls"):
            functions = [c["function"] for c in m["tool_calls"]]
            calls = "".join(tool_call_text(f["name"], f["arguments"]) for f in functions)
            out.append({"role": "assistant", "content": m["content"] + calls})
        elif m["role"] == "tool":
            out.append({"role": "user", "content": tool_response_text(m["content"])})
        else:
            out.append({"role": m["role"], "content": m["content"]})
    if out and out[0]["role"] == "system":
        return [{"role": "system", "content": tools_system_prompt(tools, out[0]["content"])}, *out[1:]]
    return [{"role": "system", "content": tools_system_prompt(tools)}, *out]


def tool_message(plan: ToolPlan, text: str) -> tuple[dict[str, Any], bool]:
    """The response message for a finished output, and whether it holds tool calls."""
    if plan.family is None:
        return {"role": "assistant", "content": text}, False
    content, calls = plan.parser().parse(text)
    if not calls:
        return {"role": "assistant", "content": text}, False
    tool_calls = [
        {"id": new_call_id(), "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
        for c in calls
    ]
    return {"role": "assistant", "content": content or None, "tool_calls": tool_calls}, True


class ToolDeltas:
    """One streamed choice's text deltas as OpenAI chunk deltas: content, or tool calls once
    they parse (a partial `<tool_call>` marker never reaches `content`)."""

    def __init__(self, plan: ToolPlan) -> None:
        self.stream = ToolCallStream(plan.parser()) if plan.family is not None else None

    @property
    def made_calls(self) -> bool:
        return self.stream is not None and self.stream.calls_emitted > 0

    def feed(self, text: str, final: bool) -> Iterator[dict[str, Any]]:
        if self.stream is None:
            if text:
                yield {"content": text}
            return
        events = self.stream.feed(text) if text else []
        if final:
            events += self.stream.finish()
        for event in events:
            if isinstance(event, ContentDelta):
                if event.text:
                    yield {"content": event.text}
            else:
                yield {"tool_calls": [event.to_openai()]}
