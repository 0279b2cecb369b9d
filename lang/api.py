"""The public DSL's expressions (gen, select, roles) and its default backend; the program
object that runs them is `program.py`'s.

@function
def qa(s, question):
    s += user(question)
    s += assistant(gen("answer", max_tokens=64))

state = qa.run(question="What is a radix tree?", temperature=0)
state["answer"]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from radixlm.lang import ir
from radixlm.lang.choices import ChoicesSamplingMethod, token_length_normalized
from radixlm.lang.tools import gen_tools


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


def resolve_backend(backend: Any) -> Any:
    backend = backend or _default_backend
    if backend is None:
        raise ValueError("no backend: pass backend=... or call set_default_backend(...)")
    return getattr(backend, "endpoint", backend)


def flush_cache(backend: Any = None) -> bool:
    return resolve_backend(backend).flush_cache()


def get_server_info(backend: Any = None) -> dict:
    return resolve_backend(backend).get_server_info()


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
