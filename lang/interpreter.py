"""Running programs: a `ProgramState` per program (or fork), whose expressions execute in
submission order on the state's own worker thread.

`s += expr` only queues; reading (`s["v"]`, `s.text()`, `s.fork()`...) waits for what it
needs. Concurrency comes from forks and `run_batch`; the runtime batches their requests.
A failed expression stops its state: the error is kept (`s.error()`), later expressions
are skipped, and reading a variable that was never produced raises `ProgramError` naming
the original cause.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from radixlm.lang import ir
from radixlm.lang.chat_template import ChatTemplate


class ProgramError(RuntimeError):
    """A program variable is unavailable because an expression before it failed."""


class StateExecutor:
    def __init__(
        self,
        backend: Any,
        chat_template: ChatTemplate,
        defaults: dict[str, Any],
        stream: bool = False,
        parent: StateExecutor | None = None,
        use_thread: bool = True,
    ) -> None:
        self.backend = backend
        self.use_thread = use_thread
        self.chat_template = chat_template
        self.defaults = dict(defaults)
        self.stream = stream
        self.text_ = parent.text_ if parent else ""
        self.messages_: list[dict] = [dict(m) for m in parent.messages_] if parent else []
        self.variables: dict[str, Any] = dict(parent.variables) if parent else {}
        self.meta_info: dict[str, Any] = dict(parent.meta_info) if parent else {}
        self.events: dict[str, threading.Event] = {}
        self.failed: dict[str, BaseException] = {}
        self.error_: BaseException | None = None
        self.cur_role: str | None = parent.cur_role if parent else None
        self.cur_role_begin = parent.cur_role_begin if parent else 0
        self.cur_role_suffix = parent.cur_role_suffix if parent else ""
        self.scopes: dict[str, int] = {}
        self.fork_start = len(self.text_)
        self.changed = threading.Condition()
        self.finished = threading.Event()
        # A worker thread exists only while expressions are pending; it exits when the queue
        # drains and the next submission starts another. So a finished state holds no thread,
        # and appending to it later (fork, join into a parent) still runs.
        self._lock = threading.Condition()
        self._pending: collections.deque = collections.deque()
        self._unfinished = 0
        self._worker_running = False

    # ------------------------------------------------------------------ queueing
    def submit(self, expr: ir.Expr) -> None:
        items = expr.items if isinstance(expr, ir.ExprList) else [expr]
        for item in items:  # events exist from submission, so reads wait for the value
            name = getattr(item, "name", None)
            if name is not None and isinstance(item, (ir.Gen, ir.Select, ir.VarScopeBegin)):
                self.events[name] = threading.Event()
                self.failed.pop(name, None)
            self._put(item)

    def _put(self, item: ir.Expr) -> None:
        if not self.use_thread:  # run(use_thread=False): execute in the caller's thread, now
            with self._lock:
                self._unfinished += 1
            self._run_one(item)
            return
        with self._lock:
            self._pending.append(item)
            self._unfinished += 1
            if not self._worker_running:
                self._worker_running = True
                threading.Thread(target=self._work, daemon=True, name="radixlm-program").start()

    def sync(self) -> None:
        """Wait until every expression submitted so far has run (or been skipped)."""
        with self._lock:
            self._lock.wait_for(lambda: self._unfinished == 0)

    def fail_after_pending(self, exc: BaseException) -> None:
        """The program body raised: once what it queued has run, the state is failed."""

        def record() -> None:
            self.error_ = self.error_ or exc

        self._put(_Call(record, always=True))

    def end(self) -> None:
        """The program body returned: once the queue reaches this point, streams may end."""
        self._put(_Call(self._mark_finished, always=True))

    def _mark_finished(self) -> None:
        self.finished.set()
        with self.changed:
            self.changed.notify_all()

    def get_var(self, name: str) -> Any:
        event = self.events.get(name)
        if event is None and name not in self.variables:
            raise KeyError(f"no variable {name!r} in this program state")
        if event is not None:
            event.wait()
        if name in self.failed:
            cause = self.failed[name]
            raise ProgramError(
                f"variable {name!r} was not produced: {type(cause).__name__}: {cause}"
            ) from cause
        return self.variables[name]

    # ------------------------------------------------------------------ worker
    def _work(self) -> None:
        while True:
            with self._lock:
                if not self._pending:
                    self._worker_running = False
                    return
                item = self._pending.popleft()
            self._run_one(item)

    def _run_one(self, item: ir.Expr) -> None:
        try:
            if self.error_ is None or item_always_runs(item):
                try:
                    self._execute(item)
                except BaseException as exc:  # recorded; surfaces through error() and reads
                    self.error_ = self.error_ or exc
            if self.error_ is not None:
                self._fail_pending(item)
        finally:
            with self._lock:
                self._unfinished -= 1
                self._lock.notify_all()

    def _fail_pending(self, item: ir.Expr) -> None:
        name = getattr(item, "name", None)
        if name is not None and name in self.events and not self.events[name].is_set():
            self.failed[name] = self.error_
            self.events[name].set()

    def _append(self, text: str) -> None:
        with self.changed:
            self.text_ += text
            self.changed.notify_all()

    def _execute(self, item: ir.Expr) -> None:
        if isinstance(item, ir.Constant):
            self._append(item.text)
        elif isinstance(item, ir.Gen):
            self._gen(item)
        elif isinstance(item, ir.Select):
            decision = self.backend.select(self.text_, item.choices, item.temperature, item.method)
            self._append(decision.decision)
            self._set_var(item.name, decision.decision, decision.meta_info)
        elif isinstance(item, ir.RoleBegin):
            self._role_begin(item.role)
        elif isinstance(item, ir.RoleEnd):
            self._role_end(item.role)
        elif isinstance(item, ir.VarScopeBegin):
            self.scopes[item.name] = len(self.text_)
        elif isinstance(item, ir.VarScopeEnd):
            self._set_var(item.name, self.text_[self.scopes.pop(item.name) :], None)
        elif isinstance(item, _Call):
            item.fn()
        else:
            raise TypeError(f"cannot execute {type(item).__name__}")

    def _set_var(self, name: str | None, value: Any, meta: Any) -> None:
        if name is None:
            return
        self.variables[name] = value
        self.meta_info[name] = meta
        event = self.events.get(name)
        if event is not None:
            event.set()
        with self.changed:  # wakes streaming readers of this variable
            self.changed.notify_all()

    def resolve_params(self, gen: ir.Gen) -> dict[str, Any]:
        """Run-level defaults, overridden by the gen's own keywords; the chat template's stop
        strings always apply."""
        params = {**self.defaults, **gen.params}
        if gen.dtype is not None:
            regex, extra_stops = ir.dtype_regex(gen.dtype)
            params["regex"] = regex
            params["stop"] = _as_list(params.get("stop")) + extra_stops
        stops = _as_list(params.get("stop")) + [s for s in self.chat_template.stop_str]
        params["stop"] = list(dict.fromkeys(stops)) or None
        return params

    def conversation(self) -> list[dict]:
        """The messages a chat API sees: the closed turns, then the open turn with its content so far."""
        messages = [dict(m) for m in self.messages_]
        if self.cur_role is not None:
            messages.append({"role": self.cur_role, "content": self.text_[self.cur_role_begin :].lstrip()})
        return messages

    def _gen(self, gen: ir.Gen) -> None:
        params = self.resolve_params(gen)
        kwargs = dict(gen.logprob)
        if getattr(self.backend, "takes_messages", False):
            kwargs["messages"] = self.conversation()
        if self.stream and params.get("n", 1) == 1:
            if gen.name is not None:
                self.variables[gen.name] = ""
            meta: dict = {}
            for chunk, meta in self.backend.generate_stream(self.text_, params, **kwargs):
                with self.changed:  # value and meta change together: a reader sees a consistent pair
                    if gen.name is not None:
                        self.variables[gen.name] += chunk
                        self.meta_info[gen.name] = meta
                    self._append(chunk)
            self._set_var(gen.name, self.variables.get(gen.name, ""), meta)
            return
        text, meta = self.backend.generate(self.text_, params, **kwargs)
        self._append(text[0] if isinstance(text, list) else text)
        self._set_var(gen.name, text, meta)

    def _role_begin(self, role: str) -> None:
        if self.cur_role is not None:
            raise ValueError(f"nested roles are not allowed: {role!r} inside {self.cur_role!r}")
        template = self.chat_template
        if not self.messages_ and role != "system" and template.default_system_prompt is not None:
            self._role_begin("system")
            self._append(template.default_system_prompt)
            self._role_end("system")
        prefix, suffix = template.get_prefix_and_suffix(role, self.messages_)
        self._append(prefix)
        self.cur_role, self.cur_role_begin, self.cur_role_suffix = role, len(self.text_), suffix

    def _role_end(self, role: str) -> None:
        if self.cur_role != role:
            raise ValueError(f"role end {role!r} does not match the open role {self.cur_role!r}")
        content = self.text_[self.cur_role_begin :]
        self._append(self.cur_role_suffix)
        self.messages_.append({"role": role, "content": content.lstrip()})
        self.cur_role = None


class _Call(ir.Expr):
    """Runs a function on the worker, in order with the other expressions. `always` calls run
    even after the state failed (bookkeeping such as marking the end)."""

    def __init__(self, fn: Callable[[], None], always: bool = False) -> None:
        self.fn = fn
        self.always = always


def item_always_runs(item: ir.Expr) -> bool:
    return isinstance(item, _Call) and item.always


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


def _as_list(stop: Any) -> list[str]:
    if stop is None:
        return []
    return [stop] if isinstance(stop, str) else list(stop)


class ProgramState:
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
            ex.submit(_Call(lambda: ex.text_ and ex.backend.cache_prefix(ex.text_)))
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
                ex.changed.wait_for(lambda: len(ex.text_) > pos or ex.finished.is_set(), timeout=0.1)
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
                ex.changed.wait_for(
                    lambda: (
                        len(ex.variables.get(name) or "") > pos
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
    def __init__(self, states: list[ProgramState], parent: ProgramState) -> None:
        self.states = states
        self.parent = parent
        self._parent_vars = set(parent.stream_executor.variables)

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
        for state in self.states:
            state.stream_executor.end()
