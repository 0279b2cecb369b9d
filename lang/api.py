"""The public DSL: `@function` programs and the expressions they append.

@function
def qa(s, question):
    s += user(question)
    s += assistant(gen("answer", max_tokens=64))

state = qa.run(question="What is a radix tree?", temperature=0)
state["answer"]
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from radixlm.lang import ir
from radixlm.lang.choices import ChoicesSamplingMethod, token_length_normalized
from radixlm.lang.interpreter import StateExecutor
from radixlm.lang.program_state import ProgramState
from radixlm.lang.run_batch import auto_threads, run_programs
from radixlm.lang.tools import gen_tools
from radixlm.lang.worker_threads import spawn

# run-level sampling keywords (defaults for every gen of the program) -> runtime names
RUN_DEFAULTS = {
    "max_new_tokens": 128,
    "min_new_tokens": 0,
    "n": 1,
    "stop": None,
    "stop_token_ids": None,
    "temperature": 1.0,
    "top_p": 1.0,
    "top_k": -1,
    "min_p": 0.0,
    "frequency_penalty": 0.0,
    "presence_penalty": 0.0,
    "repetition_penalty": 1.0,
    "ignore_eos": False,
}
PRECACHE_MIN_CHARS = 64


class GlobalConfig:
    """SGLang's `global_config`, for programs that use it: the default backend, and whether
    run_batch pre-caches the traced constant prefix."""

    enable_precache_with_tracing: bool = True

    @property
    def default_backend(self) -> Any:
        return _default_backend

    @default_backend.setter
    def default_backend(self, backend: Any) -> None:
        set_default_backend(backend)


global_config = GlobalConfig()
_default_backend: Any = None


def set_default_backend(backend: Any) -> None:
    global _default_backend
    _default_backend = backend


def get_default_backend() -> Any:
    return _default_backend


def _backend(backend: Any) -> Any:
    backend = backend or _default_backend
    if backend is None:
        raise ValueError("no backend: pass backend=... or call set_default_backend(...)")
    return getattr(backend, "endpoint", backend)


def flush_cache(backend: Any = None) -> bool:
    return _backend(backend).flush_cache()


def get_server_info(backend: Any = None) -> dict:
    return _backend(backend).get_server_info()


# ---------------------------------------------------------------------- expressions
def gen(
    name: str | None = None,
    max_tokens: int | None = None,
    min_tokens: int | None = None,
    stop: str | list[str] | None = None,
    stop_token_ids: list[int] | None = None,
    temperature: float | None = None,
    top_p: float | None = None,
    top_k: int | None = None,
    min_p: float | None = None,
    frequency_penalty: float | None = None,
    presence_penalty: float | None = None,
    repetition_penalty: float | None = None,
    ignore_eos: bool | None = None,
    n: int | None = None,
    return_logprob: bool | None = None,
    logprob_start_len: int | None = None,
    top_logprobs_num: int | None = None,
    regex: str | None = None,
    json_schema: Any = None,
    ebnf: str | None = None,
    grammar: str | None = None,
    dtype: Any = None,
    choices: list[str] | None = None,
    choices_method: ChoicesSamplingMethod | None = None,
    return_text_in_logprobs: bool | None = None,
    stop_regex: Any = None,
    tools: Sequence[Any] | None = None,
    tool_choice: Any = None,
    parallel_tool_calls: bool | None = None,
) -> ir.Expr:
    """Generate text, appended to the state and stored in `s[name]`. Keywords left as None
    inherit the run-level defaults. With `choices`, this is `select`.

    With `tools` (Python functions or OpenAI tool dicts, offered in the prompt with
    `tools_prompt`), `s[name]` is a `ToolReply`: the text, with `.tool_calls` and `.content`
    (lang/tools.py). `tool_choice`: "auto" (default), "none", "required", or one tool (its name
    or function); "required" and a named tool constrain the output to calls, one or more
    (exactly one with `parallel_tool_calls=False`).

    Constraints (at most one): `regex`, `json_schema` (JSON text, a dict, a pydantic model or a
    msgspec Struct type), `ebnf` (a GBNF grammar, `root ::= ...`) or `grammar` (Lark)."""
    if stop_regex is not None:
        raise ValueError("stop_regex is not supported: use stop strings, or regex= to constrain the output")
    grammars = {"regex": regex, "json_schema": json_schema, "ebnf": ebnf, "grammar": grammar}
    given_constraints = [k for k, v in grammars.items() if v is not None]
    constrained = bool(choices) or bool(given_constraints) or dtype is not None
    offered = gen_tools(tools, tool_choice, parallel_tool_calls, constrained)
    if choices:
        return select(
            name,
            choices,
            temperature=temperature or 0.0,
            choices_method=choices_method or token_length_normalized,
        )
    if regex is not None:
        ir.check_regex(regex)
    if len(given_constraints) > 1:
        raise ValueError(f"give at most one of {', '.join(grammars)} (got {', '.join(given_constraints)})")
    for key in ("ebnf", "grammar"):
        if grammars[key] is not None and (not isinstance(grammars[key], str) or not grammars[key]):
            raise ValueError(f"{key} must be a non-empty string (the grammar's text)")
    if json_schema is not None:
        # JSON text, a dict, a pydantic model class or a msgspec Struct type -> JSON text
        from radixlm.runtime.constrained.json_schema import normalize_json_schema

        json_schema = normalize_json_schema(json_schema)
    if dtype is not None:
        ir.dtype_regex(dtype)  # fail fast on an unknown dtype
    given = dict(
        max_tokens=max_tokens,
        min_tokens=min_tokens,
        n=n,
        stop=stop,
        stop_token_ids=stop_token_ids,
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        min_p=min_p,
        frequency_penalty=frequency_penalty,
        presence_penalty=presence_penalty,
        repetition_penalty=repetition_penalty,
        ignore_eos=ignore_eos,
        regex=regex,
        json_schema=json_schema,
        ebnf=ebnf,
        grammar=grammar,
    )
    params = {ir.SAMPLING_KEYS[k]: v for k, v in given.items() if v is not None}
    if offered is not None:
        params.update(offered.constraint)  # a forced call: its regex or grammar
    logprob = {
        k: v
        for k, v in (
            ("return_logprob", return_logprob),
            ("logprob_start_len", logprob_start_len),
            ("top_logprobs_num", top_logprobs_num),
            ("return_text_in_logprobs", return_text_in_logprobs),
        )
        if v is not None
    }
    return ir.Gen(name, params, logprob, dtype, offered)


def gen_int(name: str | None = None, **kwargs: Any) -> ir.Expr:
    return gen(name, dtype=int, **kwargs)


def gen_string(name: str | None = None, **kwargs: Any) -> ir.Expr:
    return gen(name, dtype=str, **kwargs)


def select(
    name: str | None = None,
    choices: Sequence[str] | None = None,
    temperature: float = 0.0,
    choices_method: ChoicesSamplingMethod = token_length_normalized,
) -> ir.Select:
    if not choices:
        raise ValueError("select needs a non-empty list of choices")
    if not all(isinstance(c, str) for c in choices):
        raise TypeError("select choices must be strings")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    return ir.Select(name, list(choices), temperature, choices_method)


def _role(role: str, expr: Any = None) -> ir.ExprList:
    inner = [] if expr is None else [ir._as_expr(expr)]
    return ir.ExprList([ir.RoleBegin(role), *inner, ir.RoleEnd(role)])


def system(expr: Any = None) -> ir.ExprList:
    return _role("system", expr)


def user(expr: Any = None) -> ir.ExprList:
    return _role("user", expr)


def assistant(expr: Any = None) -> ir.ExprList:
    return _role("assistant", expr)


def system_begin() -> ir.RoleBegin:
    return ir.RoleBegin("system")


def system_end() -> ir.RoleEnd:
    return ir.RoleEnd("system")


def user_begin() -> ir.RoleBegin:
    return ir.RoleBegin("user")


def user_end() -> ir.RoleEnd:
    return ir.RoleEnd("user")


def assistant_begin() -> ir.RoleBegin:
    return ir.RoleBegin("assistant")


def assistant_end() -> ir.RoleEnd:
    return ir.RoleEnd("assistant")


# ---------------------------------------------------------------------- programs
class SglFunction:
    def __init__(self, func: Callable, bind_arguments: dict[str, Any] | None = None) -> None:
        params = list(inspect.signature(func).parameters.values())
        if not params:
            raise TypeError("a program's first parameter must be the state (s)")
        self.func = func
        self.bind_arguments = dict(bind_arguments or {})
        self.arg_names = [p.name for p in params[1:]]
        self.arg_defaults = {
            p.name: p.default for p in params[1:] if p.default is not inspect.Parameter.empty
        }

    def __call__(self, *args: Any, **kwargs: Any) -> ProgramState:
        return self.run(*args, **kwargs)

    def bind(self, **kwargs: Any) -> SglFunction:
        unknown = sorted(set(kwargs) - set(self.arg_names))
        if unknown:
            raise TypeError(f"{self.func.__name__}() has no argument(s) {', '.join(unknown)}")
        return SglFunction(self.func, {**self.bind_arguments, **kwargs})

    def _split(self, kwargs: dict[str, Any]) -> tuple[dict, dict]:
        """Program arguments vs run-level sampling defaults (a program argument wins a name clash)."""
        program = {k: v for k, v in kwargs.items() if k in self.arg_names or k not in RUN_DEFAULTS}
        sampling = {k: v for k, v in kwargs.items() if k not in program}
        return program, sampling

    def run(
        self, *args: Any, backend: Any = None, stream: bool = False, use_thread: bool = True, **kwargs: Any
    ) -> ProgramState:
        """Start the program and return its state at once; reads on it wait for results.
        `use_thread=False` executes every expression in the caller's thread as it is appended.
        An exception raised by the program's own Python code reaches the caller; with
        stream=True (the body runs on its own thread) it is kept in `state.error()`."""
        return self._run(args, kwargs, backend, stream, use_thread, keep_errors=stream)

    def _run(
        self,
        args: tuple,
        kwargs: dict[str, Any],
        backend: Any,
        stream: bool,
        use_thread: bool,
        keep_errors: bool,
    ) -> ProgramState:
        program_kwargs, sampling = self._split(kwargs)
        backend = _backend(backend)
        defaults = {k: v for k, v in {**RUN_DEFAULTS, **sampling}.items() if v is not None}
        if stream and not use_thread:
            raise ValueError("stream=True needs use_thread=True")
        executor = StateExecutor(
            backend, backend.chat_template, defaults, stream=stream, use_thread=use_thread
        )
        state = ProgramState(executor)
        call_kwargs = {**self.bind_arguments, **program_kwargs}

        def body() -> None:
            try:
                state.ret_value = self.func(state, *args, **call_kwargs)
            except Exception as exc:
                if not keep_errors:
                    raise  # the caller's own thread: it sees the exception directly
                executor.fail_after_pending(exc)  # seen through error() and reads of later variables
            finally:
                executor.end()

        if stream:
            executor.body_pending = True
            spawn(body)
        else:
            body()
        return state

    def run_batch(
        self,
        batch_kwargs: Sequence[dict | Sequence[Any]],
        *,
        backend: Any = None,
        num_threads: int | str = "auto",
        progress_bar: bool = False,
        generator_style: bool = False,
        **sampling: Any,
    ) -> list[ProgramState] | Iterator[ProgramState]:
        """Run the program once per argument set; states come back in input order, finished.
        A program that fails (its request or its own Python code) does not stop the batch: its
        state's `error()` says why."""
        backend = _backend(backend)
        calls = [self._batch_args(i, item) for i, item in enumerate(batch_kwargs)]
        if not calls:
            return iter(()) if generator_style else []
        prefix = None
        if len(calls) > 1 and global_config.enable_precache_with_tracing:
            traced = self.trace(backend)
            prefix = traced if _worth_caching(traced) else None

        def one(kwargs: dict) -> ProgramState:  # on a worker: every expression runs right here
            return self._run((), {**kwargs, **sampling}, backend, False, False, keep_errors=True)

        return run_programs(
            one,
            calls,
            backend=backend,
            num_threads=auto_threads(len(calls)) if num_threads == "auto" else int(num_threads),
            prefix=prefix,
            progress_bar=_progress(len(calls)) if progress_bar else None,
            generator_style=generator_style,
        )

    def _batch_args(self, index: int, item: dict | Sequence[Any]) -> dict[str, Any]:
        if isinstance(item, dict):
            unknown = sorted(set(item) - set(self.arg_names) - set(RUN_DEFAULTS))
            if unknown:
                raise TypeError(
                    f"batch item {index}: {self.func.__name__}() has no argument(s) {', '.join(unknown)}"
                )
            return dict(item)
        free = [n for n in self.arg_names if n not in self.bind_arguments]
        required = [n for n in free if n not in self.arg_defaults]
        if not len(required) <= len(item) <= len(free):
            raise TypeError(
                f"batch item {index}: {len(item)} positional values, but {self.func.__name__}() "
                f"takes {len(required)} to {len(free)}"
            )
        return dict(zip(free, item))

    # ------------------------------------------------------------------ prefix caching
    def trace(self, backend: Any = None) -> str:
        """The constant prefix of the program: what it appends before anything depends on an
        argument or a generation (role markers rendered with the backend's chat template)."""
        from radixlm.lang.tracer import trace_prefix

        return trace_prefix(self, _backend(backend).chat_template)

    def cache(self, backend: Any = None) -> str:
        """Prefill the program's constant prefix in the runtime's cache (if it is worth it)."""
        backend = _backend(backend)
        prefix = self.trace(backend)
        if _worth_caching(prefix):
            backend.cache_prefix(prefix)
        return prefix


def function(func: Callable | None = None, num_api_spec_tokens: int | None = None, **options: Any) -> Any:
    """Decorator, bare (`@function`) or with arguments (`@function()`).

    `num_api_spec_tokens` (SGLang's speculative execution for OpenAI-style APIs) is accepted
    so SGLang programs load, and ignored with a warning: programs run exactly as written."""
    if options:
        raise TypeError(f"unknown @function option(s): {', '.join(sorted(options))}")
    if num_api_spec_tokens is not None:
        warnings.warn(
            "@function(num_api_spec_tokens=...) is ignored: radixlm runs every gen as its own request",
            stacklevel=2,
        )
    if func is None:
        return lambda f: SglFunction(f)
    return SglFunction(func)


def _worth_caching(prefix: str) -> bool:
    return len(prefix) > PRECACHE_MIN_CHARS


def _progress(total: int) -> Any:
    try:
        from tqdm import tqdm
    except ImportError:  # tqdm comes with transformers; without it, no bar
        return None
    return tqdm(total=total)
