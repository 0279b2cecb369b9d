"""OpenAI `tools` / `tool_choice` checked, and turned into the regex that forces a tool call
or the structural tag that holds strict tools' calls inside free text.

With tool_choice "required" or a named function, the output is constrained to the family's
call format (the formats parsers.py reads) with each function's `parameters` schema written
into the arguments through the project's JSON-schema translation (constrained/json_schema.py).
So every output the regex admits parses into calls to offered functions whose arguments
validate against their schema; a schema the translation cannot enforce is refused, naming
the tool.

With tool_choice "auto" and a function marked `"strict": true` (OpenAI's flag for "the
arguments must follow the schema"), the text stays free and each call the model opens is held
to the family's format and, for a strict function, to its schema: a structural tag
(constrained/structural_tag.py) whose trigger is the family's call opener. Non-strict functions
offered beside strict ones may still be called, with any JSON object as arguments. (Not for
mistral, whose opener is a special token: see _TAGGED_CALLS.)

Parallel calls under outlines-core 0.2.14 (the pinned version): its automaton drops a
one-byte token that leaves an accepting state for a non-accepting one (the DFA reports a
match one byte late), so after a complete hermes or llama3 call the next call is reachable
only through a token that spans the separator (`>\n<`, `};{`, ...); where the vocabulary has
none, the model can only stop there. Outputs stay valid either way, and mistral's array
(no accepting state between calls) is unaffected. outlines-core's later "avoid generating
incomplete automata" fix removes the limit.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from radixlm.runtime.constrained.json_schema import (
    DEFAULT_WHITESPACE,
    json_schema_to_regex,
    normalize_json_schema,
)
from radixlm.runtime.function_call.parsers import (
    HERMES_CLOSE,
    HERMES_OPEN,
    MISTRAL_TOOL_CALLS,
    TOOL_NAME_RE,
    get_parser,
)

EMPTY_PARAMETERS: dict[str, Any] = {"type": "object", "properties": {}}
TOOL_CHOICE_MODES = ("none", "auto", "required")
# Families whose models write one call per assistant turn: Llama 3.1+ JSON tool calling has
# no parallel calls (Meta's own chat template refuses an assistant turn holding several).
# hermes writes one <tool_call> block per call and mistral an array, so both can.
SINGLE_CALL_FAMILIES = frozenset({"llama3"})
# regex metacharacters; escaping only these keeps the pattern valid for Python's re and for
# the Rust regex outlines-core compiles with (which refuses escapes such as \< or \>)
_REGEX_META = re.compile(r"([\\.^$|?*+()\[\]{}])")


@dataclass(frozen=True)
class ToolChoice:
    """A checked tool_choice: mode "none", "auto", "required" or "function" (then `name`)."""

    mode: str
    name: str | None = None

    @property
    def forces_call(self) -> bool:
        return self.mode in ("required", "function")


def validate_tools(tools: Any) -> list[dict[str, Any]]:
    """The request's `tools`, checked, each as {"type": "function", "function": {...}} with
    `parameters` filled in ({"type": "object", "properties": {}} when absent)."""
    if not isinstance(tools, list):
        raise ValueError(f"tools must be a list of tool objects, got {type(tools).__name__}")
    if not tools:
        raise ValueError("tools must hold at least one tool (leave it out to offer none)")
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    for i, tool in enumerate(tools):
        where = f"tools[{i}]"
        if not isinstance(tool, dict):
            raise ValueError(f"{where} must be an object, got {type(tool).__name__}")
        if tool.get("type") != "function":
            kind = tool.get("type")
            raise ValueError(f'{where}: only tools of type "function" are supported, got {kind!r}')
        function = tool.get("function")
        if not isinstance(function, dict):
            raise ValueError(f'{where}: "function" must be an object with the function\'s name')
        name = function.get("name")
        if not isinstance(name, str) or not name:
            raise ValueError(f"{where}: the function needs a non-empty string name")
        if not TOOL_NAME_RE.fullmatch(name):
            raise ValueError(
                f"{where}: function name {name!r} must be 1 to 64 letters, digits, '_', '-' or '.'"
            )
        if name in seen:
            raise ValueError(f"{where}: function name {name!r} is used by more than one tool")
        seen.add(name)
        description = function.get("description")
        if description is not None and not isinstance(description, str):
            raise ValueError(f"{where} ({name}): description must be a string")
        parameters = function.get("parameters")
        if parameters is None:
            parameters = {"type": "object", "properties": {}}  # a fresh one: callers may edit theirs
        elif not isinstance(parameters, dict) or parameters.get("type") != "object":
            raise ValueError(
                f'{where} ({name}): parameters must be a JSON schema with "type": "object" '
                f"(the arguments are always an object), got {json.dumps(parameters)[:80]}"
            )
        out.append({"type": "function", "function": {**function, "parameters": parameters}})
    return out


def check_tool_choice(tool_choice: Any, tools: list[dict[str, Any]] | None) -> ToolChoice:
    """A request's tool_choice against its (validated) tools. None means "auto" when tools
    are offered, else "none", as in OpenAI's API."""
    names = [tool["function"]["name"] for tool in tools or []]
    if tool_choice is None:
        return ToolChoice("auto" if names else "none")
    if isinstance(tool_choice, str):
        if tool_choice not in TOOL_CHOICE_MODES:
            raise ValueError(
                f"unknown tool_choice {tool_choice!r}: use one of {', '.join(TOOL_CHOICE_MODES)} "
                'or {"type": "function", "function": {"name": ...}}'
            )
        if tool_choice == "required" and not names:
            raise ValueError('tool_choice "required" needs at least one tool in tools')
        return ToolChoice(tool_choice)
    if not isinstance(tool_choice, dict) or tool_choice.get("type") != "function":
        raise ValueError(
            'tool_choice must be "none", "auto", "required" or '
            f'{{"type": "function", "function": {{"name": ...}}}}, got {json.dumps(tool_choice)[:80]}'
        )
    function = tool_choice.get("function")
    name = function.get("name") if isinstance(function, dict) else None
    if not isinstance(name, str) or not name:
        raise ValueError('tool_choice {"type": "function"} needs "function": {"name": ...}')
    if name not in names:
        offered = ", ".join(names) if names else "none"
        raise ValueError(f"tool_choice names function {name!r}, which is not in tools (offered: {offered})")
    return ToolChoice("function", name)


def parallel_calls(family: str, parallel_tool_calls: bool | None) -> bool:
    """Whether one turn may hold several calls. Unset (None) is OpenAI's default, yes, which a
    single-call family quietly turns into no; an explicit true it cannot honour is refused."""
    get_parser(family)  # a ValueError naming the known families
    if family not in SINGLE_CALL_FAMILIES:
        return parallel_tool_calls is not False
    if parallel_tool_calls:
        raise ValueError(
            f"parallel_tool_calls is true, but the {family!r} tool-call parser's format holds one call "
            "per assistant turn; leave parallel_tool_calls out or set it to false"
        )
    return False


# per family: the text that opens a call (the structural tag's trigger), and the layouts of one
# call as (begin before the name, text between the name and the arguments, end); the name is
# written as JSON. hermes models differ on newlines inside the tags: both layouts are offered.
_TAGGED_CALLS: dict[str, tuple[str, list[tuple[str, str, str]]]] = {
    "hermes": (
        HERMES_OPEN,
        [
            (HERMES_OPEN + '{"name": ', ', "arguments": ', "}" + HERMES_CLOSE),
            (HERMES_OPEN + '\n{"name": ', ', "arguments": ', "}\n" + HERMES_CLOSE),
        ],
    ),
    # Llama 3.1+ writes a custom tool call as plain JSON at the output's start (parsers.py)
    "llama3": ('{"name": ', [('{"name": ', ', "parameters": ', "}")]),
    # mistral is left out: its opener [TOOL_CALLS] is a special token, which grammars never
    # allow, so a tag would keep the model from calling at all; strict is not enforced there
}


def strict_tool_tag(tools: Any, family: str) -> dict[str, Any] | None:
    """The structural tag that holds calls to `tools` in `family`'s format while the text around
    them stays free, or None when no tool is strict (or the family is mistral, see above). A
    strict function's arguments follow its `parameters`; another's are any JSON object."""
    get_parser(family)  # a ValueError naming the known families
    functions = [tool["function"] for tool in validate_tools(tools)]
    if family not in _TAGGED_CALLS or not any(f.get("strict") is True for f in functions):
        return None
    trigger, layouts = _TAGGED_CALLS[family]
    structures = [
        {
            "begin": head + json.dumps(f["name"]) + middle,
            "schema": f["parameters"] if f.get("strict") is True else {"type": "object"},
            "end": end,
        }
        for f in functions
        for head, middle, end in layouts
    ]
    return {"structures": structures, "triggers": [trigger]}


def regex_literal(text: str) -> str:
    """`text` as a regex matching exactly it, in both Python's and Rust's dialect."""
    return _REGEX_META.sub(r"\\\1", text)


def _call_object_regex(function: dict[str, Any], arg_key: str, ws: str) -> str:
    """`{"name": "NAME", "<arg_key>": ARGS}` with ARGS the parameters schema's regex."""
    name = function["name"]
    try:
        args = json_schema_to_regex(normalize_json_schema(function["parameters"]), ws)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"tool {name!r}: its parameters schema cannot be enforced: {exc}") from None
    name_json = regex_literal(json.dumps(name))
    return rf'\{{{ws}"name"{ws}:{ws}{name_json}{ws},{ws}"{arg_key}"{ws}:{ws}({args}){ws}\}}'


def forced_call_constraint(
    tools: list[dict[str, Any]], choice: ToolChoice, family: str, parallel: bool
) -> dict[str, str]:
    """The sampling constraint of a forced call: the regex (outlines-core) where every chosen
    function's parameters translate to one, else the same calls as a Lark grammar for
    llguidance, which enforces what a regex cannot (numeric bounds, a pattern with lengths,
    recursive $ref...). Raises ValueError naming the tool neither can hold."""
    try:
        return {"regex": tool_call_regex(tools, choice, family, parallel=parallel)}
    except ValueError as refused:
        try:
            return {"grammar": tool_call_grammar(tools, choice, family, parallel=parallel)}
        except ValueError:
            raise refused from None


def _forced_functions(tools: Any, tool_choice: Any, family: str) -> tuple[list[dict[str, Any]], str]:
    """The functions a forced call may call (checked), and the family's key for the arguments."""
    get_parser(family)  # a ValueError naming the known families
    tools = validate_tools(tools)
    choice = tool_choice if isinstance(tool_choice, ToolChoice) else check_tool_choice(tool_choice, tools)
    if not choice.forces_call:
        raise ValueError(
            f'tool_choice "{choice.mode}" leaves the output free; only "required" or a named '
            "function constrains it"
        )
    functions = [tool["function"] for tool in tools]
    chosen = [f for f in functions if choice.mode == "required" or f["name"] == choice.name]
    return chosen, "parameters" if family == "llama3" else "arguments"


def tool_call_grammar(tools: Any, tool_choice: Any, family: str, *, parallel: bool = True) -> str:
    """tool_call_regex's outputs as a Lark grammar (llguidance), the arguments held to each
    function's schema by llguidance's JSON compiler; one layout per call (`{"name": ..., ...}`
    with single spaces; hermes tags with or without newlines inside)."""
    from radixlm.runtime.constrained.structural_tag import json_value, lark_literal

    chosen, arg_key = _forced_functions(tools, tool_choice, family)
    lines = []
    for i, f in enumerate(chosen):
        try:
            args = json_value(f["parameters"], None)
        except ValueError as exc:
            raise ValueError(f"tool {f['name']!r}: its parameters schema cannot be enforced: {exc}") from None
        head = lark_literal(f'{{"name": {json.dumps(f["name"])}, "{arg_key}": ')
        lines.append(f'c{i}: {head} {args} "}}"')
    lines.append("call: " + " | ".join(f"c{i}" for i in range(len(chosen))))
    newline = lark_literal("\n") + "?"  # models differ on newlines inside the hermes tags
    if family == "hermes":
        one = f"{lark_literal(HERMES_OPEN)} {newline} call {newline} {lark_literal(HERMES_CLOSE)}"
        start = f"{one} ({newline} {one})*" if parallel else one
    elif family == "llama3":
        start = 'call (";" " "? call)*' if parallel else "call"
    else:
        more = '("," " "? call)* ' if parallel else ""
        start = f'{lark_literal(MISTRAL_TOOL_CALLS)} "[" call {more}"]"'
    return "\n".join([f"start: {start}", *lines]) + "\n"


def tool_call_regex(
    tools: Any,
    tool_choice: Any,
    family: str,
    *,
    parallel: bool = True,
    whitespace_pattern: str | None = None,
) -> str:
    """The regex of outputs that are only tool calls in `family`'s format: to any offered
    function ("required") or to the named one, once, or one or more times when `parallel`.
    `whitespace_pattern` is the JSON whitespace (as the engine's option; JSON whitespace only)."""
    chosen, arg_key = _forced_functions(tools, tool_choice, family)
    ws = DEFAULT_WHITESPACE if whitespace_pattern is None else whitespace_pattern
    alternatives = [_call_object_regex(function, arg_key, ws) for function in chosen]
    call = alternatives[0] if len(alternatives) == 1 else "(" + "|".join(f"({a})" for a in alternatives) + ")"
    if family == "hermes":
        one = rf"{HERMES_OPEN}\n?{call}\n?{HERMES_CLOSE}"
        return rf"{one}(\n?{one})*" if parallel else one
    if family == "llama3":  # plain JSON, as Llama 3.1+ writes custom tool calls (no <|python_tag|>)
        return rf"{call}(;[ ]?{call})*" if parallel else call
    # mistral: the JSON-array form, which every Mistral tool-calling version reads
    calls = rf"{call}({ws},{ws}{call})*" if parallel else call
    return rf"{regex_literal(MISTRAL_TOOL_CALLS)}\[{ws}{calls}{ws}\]"
