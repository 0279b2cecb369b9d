"""Structural tags: free text in which every tagged segment is held to its own JSON schema.

A tool-calling model writes prose and, somewhere in it, calls such as
`<function=get_weather>{"city": "Paris"}</function>`. A structural tag (SGLang's
`structural_tag`, OpenAI-style `response_format: {"type": "structural_tag", ...}`) constrains
only those calls:

    {"structures": [{"begin": "<function=get_weather>", "schema": {...}, "end": "</function>"}],
     "triggers": ["<function="]}

The text is free until it writes a trigger; from there it must continue with the `begin` of a
structure that starts with that trigger, then a JSON value of that structure's schema, then its
`end`, and is free again. Text that never writes a trigger is unconstrained, and stop tokens
may end the output wherever it is free (not inside a segment).

The constraint compiles to a Lark grammar for llguidance (outlines-core cannot express it): the
free text before each trigger is a lazy lexeme (it ends at the trigger's first occurrence), and
each schema is the same grammar a `json_schema` request of it would get (objects closed,
unknown formats dropped, unenforceable keywords refused; llguidance_backend.py).
"""

from __future__ import annotations

import json
from typing import Any

_KEYS = {"structures", "triggers"}
_STRUCTURE_KEYS = {"begin", "schema", "end"}


def normalize_structural_tag(value: Any) -> str:
    """The tag as canonical JSON text (`{"structures": [...], "triggers": [...]}`), from a dict
    or JSON text, SGLang's `"type": "structural_tag"` key allowed. Raises ValueError naming
    the problem."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise ValueError("structural_tag must be JSON text of an object (or a dict)") from None
    if not isinstance(value, dict):
        raise ValueError(
            f"structural_tag must be an object with structures and triggers, got {type(value).__name__}"
        )
    value = {k: v for k, v in value.items() if not (k == "type" and v == "structural_tag")}
    unknown = sorted(set(value) - _KEYS)
    if unknown or set(value) != _KEYS:
        raise ValueError(
            "structural_tag takes exactly 'structures' and 'triggers'"
            + (f" (unknown: {', '.join(map(str, unknown))})" if unknown else "")
        )
    triggers, structures = value["triggers"], value["structures"]
    if not isinstance(triggers, list) or not triggers or not all(isinstance(t, str) and t for t in triggers):
        raise ValueError("structural_tag triggers must be a non-empty list of non-empty strings")
    if len(set(triggers)) != len(triggers):
        raise ValueError(f"structural_tag triggers repeat: {triggers!r}")
    for a in triggers:
        for b in triggers:
            if a != b and b.startswith(a):
                raise ValueError(
                    f"structural_tag trigger {a!r} is a prefix of trigger {b!r} "
                    "(the shorter would always fire first)"
                )
    if not isinstance(structures, list) or not structures:
        raise ValueError("structural_tag structures must be a non-empty list")
    for i, s in enumerate(structures):
        where = f"structural_tag structures[{i}]"
        if not isinstance(s, dict) or set(s) != _STRUCTURE_KEYS:
            raise ValueError(f"{where} must be an object with exactly 'begin', 'schema' and 'end'")
        if not isinstance(s["begin"], str) or not isinstance(s["end"], str):
            raise ValueError(f"{where}: begin and end must be strings")
        if not isinstance(s["schema"], dict):
            raise ValueError(f"{where}: schema must be a JSON schema object")
        if not any(s["begin"].startswith(t) for t in triggers):
            raise ValueError(f"{where}: begin {s['begin']!r} starts with none of the triggers {triggers!r}")
    unused = [t for t in triggers if not any(s["begin"].startswith(t) for s in structures)]
    if unused:
        raise ValueError(f"structural_tag trigger(s) {unused!r} begin no structure")
    return json.dumps({"structures": structures, "triggers": triggers}, sort_keys=True, ensure_ascii=False)


def structural_tag_lark(text: str, whitespace_pattern: str | None) -> str:
    """The normalized tag as llguidance Lark text. Raises ValueError naming the structure whose
    schema cannot be enforced."""
    tag = json.loads(text)
    lines = ["%llguidance {}", "start: tagged* TEXT"]
    segments = []
    values: dict[str, str] = {}  # schema text -> its %json item (a strict tool's layouts share one)
    for k, trigger in enumerate(tag["triggers"]):
        bodies = []
        for i, s in enumerate(tag["structures"]):
            if not s["begin"].startswith(trigger):
                continue
            key = json.dumps(s["schema"], sort_keys=True)
            if key not in values:
                try:
                    values[key] = json_value(s["schema"], whitespace_pattern)
                except ValueError as exc:
                    raise ValueError(f"structural_tag structures[{i}].schema: {exc}") from None
            value = values[key]
            parts = [lark_literal(s["begin"][len(trigger) :]), value, lark_literal(s["end"])]
            lines.append(f"s{i}: " + " ".join(p for p in parts if p))
            bodies.append(f"s{i}")
        # lazy: the free text ends at the trigger's first occurrence
        lines.append(f"t{k}_trigger[lazy]: TEXT {lark_literal(trigger)}")
        lines.append(f"t{k}: t{k}_trigger ({' | '.join(bodies)})")
        segments.append(f"t{k}")
    lines.insert(2, "tagged: " + " | ".join(segments))
    lines.append(r"TEXT: /(.|\n)*/")
    return "\n".join(lines) + "\n"


def json_value(schema: dict, whitespace_pattern: str | None) -> str:
    """A Lark item (llguidance's `%json`) for a JSON value of `schema`, compiled as a
    json_schema request of it would be (objects closed, unknown formats dropped, the whitespace
    rule in its x-guidance options). Raises ValueError naming what cannot be enforced."""
    from radixlm.runtime.constrained.backend import Constraint
    from radixlm.runtime.constrained.llguidance_backend import llguidance_grammar

    compiled = llguidance_grammar(Constraint("json", json.dumps(schema)), whitespace_pattern)
    return f"%json {json.dumps(json.loads(compiled)['grammars'][0]['json_schema'])}"


def lark_literal(text: str) -> str:
    """A Lark string literal (llguidance reads JSON string escapes), or "" for nothing."""
    return json.dumps(text) if text else ""
