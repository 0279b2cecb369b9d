"""A request's constraint as the regex its automaton is compiled from.

A JSON schema (JSON text, a dict, a pydantic model class or a msgspec Struct type) is
normalised to canonical JSON text, checked for keywords the translation would silently drop,
and translated by outlines-core. A plain regex only gets a cheap syntax check here. Both run
in `SamplingParams.validate`, so most bad constraints are refused with the request instead of
failing later on the grammar compiler thread (grammar_cache.py).
"""

from __future__ import annotations

import json
import re
from typing import Any

# JSON-schema whitespace between tokens: what outlines-core uses by default (at most one space)
DEFAULT_WHITESPACE = r"[ ]?"
# A schema whose regex is longer is refused: building its automaton may take minutes, blocking
# the grammar thread (measured on tests/data/json_schemas/: regexes over ~16k characters took
# from 0.1 s to more than 30 s; the longest, megabytes, did not finish).
MAX_OUTLINES_REGEX_CHARS = 32768


def normalize_json_schema(schema: Any) -> str:
    """A JSON schema as canonical JSON text, from JSON text, a dict/bool, a pydantic model
    class or a msgspec Struct type. Raises ValueError/TypeError naming the problem."""
    if isinstance(schema, str):
        try:
            value = json.loads(schema)
        except json.JSONDecodeError as exc:
            raise ValueError(f"json_schema is not valid JSON: {exc}") from None
    elif isinstance(schema, (dict, bool)):
        value = schema
    elif isinstance(schema, type) and hasattr(schema, "model_json_schema"):  # pydantic v2 model
        value = schema.model_json_schema()
    elif isinstance(schema, type) and _is_msgspec_struct(schema):
        import msgspec

        value = msgspec.json.schema(schema)
    else:
        raise TypeError(
            f"json_schema must be JSON text, a dict, a pydantic model class or a msgspec Struct type, "
            f"got {type(schema).__name__}"
        )
    if not isinstance(value, (dict, bool)):
        raise ValueError(f"json_schema must be a JSON object (or true/false), got {type(value).__name__}")
    return json.dumps(value, separators=(",", ":"))  # key order kept: it orders the output


def _is_msgspec_struct(cls: type) -> bool:
    try:
        import msgspec
    except ImportError:
        return False
    return issubclass(cls, msgspec.Struct)


# Keywords the regex translation would silently drop; an output could then break them, so a
# schema using one is refused instead (naming it and where it is).
UNENFORCED_KEYWORDS = frozenset(
    {
        "minimum",
        "maximum",
        "exclusiveMinimum",
        "exclusiveMaximum",
        "multipleOf",
        "uniqueItems",
        "minProperties",
        "maxProperties",
        "patternProperties",
        "propertyNames",
        "dependentRequired",
        "dependentSchemas",
        "dependencies",
        "contains",
        "minContains",
        "maxContains",
        "if",
        "then",
        "else",
        "not",
        "unevaluatedProperties",
        "unevaluatedItems",
        # outlines-core extensions whose regexes accept invalid JSON numbers ("12.", "1e+")
        "maxDigitsFraction",
        "maxDigitsExponent",
    }
)
# The formats whose outlines-core regexes keep to safe characters. Its others break the JSON
# they sit in: "time" allows a backslash and any character after the seconds (`\\.` for `\.`),
# "email" a quoted local part with raw quotes, "uri" quotes and backslashes (found by
# benchmarks/json_corpus_validity.py); and it has no ipv4, hostname, duration...
SAFE_OUTLINES_FORMATS = frozenset({"date-time", "date", "uuid"})
# keywords whose values are JSON data, not subschemas: schema walkers copy them untouched
DATA_KEYWORDS = frozenset({"enum", "const", "default", "examples"})
_SCHEMA_MAPS = ("properties", "$defs", "definitions")  # name -> schema
_SCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")  # [schema, ...]
_SCHEMA_ONE = ("items", "additionalProperties", "additionalItems")  # a schema (or bool)


def unenforced_features(schema: Any, path: str = "") -> list[str]:
    """`keyword at /json/pointer` for every keyword of UNENFORCED_KEYWORDS in the schema."""
    if not isinstance(schema, dict):
        return []
    found = [f"{k} at {path or '/'}" for k in schema if k in UNENFORCED_KEYWORDS]
    # outlines-core keeps only one string constraint: a pattern next to a length, or a format
    # next to either, would be dropped
    lengths = [k for k in ("minLength", "maxLength") if k in schema]
    if "pattern" in schema and lengths:
        found.append(f"pattern together with {'/'.join(lengths)} at {path or '/'}")
    if "format" in schema and (lengths or "pattern" in schema):
        found.append(f"format together with {'/'.join(lengths) or 'pattern'} at {path or '/'}")
    if isinstance(schema.get("format"), str) and schema["format"] not in SAFE_OUTLINES_FORMATS:
        found.append(f"format {schema['format']} at {path or '/'}")
    for key in ("maxDigits", "maxDigitsInteger"):
        # outlines-core bounds the digits only from 2 up: below that (or not an integer) it
        # writes an unbounded run of digits
        value = schema.get(key)
        if key in schema and not (isinstance(value, int) and not isinstance(value, bool) and value >= 2):
            found.append(f"{key} other than an integer of at least 2 ({value!r}) at {path or '/'}")
    props = schema.get("properties")
    if isinstance(props, dict):  # outlines-core writes property names into the regex unescaped
        found += [
            f"a property name with a quote, backslash or control character ({name!r}) at {path or '/'}"
            for name in props
            if any(c in name for c in '"\\') or any(ord(c) < 0x20 for c in name)
        ]
    # outlines-core 0.2.14 reads a schema's properties before its type: {"type": "array",
    # "properties": {...}} becomes an object (found by benchmarks/json_corpus_validity.py)
    object_keys = [k for k in ("properties", "required", "additionalProperties") if k in schema]
    if isinstance(schema.get("type"), str) and schema["type"] != "object" and object_keys:
        found.append(f"{'/'.join(object_keys)} on a schema of type {schema['type']} at {path or '/'}")
    for key in _SCHEMA_MAPS:
        for name, sub in (schema.get(key) or {}).items() if isinstance(schema.get(key), dict) else []:
            if key == "properties" and _unconstrained(sub):
                # its any-value regex is an unparenthesised alternation, which spills into the
                # whole pattern (a bare number matched an object's schema)
                found.append(f"a property of any value ({name!r}) at {path or '/'}")
            found += unenforced_features(sub, f"{path}/{key}/{name}")
    for key in _SCHEMA_LISTS:
        for i, sub in enumerate(schema.get(key) or []) if isinstance(schema.get(key), list) else []:
            found += unenforced_features(sub, f"{path}/{key}/{i}")
    for key in _SCHEMA_ONE:
        found += unenforced_features(schema.get(key), f"{path}/{key}")
    return found


_ANNOTATIONS = frozenset({"title", "description", "default", "examples", "$comment", "deprecated"})


def _unconstrained(schema: Any) -> bool:
    """A schema any JSON value satisfies: true, or an object of annotations alone."""
    return schema is True or (isinstance(schema, dict) and set(schema) <= _ANNOTATIONS)


def local_ref_target(root: Any, ref: str) -> Any:
    """What a local `$ref` ("#/$defs/name", JSON-pointer escapes read) points to in `root`, or
    None where it points nowhere (or is not local)."""
    if not ref.startswith("#"):
        return None
    node = root
    for part in ref[1:].split("/")[1:]:
        part = part.replace("~1", "/").replace("~0", "~")
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def recursive_refs(schema: Any) -> list[str]:
    """The local `$ref`s (#/$defs/..., #/definitions/...) that reach themselves again: a
    recursive model, which outlines-core's regex cannot express (it wrote pydantic's
    JsonValue as nothing at all, leaving `"content": ` without a value)."""

    def refs_in(node: Any) -> set[str]:
        if isinstance(node, list):
            return set().union(*(refs_in(n) for n in node))
        if not isinstance(node, dict):
            return set()
        found = {node["$ref"]} if isinstance(node.get("$ref"), str) else set()
        for key, value in node.items():
            if key not in DATA_KEYWORDS:
                found |= refs_in(value)
        return found

    cyclic = []
    for ref in sorted(refs_in(schema)):
        seen, todo = {ref}, [ref]
        while todo and ref not in cyclic:
            for nxt in refs_in(local_ref_target(schema, todo.pop())):
                if nxt == ref:
                    cyclic.append(ref)
                elif nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
    return cyclic


def json_schema_to_regex(schema_json: str, whitespace_pattern: str | None = None) -> str:
    """The regex that matches exactly the JSON texts the schema allows (outlines-core's
    translation). Raises ValueError naming what is not supported."""
    from outlines_core.json_schema import build_regex_from_schema

    from radixlm.runtime.constrained.one_of import overlapping_one_of

    schema = json.loads(schema_json)
    # outlines-core writes oneOf as anyOf: only branches that exclude each other keep "exactly one"
    unenforced = unenforced_features(schema) + [
        f"oneOf whose branches may overlap (exactly one must match) at {at}"
        for at in overlapping_one_of(schema)
    ]
    unenforced += [f"recursive $ref {ref}" for ref in recursive_refs(schema)]
    if unenforced:
        raise ValueError(
            f"unsupported json_schema feature(s), which the output could not be held to: "
            f"{', '.join(unenforced[:5])}"
        )
    try:
        regex = build_regex_from_schema(
            schema_json, DEFAULT_WHITESPACE if whitespace_pattern is None else whitespace_pattern
        )
    except Exception as exc:  # outlines-core raises assorted types for unsupported features
        raise ValueError(f"unsupported json_schema: {exc}") from None
    if len(regex) > MAX_OUTLINES_REGEX_CHARS:
        raise ValueError(
            f"json_schema is too large for outlines-core: its regex has {len(regex)} characters, "
            f"the limit is {MAX_OUTLINES_REGEX_CHARS} (the llguidance backend takes most such schemas)"
        )
    return regex


def check_regex_syntax(pattern: str) -> None:
    """Cheap early check (Python's syntax is close to, not the same as, the automaton's; the
    compile step catches the rest)."""
    if not isinstance(pattern, str) or not pattern:
        raise ValueError(f"regex must be a non-empty string, got {pattern!r}")
    try:
        re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"invalid regex {pattern!r}: {exc}") from None
