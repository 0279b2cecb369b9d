"""Symbolic execution that finds a program's constant prefix (for `.trace()` / `.cache()`).

The program runs against a recording state with placeholder arguments. Text is recorded
until the first thing that is not a constant: a gen/select, a placeholder argument, a
read of a variable, a fork. Role markers are rendered with the chat template.
"""

from __future__ import annotations

from typing import Any

from radixlm.lang import ir
from radixlm.lang.chat_template import ChatTemplate


class _StopTrace(Exception):
    pass


class SymbolicArgument(ir.Expr):
    """An argument whose value is unknown while tracing."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __format__(self, spec: str) -> str:
        raise _StopTrace()

    def __str__(self) -> str:
        raise _StopTrace()

    def __getattr__(self, item: str) -> Any:
        raise _StopTrace()

    def __getitem__(self, item: Any) -> Any:
        raise _StopTrace()

    def __iter__(self):
        raise _StopTrace()


class TracerState:
    def __init__(self, template: ChatTemplate) -> None:
        self.template = template
        self.text = ""
        self.messages: list[dict] = []
        self.role: tuple[str, int, str] | None = None

    def __iadd__(self, other: Any) -> TracerState:
        expr = ir._as_expr(other)
        for item in expr.items if isinstance(expr, ir.ExprList) else [expr]:
            self._record(item)
        return self

    def _record(self, item: ir.Expr) -> None:
        if isinstance(item, ir.Constant):
            self.text += item.text
        elif isinstance(item, ir.RoleBegin):
            if (
                not self.messages
                and item.role != "system"
                and self.template.default_system_prompt is not None
            ):
                self._record(ir.RoleBegin("system"))
                self.text += self.template.default_system_prompt
                self._record(ir.RoleEnd("system"))
            prefix, suffix = self.template.get_prefix_and_suffix(item.role, self.messages)
            self.text += prefix
            self.role = (item.role, len(self.text), suffix)
        elif isinstance(item, ir.RoleEnd) and self.role is not None:
            role, start, suffix = self.role
            self.messages.append({"role": role, "content": self.text[start:].lstrip()})
            self.text += suffix
            self.role = None
        else:
            raise _StopTrace()

    def __getitem__(self, name: str) -> Any:
        raise _StopTrace()

    def __getattr__(self, name: str) -> Any:
        # fork, text, var_scope, roles as methods...: anything else ends the constant prefix
        raise _StopTrace()


def trace_prefix(function: Any, template: ChatTemplate) -> str:
    state = TracerState(template)
    kwargs = {name: SymbolicArgument(name) for name in function.arg_names}
    kwargs.update(function.bind_arguments)
    try:
        function.func(state, **kwargs)
    except _StopTrace:
        pass
    except Exception:  # the body did something with a placeholder that we cannot follow
        pass
    return state.text
