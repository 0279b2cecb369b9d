"""Tool calls in a finished model output, one parser per model family's format.

Every family is read the same way: the output is scanned for the family's call marker
(`<tool_call>`, `<|python_tag|>`, `[TOOL_CALLS]`, or for llama3 a bare JSON object at the
start); the text after a marker either holds a valid call body (JSON that names an offered
function and whose arguments are an object) or it does not. A valid body becomes calls, and
the whitespace around it is dropped; anything else, the marker included, stays content and
scanning goes on right after the marker. So a malformed or unknown call is never an error, and
an output without calls comes back as content unchanged.

`find_marker` and `match_body` are the two steps the streaming parser (streaming.py) drives
on a growing buffer: `match_body(..., final=False)` answers PENDING while more text could
still change its answer, which keeps the streamed result identical to `parse` of the whole.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar, Final

WHITESPACE = " \t\r\n"  # JSON's whitespace; what is dropped around a valid call
# OpenAI's function names (plus "."); mistral's NAME[ARGS] form relies on the character set
TOOL_NAME_RE = re.compile(r"[A-Za-z0-9_.\-]{1,64}")

HERMES_OPEN, HERMES_CLOSE = "<tool_call>", "</tool_call>"
LLAMA_PYTHON_TAG = "<|python_tag|>"
MISTRAL_TOOL_CALLS, MISTRAL_ARGS = "[TOOL_CALLS]", "[ARGS]"

_WS_RUN = re.compile(r"[ \t\r\n]*")
_NAME_RUN = re.compile(r"[A-Za-z0-9_.\-]*")
# A JSON string (its closing quote captured, so an unterminated one is told apart) or one
# structural character: splits a validated container into its members at C speed.
_JSON_TOKEN = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*(")?|[{}\[\],]', re.S)
_BRACKET_OR_QUOTE = re.compile(r'["{}\[\]]')
_STRING_REST = re.compile(r'[^"\\]*(?:\\.[^"\\]*)*(")?', re.S)  # stops before a trailing lone "\"


@dataclass(frozen=True)
class ParsedCall:
    """One tool call: the function's name and its arguments as JSON object text (as written)."""

    name: str
    arguments: str


class _Pending:
    def __repr__(self) -> str:
        return "PENDING"


PENDING: Final = _Pending()  # match_body's answer while more text could change it
BodyMatch = tuple[list[ParsedCall], int] | None | _Pending  # (calls, end of body) | no call here | wait


# ------------------------------------------------------------------------------ JSON helpers
@dataclass(frozen=True)
class ContainerScan:
    """How far a container scan got through `text`, to resume on a text that extends it."""

    text: str
    start: int
    pos: int
    depth: int
    in_string: bool


def json_container_end(
    text: str, start: int, memo: ContainerScan | None = None
) -> tuple[int | None, ContainerScan]:
    """End (exclusive) of the JSON object/array that opens at text[start], by bracket depth
    outside strings, or None while it is still open; and the scan's state. Passing the state
    of a scan of a prefix of `text` resumes it, so a stream's growing buffer is scanned once
    (not once per delta). Only the extent: json.loads validates."""
    if memo is not None and memo.start == start and text.startswith(memo.text):
        pos, depth, in_string = memo.pos, memo.depth, memo.in_string
        if depth == 0 and pos > start:  # that scan had found the end already
            return pos, memo
    else:
        pos, depth, in_string = start, 0, False
    while True:
        if in_string:
            m = _STRING_REST.match(text, pos)
            if m.group(1) is None:
                return None, ContainerScan(text, start, m.end(), depth, True)
            pos, in_string = m.end(), False
        m = _BRACKET_OR_QUOTE.search(text, pos)
        if m is None:
            return None, ContainerScan(text, start, len(text), depth, False)
        pos, ch = m.end(), m.group()
        if ch == '"':
            in_string = True
        elif ch in "{[":
            depth += 1
        else:
            depth -= 1
            if depth == 0:
                return pos, ContainerScan(text, start, pos, depth, False)


def _top_level_items(span: str) -> list[str]:
    """The raw top-level members of a valid JSON object/array text (split at depth-1 commas)."""
    depth, start, items = 0, 1, []
    for m in _JSON_TOKEN.finditer(span):
        tok = m.group()
        if tok[0] == '"':
            continue
        if tok in "{[":
            depth += 1
        elif tok in "}]":
            depth -= 1
            if depth == 0:
                items.append(span[start : m.start()])
                break
        elif depth == 1:  # a comma between members
            items.append(span[start : m.start()])
            start = m.end()
    items = [item.strip(WHITESPACE) for item in items]
    return [] if items == [""] else items


def _object_pairs(span: str) -> list[tuple[str, str]]:
    """(key, raw value text) of each member of a valid JSON object text, duplicates kept."""
    pairs = []
    for item in _top_level_items(span):
        key = _JSON_TOKEN.match(item)
        assert key is not None  # the span was validated: every member starts with its key
        rest = item[key.end() :].lstrip(WHITESPACE)
        pairs.append((json.loads(key.group()), rest[1:].strip(WHITESPACE)))  # rest[0] is ":"
    return pairs


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")  # Python's json would accept NaN and Infinity


_INVALID = object()


def load_json(text: str) -> Any:
    """Strict JSON (no NaN/Infinity); a sentinel instead of an exception when it is not."""
    try:
        return json.loads(text, parse_constant=_no_constants)
    except (ValueError, RecursionError):  # RecursionError: absurdly deep nesting
        return _INVALID


def parse_call_object(span: str, names: frozenset[str], arg_keys: tuple[str, ...]) -> ParsedCall | None:
    """`{"name": ..., "<arg key>": {...}}` as a call to an offered function, else None. A
    missing arguments key means no arguments ("{}"); two argument keys are ambiguous."""
    obj = load_json(span)
    if not isinstance(obj, dict):
        return None
    pairs = _object_pairs(span)
    if len(pairs) != len(obj):  # a key written twice: json.loads would silently keep the last
        return None
    name = obj.get("name")
    if not isinstance(name, str) or name not in names:
        return None
    present = [k for k in arg_keys if k in obj]
    if len(present) > 1 or (present and not isinstance(obj[present[0]], dict)):
        return None
    return ParsedCall(name, dict(pairs)[present[0]] if present else "{}")


def _literal_at(text: str, i: int, literal: str, final: bool) -> int | _Pending | None:
    """End of `literal` written at text[i], PENDING while the text ends inside it, or None."""
    if text.startswith(literal, i):
        return i + len(literal)
    if not final and literal.startswith(text[i:]):
        return PENDING
    return None


def _ws_end(text: str, i: int) -> int:
    return _WS_RUN.match(text, i).end()


# ------------------------------------------------------------------------------ parsers
class ToolCallParser:
    """A family's tool-call format. `parse` splits a finished output into content and calls;
    only calls to `tool_names` count."""

    family: ClassVar[str]
    markers: ClassVar[tuple[str, ...]]  # literal text that opens a call body
    arg_keys: ClassVar[tuple[str, ...]] = ("arguments",)
    json_at_start: ClassVar[bool] = False  # a bare JSON object opening the output is a call body
    after_call: ClassVar[re.Pattern[str]] = _WS_RUN  # dropped after a valid call

    def __init__(self, tool_names: Iterable[str]) -> None:
        self.tool_names = frozenset(tool_names)
        self._scan: ContainerScan | None = None  # the last container scan, resumed when the text grew

    def parse(self, text: str) -> tuple[str, list[ParsedCall]]:
        content: list[str] = []
        calls: list[ParsedCall] = []
        pos, bare_json = 0, self.json_at_start
        while True:
            hit = self.find_marker(text, pos, bare_json)
            bare_json = False
            if hit is None:
                content.append(text[pos:])
                break
            mstart, bstart = hit
            body = self.match_body(text, bstart, final=True)
            if not isinstance(body, tuple):  # no call here: the marker is content, scan on after it
                content.append(text[pos:bstart])
                pos = bstart
                continue
            found, end = body
            content.append(text[pos:mstart].rstrip(WHITESPACE))
            calls.extend(found)
            pos = self.after_call.match(text, end).end()
            bare_json = self.json_at_start
        return "".join(content), calls

    def find_marker(self, text: str, pos: int, bare_json: bool) -> tuple[int, int] | None:
        """(marker start, body start) of the first call marker at or after `pos`; with
        `bare_json`, a `{` after only whitespace counts as an empty marker."""
        if bare_json:
            i = _ws_end(text, pos)
            if i < len(text) and text[i] == "{":
                return i, i
        hits = [(i, i + len(m)) for m in self.markers if (i := text.find(m, pos)) >= 0]
        return min(hits) if hits else None

    def match_body(self, text: str, start: int, final: bool) -> BodyMatch:
        """The calls written from text[start] (right after a marker) and where they end, None
        when there is no valid call there, or (only when not `final`) PENDING."""
        raise NotImplementedError

    def _container_at(self, text: str, i: int, opener: str, final: bool) -> int | _Pending | None:
        """End of the JSON container that must open at text[i], PENDING, or None."""
        if i >= len(text):
            return None if final else PENDING
        if text[i] != opener:
            return None
        end, self._scan = json_container_end(text, i, self._scan)
        if end is None:
            return None if final else PENDING
        return end

    def _one_object(self, text: str, start: int, final: bool) -> BodyMatch:
        """Whitespace, then one call object."""
        i = _ws_end(text, start)
        end = self._container_at(text, i, "{", final)
        if not isinstance(end, int):
            return end
        call = parse_call_object(text[i:end], self.tool_names, self.arg_keys)
        return None if call is None else ([call], end)


class HermesParser(ToolCallParser):
    """Hermes / Qwen2.5 / Qwen3: `<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>`,
    once per call. A final call may lack its closing tag (some models end right after the JSON)."""

    family = "hermes"
    markers = (HERMES_OPEN,)

    def match_body(self, text: str, start: int, final: bool) -> BodyMatch:
        body = self._one_object(text, start, final)
        if not isinstance(body, tuple):
            return body
        calls, end = body
        j = _ws_end(text, end)
        if j == len(text):
            return (calls, j) if final else PENDING
        close = _literal_at(text, j, HERMES_CLOSE, final)
        return close if not isinstance(close, int) else (calls, close)


class Llama3Parser(ToolCallParser):
    """Llama 3.1+ JSON tool calls: `{"name": ..., "parameters": {...}}`, the output's start or
    after `<|python_tag|>`, several separated by `;`. "arguments" is accepted for "parameters"."""

    family = "llama3"
    markers = (LLAMA_PYTHON_TAG,)
    arg_keys = ("parameters", "arguments")
    json_at_start = True
    after_call = re.compile(r"[ \t\r\n]*(?:;[ \t\r\n]*)?")

    def match_body(self, text: str, start: int, final: bool) -> BodyMatch:
        return self._one_object(text, start, final)


class MistralParser(ToolCallParser):
    """Mistral: `[TOOL_CALLS][{"name": ..., "arguments": {...}}, ...]`, or the newer
    `[TOOL_CALLS]name[ARGS]{...}` (one call per marker). One bad call voids its whole array."""

    family = "mistral"
    markers = (MISTRAL_TOOL_CALLS,)

    def match_body(self, text: str, start: int, final: bool) -> BodyMatch:
        i = _ws_end(text, start)
        if i < len(text) and text[i] == "[":
            end = self._container_at(text, i, "[", final)
            if not isinstance(end, int):
                return end
            span = text[i:end]
            if not isinstance(load_json(span), list):
                return None
            items = _top_level_items(span)
            parsed = [parse_call_object(item, self.tool_names, self.arg_keys) for item in items]
            calls = [call for call in parsed if call is not None]
            return (calls, end) if calls and len(calls) == len(parsed) else None
        name_end = _NAME_RUN.match(text, i).end()
        if name_end - i > 64:
            return None
        if name_end == len(text):
            return None if final else PENDING
        if name_end == i:
            return None
        args_at = _literal_at(text, name_end, MISTRAL_ARGS, final)
        if not isinstance(args_at, int):
            return args_at
        name = text[i:name_end]
        if name not in self.tool_names:
            return None
        j = _ws_end(text, args_at)
        end = self._container_at(text, j, "{", final)
        if not isinstance(end, int):
            return end
        return ([ParsedCall(name, text[j:end])], end) if isinstance(load_json(text[j:end]), dict) else None


PARSERS: dict[str, type[ToolCallParser]] = {
    cls.family: cls for cls in (HermesParser, Llama3Parser, MistralParser)
}


def get_parser(name: str) -> type[ToolCallParser]:
    """The parser class of a family name; ValueError naming the known ones otherwise."""
    try:
        return PARSERS[name]
    except KeyError:
        raise ValueError(f"unknown tool-call parser {name!r}; known: {', '.join(sorted(PARSERS))}") from None


def detect_parser(chat_template: str | None) -> str | None:
    """The family whose call format a chat template writes, or None when it shows none."""
    if not chat_template:
        return None
    if HERMES_OPEN in chat_template:
        return "hermes"
    if MISTRAL_TOOL_CALLS in chat_template:
        return "mistral"
    if LLAMA_PYTHON_TAG in chat_template or (
        '"parameters"' in chat_template and "<|start_header_id|>" in chat_template
    ):
        return "llama3"
    return None
