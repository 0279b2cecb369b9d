"""The executor behind a program state: a `StateExecutor` runs a state's queued expressions
(text, gen, select, roles, variable scopes) in submission order on the state's own worker
thread (a reused one, from worker_threads.py), and keeps its text, messages and variables.

Submitting only queues; a variable's event exists from submission, so a reader waits for the
value. A failed expression stops its state: the error is kept (`error_`), later expressions are
skipped (bookkeeping calls excepted), and reading a variable that was never produced raises
`ProgramError` naming the original cause. The user's handle on a state is `ProgramState`
(program_state.py).
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable
from typing import Any

from radixlm.lang import ir
from radixlm.lang.cache_report import CallRecord
from radixlm.lang.chat_template import ChatTemplate
from radixlm.lang.worker_threads import spawn


class ProgramError(RuntimeError):
    """A program variable is unavailable because an expression before it failed."""


class StateExecutor:
    """One program state's (or fork's) text, messages and variables, and the queue that builds them."""

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
        # each gen/select this state ran, for cache_report (cache_report.py). A fork's child
        # starts with none: its calls are its own, and join hands them to the parent once.
        self.calls: list[CallRecord] = []
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
        # True while the program's body runs on another thread than its reader's (stream=True):
        # a read may come before the body has appended the expression that makes the variable
        self.body_pending = False
        # The state has a worker only while expressions are pending: it returns its thread to
        # worker_threads when the queue drains, and the next submission takes one again. So a
        # finished state holds no thread, and appending to it later (fork, join) still runs.
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
                if self.body_pending:
                    with self.changed:  # a reader may be waiting for the name to exist
                        self.changed.notify_all()
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
                spawn(self._work)

    def sync(self) -> None:
        """Wait until every expression submitted so far has run (or been skipped)."""
        with self._lock:
            self._lock.wait_for(lambda: self._unfinished == 0)

    def submit_call(self, fn: Callable[[], None]) -> None:
        """Run `fn` on the worker in order with the expressions (skipped once the state failed)."""
        self._put(_Call(fn))

    def fail_after_pending(self, exc: BaseException) -> None:
        """The program body raised: once what it queued has run, the state is failed."""

        def record() -> None:
            self.error_ = self.error_ or exc

        self._put(_Call(record, always=True))

    def end(self) -> None:
        """The program body returned: once the queue reaches this point, streams may end."""
        with self.changed:
            self.body_pending = False
            self.changed.notify_all()
        self._put(_Call(self._mark_finished, always=True))

    def _mark_finished(self) -> None:
        self.finished.set()
        with self.changed:
            self.changed.notify_all()

    def get_var(self, name: str) -> Any:
        if self.body_pending and name not in self.events and name not in self.variables:
            with self.changed:  # the body (on its own thread) may not have got there yet
                self.changed.wait_for(
                    lambda: name in self.events or name in self.variables or not self.body_pending
                )
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
            self.calls.append(CallRecord("select", item.name, self, len(self.text_), decision.meta_info))
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
        prompt_len = len(self.text_)  # the prompt: the text so far (a stream appends as it goes)
        params = self.resolve_params(gen)
        kwargs = dict(gen.logprob)
        if getattr(self.backend, "takes_messages", False):
            if gen.tools is not None:
                raise ValueError(
                    "gen(tools=...) needs a backend that takes the program's text (the radixlm runtime); "
                    "this one takes chat messages"
                )
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
            self.calls.append(CallRecord("gen", gen.name, self, prompt_len, meta))
            self._set_var(gen.name, _value(gen, self.variables.get(gen.name, "")), meta)
            return
        text, meta = self.backend.generate(self.text_, params, **kwargs)
        self.calls.append(CallRecord("gen", gen.name, self, prompt_len, meta))
        self._append(text[0] if isinstance(text, list) else text)
        self._set_var(gen.name, _value(gen, text), meta)

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


def _value(gen: ir.Gen, text: str | list[str]) -> Any:
    """A gen's variable: its text, or with tools the text with the calls read from it."""
    if gen.tools is None:
        return text
    if isinstance(text, list):  # n > 1: one reply per sample
        return [gen.tools.reply(t) for t in text]
    return gen.tools.reply(text)


def _as_list(stop: Any) -> list[str]:
    if stop is None:
        return []
    return [stop] if isinstance(stop, str) else list(stop)
