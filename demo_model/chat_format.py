"""The demo model's chat format: ChatML with tools in the Qwen2.5 / Hermes convention.

One format, written twice: as the Jinja `chat_template` that ships in the model folder (so
`tokenizer.apply_chat_template(messages, tools=...)` renders it, as an OpenAI-style server
does) and as `render_chat`, the Python renderer training uses, which also returns the spans
the model learns to write. `tests/demo_model/test_chat_format.py` keeps the two identical.

    <|im_start|>system
    {system text}\n\n{TOOLS_HEADER}<tools>
    {one tool as JSON per line}
    </tools>\n\n{TOOLS_FOOTER}<|im_end|>
    <|im_start|>user
    Use the calculator: what is 12 * 345?<|im_end|>
    <|im_start|>assistant
    <tool_call>{"name": "calculator", "arguments": {"expression": "12 * 345"}}</tool_call><|im_end|>
    <|im_start|>tool
    <tool_response>4140</tool_response><|im_end|>
    <|im_start|>assistant
    12 * 345 = 4140.<|im_end|>
"""

from __future__ import annotations

import json
from typing import Any

from radixlm.runtime.function_call.hermes_prompt import (
    TOOL_CALL_CLOSE,
    TOOL_CALL_OPEN,
    TOOL_RESPONSE_CLOSE,
    TOOL_RESPONSE_OPEN,
    TOOLS_CLOSE,
    TOOLS_FOOTER,
    TOOLS_HEADER,
    TOOLS_OPEN,
    tool_call_text,
    tool_response_text,
    tools_system_prompt,
)

IM_START, IM_END, END_OF_TEXT, PAD = "<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|pad|>"
SPECIAL_TOKENS = (END_OF_TEXT, IM_START, IM_END, PAD)
# single tokens of their own, but ordinary text: they decode into the output a parser reads
TOOL_TOKENS = (
    TOOL_CALL_OPEN,
    TOOL_CALL_CLOSE,
    TOOL_RESPONSE_OPEN,
    TOOL_RESPONSE_CLOSE,
    TOOLS_OPEN,
    TOOLS_CLOSE,
)


def tool_response_turn(result: str) -> str:
    """A tool's result as its own turn: exactly what the chat template renders for
    {"role": "tool", "content": result} (a DSL program writes it with `rl.tool_response`)."""
    return f"{IM_START}tool\n{tool_response_text(result)}{IM_END}\n"


def _assistant_text(message: dict) -> str:
    text = message.get("content") or ""
    for call in message.get("tool_calls") or []:
        function = call.get("function", call)
        text += tool_call_text(function["name"], function["arguments"])
    return text


def render_chat(
    messages: list[dict[str, Any]], tools: list[dict] | None = None, add_generation_prompt: bool = False
) -> tuple[str, list[tuple[int, int]]]:
    """The conversation as text, and the character spans of what the assistant wrote (each
    assistant turn's content and tool calls with its closing <|im_end|>): the tokens a model
    is trained to produce."""
    parts: list[str] = []
    spans: list[tuple[int, int]] = []
    length = 0

    def emit(text: str, learned: bool = False) -> None:
        nonlocal length
        if learned:
            spans.append((length, length + len(text)))
        parts.append(text)
        length += len(text)

    rest = messages
    if messages and messages[0]["role"] == "system":
        system, rest = messages[0]["content"], messages[1:]
    else:
        system = None
    if tools:
        emit(f"{IM_START}system\n{tools_system_prompt(tools, system)}{IM_END}\n")
    elif system is not None:
        emit(f"{IM_START}system\n{system}{IM_END}\n")
    for message in rest:
        role = message["role"]
        if role == "assistant":
            emit(f"{IM_START}assistant\n")
            emit(_assistant_text(message) + IM_END, learned=True)
            emit("\n")
        elif role == "tool":
            emit(tool_response_turn(message["content"]))
        else:
            emit(f"{IM_START}{role}\n{message['content']}{IM_END}\n")
    if add_generation_prompt:
        emit(f"{IM_START}assistant\n")
    return "".join(parts), spans


# The same format in Jinja (transformers renders with trim_blocks and lstrip_blocks; every
# piece here is one line, so neither changes anything). `tojson` in transformers' template
# environment is json.dumps with its default separators, as hermes_prompt.tool_json.
CHAT_TEMPLATE = (
    "{%- set rest = messages -%}{%- set system = none -%}"
    "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{%- set system = messages[0]['content'] -%}{%- set rest = messages[1:] -%}{%- endif -%}"
    "{%- if tools -%}"
    "{{ '<|im_start|>system\\n' }}{%- if system -%}{{ system + '\\n\\n' }}{%- endif -%}"
    "{{ " + json.dumps(TOOLS_HEADER + TOOLS_OPEN) + " }}"
    "{%- for tool in tools -%}{{ '\\n' + (tool | tojson) }}{%- endfor -%}"
    "{{ " + json.dumps("\n" + TOOLS_CLOSE + "\n\n" + TOOLS_FOOTER + IM_END + "\n") + " }}"
    "{%- elif system is not none -%}{{ '<|im_start|>system\\n' + system + '<|im_end|>\\n' }}"
    "{%- endif -%}"
    "{%- for message in rest -%}"
    "{%- if message['role'] == 'assistant' -%}"
    "{{ '<|im_start|>assistant\\n' }}{%- if message['content'] -%}{{ message['content'] }}{%- endif -%}"
    "{%- for call in message['tool_calls'] or [] -%}"
    "{%- set function = call['function'] if call['function'] is defined else call -%}"
    "{{ '<tool_call>{\"name\": ' + (function['name'] | tojson) + ', \"arguments\": ' }}"
    "{%- if function['arguments'] is string -%}{{ function['arguments'] }}"
    "{%- else -%}{{ function['arguments'] | tojson }}{%- endif -%}"
    "{{ '}</tool_call>' }}"
    "{%- endfor -%}"
    "{{ '<|im_end|>\\n' }}"
    "{%- elif message['role'] == 'tool' -%}"
    "{{ '<|im_start|>tool\\n<tool_response>' + message['content'] + '</tool_response><|im_end|>\\n' }}"
    "{%- else -%}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)
