"""A Python function as an OpenAI tool: its parameters' JSON schema from the signature and type
hints (through a pydantic model), and the same model checking a call's arguments before the
function runs, so what the prompt promises is what the runner accepts.

    def get_weather(
        city: Annotated[str, Field(description="the city's name")],
        unit: Literal["c", "f"] = "c",
    ):
        '''Get the current weather in a city.'''

    function_tool(get_weather).spec == {"type": "function", "function": {
        "name": "get_weather", "description": "Get the current weather in a city.",
        "parameters": {"type": "object", "properties": {
            "city": {"type": "string", "description": "the city's name"},
            "unit": {"type": "string", "default": "c", "enum": ["c", "f"]}}, "required": ["city"]}}}

The function's `__name__` is the tool's name and its docstring's summary (first paragraph) the
description. Every parameter needs a type hint pydantic can describe: nested pydantic models
and dataclasses, enums, `Literal`, `Optional`, lists, dicts; `Annotated[T, Field(...)]` adds a
description or limits. A parameter with a default is optional. `*args` and `**kwargs` are
refused: a call's arguments are one JSON object with named members.
"""

from __future__ import annotations

import functools
import inspect
import json
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

import pydantic

from radixlm.runtime.function_call.parsers import TOOL_NAME_RE

# the keys OpenAI's own tool examples write first (the demo model was trained on that text);
# the rest keep pydantic's (sorted) order, and $defs goes last, after what refers to it
_FIRST_KEYS = ("type", "description", "properties", "required")
_SCHEMA_MAPS = ("properties", "$defs", "definitions", "patternProperties")  # name -> schema
_SCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")  # [schema, ...]
_SCHEMA_ONE = ("items", "additionalProperties", "not")  # one schema


class ToolArgumentError(ValueError):
    """A call's arguments do not fit the function's parameters; `problems` names each one."""

    def __init__(self, tool: str, problems: list[str]) -> None:
        super().__init__(f"{tool}: {'; '.join(problems)}")
        self.tool = tool
        self.problems = problems


@dataclass(frozen=True, eq=False)
class FunctionTool:
    """A function offered as a tool: its OpenAI spec and the model that checks its arguments."""

    function: Callable[..., Any]
    name: str
    spec: dict[str, Any]
    model: type[pydantic.BaseModel]
    fields: tuple[tuple[str, str, bool], ...]  # (parameter, model field, positional-only)

    def bind(self, arguments: Any) -> tuple[list[Any], dict[str, Any]]:
        """(positional, keyword) arguments for the function from a call's JSON arguments,
        validated as JSON (so what the schema allows is exactly what passes). Parameters the call
        leaves out are left to the function's own defaults. ToolArgumentError otherwise."""
        if not isinstance(arguments, dict):
            raise ToolArgumentError(
                self.name, [f"arguments must be a JSON object, got {type(arguments).__name__}"]
            )
        try:
            validated = self.model.model_validate_json(json.dumps(arguments))
        except pydantic.ValidationError as exc:
            raise ToolArgumentError(self.name, _problems(exc)) from None
        given = validated.model_fields_set
        positional = [getattr(validated, f) for _, f, pos_only in self.fields if pos_only and f in given]
        keyword = {p: getattr(validated, f) for p, f, pos_only in self.fields if not pos_only and f in given}
        return positional, keyword


def _problems(exc: pydantic.ValidationError) -> list[str]:
    """Each validation error in our words, the argument named by its path."""
    out = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error["loc"])
        if error["type"] == "missing":
            out.append(f"missing argument {where!r}")
        elif error["type"] == "extra_forbidden":
            out.append(f"unexpected argument {where!r}")
        elif where:
            out.append(f"argument {where!r} is invalid ({error['msg']})")
        else:
            out.append(f"arguments are invalid ({error['msg']})")
    return out


@functools.lru_cache(maxsize=512)  # a tool loop offers the same functions on every turn
def function_tool(function: Callable[..., Any]) -> FunctionTool:
    """The tool a Python function describes. ValueError (TypeError for a non-callable) names
    the function and the parameter that cannot be described."""
    if not callable(function):
        raise TypeError(
            f"a tool must be a Python function or an OpenAI tool dict, got {type(function).__name__}"
        )
    name = getattr(function, "__name__", None)
    if not isinstance(name, str) or not TOOL_NAME_RE.fullmatch(name):
        who = repr(name) if isinstance(name, str) else repr(function)
        raise ValueError(
            f"tool {who} needs a name of 1 to 64 letters, digits, '_', '-' or '.' to be called "
            "by: wrap it in a named def"
        )
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):
        raise ValueError(f"tool {name!r}: its signature cannot be read") from None
    try:
        hints = typing.get_type_hints(function, include_extras=True)
    except Exception as exc:  # an annotation that does not evaluate (NameError, TypeError, ...)
        raise ValueError(f"tool {name!r}: its type hints cannot be evaluated ({exc})") from None

    for param in signature.parameters.values():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            star = "*" if param.kind == param.VAR_POSITIONAL else "**"
            raise ValueError(
                f"tool {name!r}: {star}{param.name} cannot be described as JSON arguments; "
                "name every parameter"
            )
    definitions: dict[str, Any] = {}
    fields: list[tuple[str, str, bool]] = []
    for i, param in enumerate(signature.parameters.values()):
        if param.name not in hints:
            raise ValueError(
                f"tool {name!r}: parameter {param.name!r} has no type hint, so its JSON type is unknown"
            )
        # the model's own field names are neutral; the alias is the parameter's name, so names
        # such as `json` or `model_config` cannot clash with pydantic's attributes
        field = f"p{i}"
        default = ... if param.default is param.empty else param.default
        definitions[field] = (Annotated[hints[param.name], pydantic.Field(alias=param.name)], default)
        fields.append((param.name, field, param.kind == param.POSITIONAL_ONLY))

    config = pydantic.ConfigDict(extra="forbid", arbitrary_types_allowed=False)
    try:
        model = pydantic.create_model(name, __config__=config, **definitions)
        schema = model.model_json_schema()
    except (pydantic.PydanticUserError, TypeError, ValueError) as exc:
        culprit = _undescribable(name, hints, signature)
        raise ValueError(
            culprit or f"tool {name!r}: its parameters cannot be described as JSON ({exc})"
        ) from None

    parameters = clean_schema(schema)
    # pydantic writes `additionalProperties: false` for extra="forbid"; OpenAI's tool schemas
    # leave it out (and the demo model was trained on such text). The forcing regex never
    # writes an unknown key, and `bind` refuses one.
    parameters.pop("additionalProperties", None)
    function_spec: dict[str, Any] = {"name": name}
    description = _summary(function)
    if description:
        function_spec["description"] = description
    function_spec["parameters"] = parameters
    spec = {"type": "function", "function": function_spec}
    return FunctionTool(function, name, spec, model, tuple(fields))


def _undescribable(name: str, hints: dict[str, Any], signature: inspect.Signature) -> str | None:
    """The first parameter whose type pydantic cannot describe, as an error message."""
    for param in signature.parameters.values():
        try:
            pydantic.TypeAdapter(hints[param.name]).json_schema()
        except Exception as exc:  # pydantic's schema errors come in several types
            detail = (getattr(exc, "message", None) or str(exc) or type(exc).__name__).splitlines()[0]
            return (
                f"tool {name!r}: parameter {param.name!r} has a type that cannot be described as JSON "
                f"({hints[param.name]!r}) [{detail}]"
            )
    return None


def _summary(function: Callable[..., Any]) -> str | None:
    """The docstring's first paragraph on one line (a summary wrapped over lines stays whole)."""
    doc = inspect.getdoc(function)
    if not doc:
        return None
    paragraph = doc.strip().split("\n\n", 1)[0]
    return " ".join(line.strip() for line in paragraph.splitlines()) or None


def clean_schema(schema: Any) -> Any:
    """A pydantic JSON schema without its generated `title`s, keys in OpenAI's order. Only
    schema keywords are touched: a property named "title" and the values of `default`,
    `enum`, `const` and `examples` stay as they are."""
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key == "title" and isinstance(value, str):
            continue
        if key in _SCHEMA_MAPS and isinstance(value, dict):
            value = {k: clean_schema(v) for k, v in value.items()}
        elif key in _SCHEMA_LISTS and isinstance(value, list):
            value = [clean_schema(v) for v in value]
        elif key in _SCHEMA_ONE:
            value = clean_schema(value)
        out[key] = value
    first = [k for k in _FIRST_KEYS if k in out]
    rest = [k for k in out if k not in _FIRST_KEYS and k != "$defs"]
    return {k: out[k] for k in first + rest + (["$defs"] if "$defs" in out else [])}
