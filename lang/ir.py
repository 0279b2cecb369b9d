"""Expression nodes of a prompt program. `s += expr` queues one of these on a state.

Adding expressions (or strings) gives a flat `ExprList`; nothing here runs anything.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

# Built-in regexes for gen(dtype=...): the value stays a string the caller converts.
REGEX_INT = r"[-+]?[0-9]+"
REGEX_FLOAT = r"[-+]?[0-9]*\.?[0-9]+"
REGEX_BOOL = r"(True|False)"
REGEX_STR = r"\"[\w\d\s]*\""

# gen() keyword -> runtime sampling parameter
SAMPLING_KEYS = {
    "max_tokens": "max_new_tokens",
    "min_tokens": "min_new_tokens",
    "n": "n",
    "stop": "stop",
    "stop_token_ids": "stop_token_ids",
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "min_p": "min_p",
    "frequency_penalty": "frequency_penalty",
    "presence_penalty": "presence_penalty",
    "repetition_penalty": "repetition_penalty",
    "ignore_eos": "ignore_eos",
    "regex": "regex",
    "json_schema": "json_schema",
    "ebnf": "ebnf",
    "grammar": "grammar",
}
LOGPROB_KEYS = ("return_logprob", "logprob_start_len", "top_logprobs_num")


class Expr:
    def __add__(self, other: Any) -> ExprList:
        return ExprList([self, _as_expr(other)])

    def __radd__(self, other: Any) -> ExprList:
        return ExprList([_as_expr(other), self])


def _as_expr(value: Any) -> Expr:
    if isinstance(value, Expr):
        return value
    if isinstance(value, str):
        return Constant(value)
    raise TypeError(
        f"can only append strings and expressions to a program, got {type(value).__name__}; use str(value)"
    )


@dataclass(eq=False)
class ExprList(Expr):
    items: list[Expr]

    def __post_init__(self) -> None:
        flat: list[Expr] = []
        for item in self.items:
            flat.extend(item.items if isinstance(item, ExprList) else [item])
        self.items = flat


@dataclass(eq=False)
class Constant(Expr):
    text: str


@dataclass(eq=False)
class Gen(Expr):
    name: str | None
    params: dict[str, Any] = field(default_factory=dict)  # only the keywords given (override run defaults)
    logprob: dict[str, Any] = field(default_factory=dict)
    dtype: Any = None
    tools: Any = None  # a GenTools (lang/tools.py): the value is then a ToolReply


@dataclass(eq=False)
class Select(Expr):
    name: str | None
    choices: list[str]
    temperature: float = 0.0
    method: Any = None


@dataclass(eq=False)
class RoleBegin(Expr):
    role: str


@dataclass(eq=False)
class RoleEnd(Expr):
    role: str


@dataclass(eq=False)
class VarScopeBegin(Expr):
    name: str


@dataclass(eq=False)
class VarScopeEnd(Expr):
    name: str


def dtype_regex(dtype: Any) -> tuple[str, list[str]]:
    """(regex, extra stop strings) for gen(dtype=...)."""
    key = dtype.__name__ if isinstance(dtype, type) else str(dtype)
    table = {
        "int": (REGEX_INT, [" ", "\n"]),
        "float": (REGEX_FLOAT, [" ", "\n"]),
        "bool": (REGEX_BOOL, []),
        "str": (REGEX_STR, []),
    }
    if key not in table:
        raise ValueError(f"dtype must be int, float, bool or str, got {dtype!r}")
    return table[key]


def check_regex(pattern: str) -> None:
    try:
        re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"invalid regex {pattern!r}: {exc}") from None
