"""A prompt program: `@function` turns a Python function whose first parameter is the state
into an `SglFunction`, which runs it once (`run`), over many argument sets (`run_batch`, on
worker threads with the requests gathered), or traces its constant prefix for the cache."""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from radixlm.lang.api import global_config, resolve_backend
from radixlm.lang.interpreter import StateExecutor
from radixlm.lang.program_state import ProgramState
from radixlm.lang.run_batch import auto_threads, run_programs
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
        backend = resolve_backend(backend)
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
        backend = resolve_backend(backend)
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

        return trace_prefix(self, resolve_backend(backend).chat_template)

    def cache(self, backend: Any = None) -> str:
        """Prefill the program's constant prefix in the runtime's cache (if it is worth it)."""
        backend = resolve_backend(backend)
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
