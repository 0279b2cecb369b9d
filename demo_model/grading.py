"""What counts as a right answer for each task family, shared by every evaluation.

An example becomes one or more `Stage`s: the conversation up to the turn the model writes,
and a check of what it wrote. Tool use has two: the call (exact match with the reference
call) and, given the tool's result, the answer (the number).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from radixlm.demo_model.chat_format import tool_call_text
from radixlm.demo_model.tasks import Example

_INTEGER = re.compile(r"-?\d+")


def last_integer(text: str) -> int | None:
    found = _INTEGER.findall(text)
    return int(found[-1]) if found else None


@dataclass(frozen=True)
class Stage:
    metric: str
    messages: list[dict[str, Any]]  # ends with the turn before the model's answer
    tools: list[dict] | None
    check: Callable[[str], bool]  # the model's answer text (without the end-of-turn token)


def _json_equals(expected: dict) -> Callable[[str], bool]:
    def check(text: str) -> bool:
        try:
            return json.loads(text) == expected
        except ValueError:
            return False

    return check


def stages(example: Example) -> list[Stage]:
    msgs, family, expected = example.messages, example.family, example.expected
    if family == "arithmetic":
        return [Stage("arithmetic", msgs[:-1], None, lambda t: last_integer(t) == expected)]
    if family == "sentiment":
        return [Stage("sentiment", msgs[:-1], None, lambda t: t.strip().lower() == expected)]
    if family == "extraction":
        return [Stage("extraction", msgs[:-1], None, _json_equals(expected))]
    if family == "memory":
        return [Stage("memory", msgs[:-1], None, lambda t: expected in t)]
    if family == "tool_use":
        call = tool_call_text("calculator", {"expression": example.data["expression"]})
        return [
            Stage("tool_call", msgs[:-3], example.tools, lambda t: t.strip() == call),
            Stage("tool_answer", msgs[:-1], example.tools, lambda t: last_integer(t) == expected),
        ]
    raise ValueError(f"no grading for the {family!r} family")


METRICS = ("arithmetic", "sentiment", "extraction", "tool_call", "tool_answer", "memory")
