"""The Hermes / Qwen2.5 tool convention as text: the system block that lists the tools, a call,
a result. The demo model is trained on exactly these strings (demo_model/chat_format.py uses
them), and /v1/chat/completions renders them for a model whose chat template has no tool
support (tool_serving.py's documented fallback).

    # Tools ... <tools>
    {"type": "function", "function": {...}}          one tool as JSON per line
    </tools> ... <tool_call>{"name": ..., "arguments": {...}}</tool_call> ...
"""

from __future__ import annotations

import json

TOOL_CALL_OPEN, TOOL_CALL_CLOSE = "<tool_call>", "</tool_call>"
TOOL_RESPONSE_OPEN, TOOL_RESPONSE_CLOSE = "<tool_response>", "</tool_response>"
TOOLS_OPEN, TOOLS_CLOSE = "<tools>", "</tools>"
TOOLS_HEADER = (
    "# Tools\n\nYou may call the functions described inside <tools></tools>, one JSON object per line:\n"
)
TOOLS_FOOTER = (
    'To call one, answer with <tool_call>{"name": <function name>, "arguments": <arguments as a JSON '
    "object>}</tool_call>. Its result comes back inside <tool_response></tool_response>."
)


def tool_json(tool: dict) -> str:
    """A tool as the template's `tojson` writes it (json.dumps defaults, non-ASCII kept)."""
    return json.dumps(tool, ensure_ascii=False)


def tools_system_prompt(tools: list[dict], system: str | None = None) -> str:
    """The system turn's text when `tools` are offered (after the user's own system text)."""
    lines = "".join("\n" + tool_json(tool) for tool in tools)
    block = f"{TOOLS_HEADER}{TOOLS_OPEN}{lines}\n{TOOLS_CLOSE}\n\n{TOOLS_FOOTER}"
    return f"{system}\n\n{block}" if system else block


def tool_call_text(name: str, arguments: dict | str) -> str:
    """One call as the model writes it. `arguments` as a dict, or as the JSON text an OpenAI
    client sends back (kept verbatim)."""
    args = arguments if isinstance(arguments, str) else tool_json(arguments)
    quoted = json.dumps(name, ensure_ascii=False)
    return f'{TOOL_CALL_OPEN}{{"name": {quoted}, "arguments": {args}}}{TOOL_CALL_CLOSE}'


def tool_response_text(result: str) -> str:
    return f"{TOOL_RESPONSE_OPEN}{result}{TOOL_RESPONSE_CLOSE}"
