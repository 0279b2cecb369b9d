"""Reasoning on /v1/chat/completions, with `--reasoning-parser`: the output's `<think>` block
returned apart as `message.reasoning_content` (streamed as `delta.reasoning_content`), tool
calls looked for only in the content after it, and a constraint that waits for it to end.

Where the output starts is read off the rendered prompt (function_call.reasoning): a prompt
ending inside an open think block starts it in reasoning, one ending right after a closed
block (Qwen3 with chat_template_kwargs {"enable_thinking": false}) leaves it none, and
otherwise the parser's family decides. A constrained request (response_format, regex, a forced
tool call) that may reason gets the think-end token id as a sampling parameter, so the
scheduler leaves the reasoning free and applies the grammar after it (constrained/grammar.py,
`ReasoningGate`); where the model chooses whether to think, the think-start id too.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from radixlm.runtime.entrypoints.tool_serving import ToolDeltas, ToolPlan, tool_message
from radixlm.runtime.function_call import (
    Opening,
    ReasoningParser,
    ReasoningStream,
    get_reasoning_parser,
    prompt_reasoning,
)

# apply_chat_template's own arguments, which render() sets: a request may not override them
RESERVED_TEMPLATE_KWARGS = frozenset(
    {
        "conversation",
        "messages",
        "tools",
        "tokenize",
        "add_generation_prompt",
        "continue_final_message",
        "chat_template",
        "return_dict",
        "return_tensors",
        "return_assistant_tokens_mask",
        "tokenizer_kwargs",
        "padding",
        "truncation",
        "max_length",
    }
)


def template_kwargs(body: Any) -> dict[str, Any]:
    """The request's chat_template_kwargs, checked (ValueError names the problem)."""
    kwargs = body.chat_template_kwargs
    if kwargs is None:
        return {}
    if not isinstance(kwargs, dict):
        raise ValueError(f"chat_template_kwargs must be an object, got {type(kwargs).__name__}")
    taken = sorted(RESERVED_TEMPLATE_KWARGS & set(kwargs))
    if taken:
        raise ValueError(f"chat_template_kwargs may not set {', '.join(taken)}: the server sets it")
    return kwargs


@dataclass(frozen=True)
class ReasoningPlan:
    """How one chat request's outputs are read: the parser (None: no --reasoning-parser),
    what the prompt said about the output's start, and whether reasoning is returned apart
    (the request's separate_reasoning)."""

    parser: ReasoningParser | None
    prompt_open: bool | None
    separate: bool

    @property
    def splits(self) -> bool:
        return self.parser is not None and self.separate

    def split(self, text: str) -> tuple[str | None, str]:
        """(reasoning or None, content) of a finished output."""
        if not self.splits:
            return None, text
        return self.parser.parse(text, self.prompt_open)

    def stream(self) -> ReasoningStream | None:
        return self.parser.stream(self.prompt_open) if self.splits else None


def plan_reasoning(parser_name: str | None, prompt: str, separate: bool) -> ReasoningPlan:
    if parser_name is None:
        return ReasoningPlan(None, None, separate)
    parser = get_reasoning_parser(parser_name)
    return ReasoningPlan(parser, prompt_reasoning(prompt, parser), separate)


def single_token_id(tokenizer: Any, text: str) -> int | None:
    """The id of the one token that spells `text`, or None when it takes several."""
    ids = tokenizer.encode(text, add_special_tokens=False)
    return ids[0] if len(ids) == 1 else None


def gate_params(plan: ReasoningPlan, tokenizer: Any, params: dict[str, Any]) -> dict[str, Any]:
    """The sampling parameters that hold the request's constraint back until the reasoning
    ends ({} when it has none, or its output cannot reason). ValueError when the markers are
    not single tokens of this vocabulary: the gate reads sampled token ids."""
    parser = plan.parser
    if parser is None or (params.get("regex") is None and params.get("json_schema") is None):
        return {}
    opening = parser.opening(plan.prompt_open)
    if opening is Opening.CONTENT:
        return {}
    markers = [parser.end] + ([parser.start] if opening is Opening.MODEL_CHOOSES else [])
    ids = [single_token_id(tokenizer, m) for m in markers]
    if None in ids:
        raise ValueError(
            f"reasoning parser {parser.name!r} constrains the output only after its reasoning, which "
            f"needs {' and '.join(markers)} to be single tokens of this model's vocabulary"
        )
    gate = {"reasoning_end_token_id": ids[0]}
    if len(ids) > 1:
        gate["reasoning_start_token_id"] = ids[1]
    return gate


def chat_message(tools: ToolPlan, reasoning: ReasoningPlan, text: str) -> tuple[dict[str, Any], bool]:
    """The response message for a finished output, and whether it holds tool calls: tool
    calls are parsed from the content after the reasoning only."""
    thought, content = reasoning.split(text)
    message, called = tool_message(tools, content)
    if reasoning.splits:
        message["reasoning_content"] = thought
    return message, called


class ChatDeltas:
    """One streamed choice's text deltas as OpenAI chunk deltas: reasoning_content first,
    then content or tool calls (tool_serving.ToolDeltas) from the text after the reasoning."""

    def __init__(self, tools: ToolPlan, reasoning: ReasoningPlan) -> None:
        self.tools = ToolDeltas(tools)
        self.reasoning = reasoning.stream()

    @property
    def made_calls(self) -> bool:
        return self.tools.made_calls

    def feed(self, text: str, final: bool) -> Iterator[dict[str, Any]]:
        if self.reasoning is None:
            yield from self.tools.feed(text, final)
            return
        part = self.reasoning.feed(text) if text else None
        thought = part.reasoning if part else ""
        content = part.content if part else ""
        if final:
            rest = self.reasoning.finish()
            thought, content = thought + rest.reasoning, content + rest.content
        if thought:
            yield {"reasoning_content": thought}
        yield from self.tools.feed(content, final)
