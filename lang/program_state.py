"""The user's handle on a running program: `ProgramState` (`s += expr`, `s["v"]`, `s.text()`,
`s.messages()`, `s.tool_calls("v")`, roles, `text_iter`, `fork`) and `ProgramStateGroup` (a
fork's children, with broadcast `+=` and `join`).

`s += expr` only queues on the state's `StateExecutor` (interpreter.py); reading (`s["v"]`,
`s.text()`, `s.fork()`...) waits for what it needs. Concurrency comes from forks and
`run_batch`; the runtime batches their requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

from radixlm.lang import cache_report as _cache_report
from radixlm.lang import ir
from radixlm.lang.interpreter import ProgramError, StateExecutor
from radixlm.lang.tools import ToolCall, ToolReply


def _incremental_meta(meta: Any, sent: int) -> tuple[Any, int]:
    """(meta with the output logprob lists cut to the entries after `sent`, the new count)."""
    if not isinstance(meta, dict) or meta.get("output_token_logprobs") is None:
        return meta, sent
    total = len(meta["output_token_logprobs"])
    meta = dict(
        meta, output_token_logprobs=meta["output_token_logprobs"][sent:], output_token_logprobs_length=total
    )
    if meta.get("output_top_logprobs") is not None:
        meta["output_top_logprobs"] = meta["output_top_logprobs"][sent:]
    return meta, total


class ProgramState:
    """What a program function gets as `s`: appends queue on the executor, reads wait for it."""

    def __init__(self, executor: StateExecutor) -> None:
        self.stream_executor = executor
        self.ret_value: Any = None

    # ------------------------------------------------------------------ appending and reading
    def __iadd__(self, other: Any) -> ProgramState:
        if other is None:
            raise ValueError("tried to append None to a program state")
        self.stream_executor.submit(ir._as_expr(other))
        return self

    def __getitem__(self, name: str) -> Any:
        return self.stream_executor.get_var(name)

    def get_var(self, name: str) -> Any:
        return self.stream_executor.get_var(name)

    def __setitem__(self, name: str, value: Any) -> None:
        self.set_var(name, value)

    def set_var(self, name: str, value: Any) -> None:
        """Set a variable now (not queued): later reads and forks see it."""
        self.stream_executor.variables[name] = value

    def __contains__(self, name: str) -> bool:
        return name in self.stream_executor.variables

    def tool_calls(self, name: str) -> list[ToolCall]:
        """The calls read from `gen(name, tools=...)` (its value's `.tool_calls`; [] for none)."""
        value = self.get_var(name)
        if isinstance(value, list):
            raise ValueError(f"{name!r} holds {len(value)} samples (n > 1): read s[{name!r}][i].tool_calls")
        if not isinstance(value, ToolReply):
            raise ValueError(f"{name!r} was not generated with tools=[...], so it has no tool calls")
        return value.tool_calls

    def get_meta_info(self, name: str) -> Any:
        self.stream_executor.get_var(name)
        return self.stream_executor.meta_info.get(name)

    def text(self) -> str:
        self.sync()
        return self.stream_executor.text_

    def messages(self) -> list[dict]:
        self.sync()
        return [dict(m) for m in self.stream_executor.messages_]

    def sync(self) -> None:
        self.stream_executor.sync()

    def error(self) -> BaseException | None:
        self.sync()
        return self.stream_executor.error_

    def cache_report(self, print_table: bool = True) -> list[_cache_report.CacheReportRow]:
        """Each gen/select this state ran (and its joined forks'), with its prompt tokens, the
        tokens reused from the radix cache and where its prompt left the cached prefix;
        printed as a table unless `print_table` is False (lang/cache_report.py)."""
        self.sync()
        ex = self.stream_executor
        return _cache_report.cache_report(list(ex.calls), ex.backend, print_table)

    def __repr__(self) -> str:
        return f"ProgramState({self.text()!r})"

    # ------------------------------------------------------------------ roles and scopes
    def _role(self, role: str, expr: Any) -> Any:
        """`s.user(x)` appends the turn itself and returns an empty expression, so SGLang code
        that also writes `s += s.user(x)` gets the turn once, not twice. Without an
        argument: a context manager (`with s.user(): ...`)."""
        if expr is None:
            return self._role_block(role)
        self += ir.RoleBegin(role) + ir._as_expr(expr) + ir.RoleEnd(role)
        return ir.ExprList([])

    @contextlib.contextmanager
    def _role_block(self, role: str) -> Iterator[None]:
        self += ir.RoleBegin(role)
        yield
        self += ir.RoleEnd(role)

    def system(self, expr: Any = None) -> Any:
        return self._role("system", expr)

    def user(self, expr: Any = None) -> Any:
        return self._role("user", expr)

    def assistant(self, expr: Any = None) -> Any:
        return self._role("assistant", expr)

    @contextlib.contextmanager
    def var_scope(self, name: str) -> Iterator[None]:
        self += ir.VarScopeBegin(name)
        yield
        self += ir.VarScopeEnd(name)

    # ------------------------------------------------------------------ fork / join
    def fork(self, size: int = 1) -> ProgramStateGroup:
        """`size` children that start from this state's text, messages and variables."""
        if size < 1:
            raise ValueError(f"fork size must be >= 1, got {size}")
        ex = self.stream_executor
        if size > 1:
            # prefill the shared prefix once, so the children hit the cache instead of racing
            ex.submit_call(lambda: ex.text_ and ex.backend.cache_prefix(ex.text_))
        self.sync()
        if ex.error_ is not None:
            raise ProgramError(f"cannot fork a failed state: {ex.error_}") from ex.error_
        children = [
            ProgramState(StateExecutor(ex.backend, ex.chat_template, ex.defaults, ex.stream, parent=ex))
            for _ in range(size)
        ]
        return ProgramStateGroup(children, self)

    @contextlib.contextmanager
    def copy(self) -> Iterator[ProgramState]:
        """`with s.copy() as c:` a one-child fork, joined (its new variables gathered) on exit."""
        group = self.fork(1)
        yield group[0]
        group.join()

    # ------------------------------------------------------------------ streaming
    def text_iter(self, var_name: str | None = None) -> Iterator[str]:
        """Stream mode: the text (or one variable) as it grows. Otherwise: yields it once."""
        ex = self.stream_executor
        if not ex.stream:
            yield self.get_var(var_name) if var_name else self.text()
            return
        if var_name is not None:
            yield from self._var_iter(var_name)
            return
        pos = 0
        while True:
            with ex.changed:
                # the predicate only runs inside this wait_for, so it sees this iteration's `pos`
                ex.changed.wait_for(
                    lambda: len(ex.text_) > pos or ex.finished.is_set(),  # noqa: B023
                    timeout=0.1,
                )
                chunk, done = ex.text_[pos:], ex.finished.is_set()
            pos += len(chunk)
            if chunk:
                yield chunk
            if done and pos >= len(ex.text_):
                return

    def _var_iter(self, name: str, with_meta: bool = False) -> Iterator[Any]:
        """A variable's new text as it grows; with_meta: (text, meta) pairs, where the meta's
        output logprob lists hold only the entries new since the previous pair."""
        ex = self.stream_executor
        pos = sent = 0
        while True:
            with ex.changed:
                # as in text_iter: the predicate only runs inside this wait_for
                ex.changed.wait_for(
                    lambda: (
                        len(ex.variables.get(name) or "") > pos  # noqa: B023
                        or ex.events.get(name, threading.Event()).is_set()
                        or ex.finished.is_set()
                    ),
                    timeout=0.1,
                )
                value = ex.variables.get(name) or ""
                meta = ex.meta_info.get(name)
                done = ex.events[name].is_set() if name in ex.events else ex.finished.is_set()
            if len(value) > pos:
                chunk, pos = value[pos:], len(value)
                if with_meta:
                    meta, sent = _incremental_meta(meta, sent)
                    yield chunk, meta
                else:
                    yield chunk
            if done:
                if name in ex.failed:
                    self.get_var(name)  # raises ProgramError naming the cause
                return

    async def text_async_iter(
        self, var_name: str | None = None, return_meta_data: bool = False
    ) -> AsyncIterator[Any]:
        """`text_iter` for asyncio. With `return_meta_data` (needs var_name), yields
        (chunk, meta): meta is the variable's meta so far, except that `output_token_logprobs`
        and `output_top_logprobs` hold only the tokens new in this chunk, and
        `output_token_logprobs_length` counts all of them so far."""
        if return_meta_data and var_name is None:
            raise ValueError("return_meta_data needs var_name: meta belongs to one gen")
        loop = asyncio.get_running_loop()
        if not self.stream_executor.stream:
            iterator: Iterator[Any] = iter(
                [(self.get_var(var_name), _incremental_meta(self.get_meta_info(var_name), 0)[0])]
                if return_meta_data
                else self.text_iter(var_name)
            )
        else:
            iterator = self._var_iter(var_name, return_meta_data) if var_name else self.text_iter()
        end = object()
        while True:
            item = await loop.run_in_executor(None, next, iterator, end)
            if item is end:
                return
            yield item


class ProgramStateGroup:
    """The children of one `fork`, with broadcast `+=` and `join` back into the parent."""

    def __init__(self, states: list[ProgramState], parent: ProgramState) -> None:
        self.states = states
        self.parent = parent
        self._parent_vars = set(parent.stream_executor.variables)
        self._calls_joined = False

    def __getitem__(self, i: int) -> ProgramState:
        return self.states[i]

    def __setitem__(self, i: int, value: ProgramState) -> None:
        if value is not self.states[i]:
            raise ValueError("a fork's states cannot be replaced")

    def __len__(self) -> int:
        return len(self.states)

    def __iter__(self) -> Iterator[ProgramState]:
        return iter(self.states)

    def __iadd__(self, other: Any) -> ProgramStateGroup:
        """Broadcast: a callable gives each child other(i); a list gives child i other[i];
        an expression or string goes to every child."""
        if callable(other) and not isinstance(other, ir.Expr):
            for i, state in enumerate(self.states):
                state += other(i)
        elif isinstance(other, (list, tuple)):
            if len(other) != len(self.states):
                raise ValueError(f"{len(other)} values for {len(self.states)} forks")
            for state, value in zip(self.states, other):
                state += value
        else:
            for state in self.states:
                state += other
        return self

    def join(self, mode: str = "gather_variable") -> None:
        for state in self.states:
            state.sync()
        parent = self.parent
        if mode == "gather_variable":
            names: list[str] = []
            for state in self.states:
                for name in state.stream_executor.variables:
                    if name not in self._parent_vars and name not in names:
                        names.append(name)
            for name in names:
                parent.stream_executor.variables[name] = [
                    s.stream_executor.variables.get(name) for s in self.states
                ]
        elif mode == "concate_and_append":
            for state in self.states:
                ex = state.stream_executor
                parent += ex.text_[ex.fork_start :]
        else:
            raise ValueError(f"join mode must be 'gather_variable' or 'concate_and_append', got {mode!r}")
        if not self._calls_joined:  # the children's calls join the parent's cache report once
            self._calls_joined = True
            for i, state in enumerate(self.states):
                parent.stream_executor.calls.extend(rec.in_fork(i) for rec in state.stream_executor.calls)
        for state in self.states:
            state.stream_executor.end()
