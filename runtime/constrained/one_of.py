"""Which `oneOf` lists a grammar can enforce: those whose branches provably exclude each other.

A grammar enforces `oneOf` as `anyOf` (at least one branch); "exactly one" holds only when no
value can satisfy two branches. llguidance decides that for itself and was found to get it
wrong (benchmarks/results/json-corpus-validity-cpu-2026-12-06.json: three sampled outputs
matched two branches at once), so this conservative check runs first: branches are disjoint
when their `type`s share nothing, when their `const`/`enum` values share nothing, or when a
property both require is pinned to values they do not share (a discriminated union, as
pydantic writes them). Anything else is reported, and the schema is refused by name.
"""

from __future__ import annotations

import json
from typing import Any

from radixlm.runtime.constrained.json_schema import DATA_KEYWORDS, local_ref_target

_NUMERIC = {"integer", "number"}


def overlapping_one_of(schema: Any) -> list[str]:
    """JSON pointers of the `oneOf` lists whose branches are not provably disjoint."""
    found: list[str] = []
    _walk(schema, schema, "", found)
    return found


def _walk(node: Any, root: Any, path: str, found: list[str]) -> None:
    if isinstance(node, list):
        for i, item in enumerate(node):
            _walk(item, root, f"{path}/{i}", found)
        return
    if not isinstance(node, dict):
        return
    branches = node.get("oneOf")
    if isinstance(branches, list):
        resolved = [_resolve(b, root) for b in branches]
        if any(not _disjoint(a, b) for i, a in enumerate(resolved) for b in resolved[i + 1 :]):
            found.append(f"{path}/oneOf" if path else "/oneOf")
    for key, value in node.items():
        if key not in DATA_KEYWORDS:
            _walk(value, root, f"{path}/{key}", found)


def _resolve(node: Any, root: Any, depth: int = 0) -> Any:
    """A local `$ref` ("#/...") followed (a few levels); anything else as it is."""
    ref = node.get("$ref") if isinstance(node, dict) else None
    if not isinstance(ref, str) or depth > 8:
        return node
    target = local_ref_target(root, ref)
    return node if target is None else _resolve(target, root, depth + 1)


def _types(node: dict) -> set[str] | None:
    kind = node.get("type")
    if isinstance(kind, str):
        kind = [kind]
    if not isinstance(kind, list):
        return None
    kinds = set(kind)
    return kinds | {"number"} if "integer" in kinds else kinds | ({"integer"} if "number" in kinds else set())


def _values(node: Any) -> list | None:
    if not isinstance(node, dict):
        return None
    if "const" in node:
        return [node["const"]]
    if isinstance(node.get("enum"), list):
        return node["enum"]
    return None


def _disjoint_values(a: list, b: list) -> bool:
    # JSON equality: compare by canonical text, so 1 and true stay apart, as JSON Schema keeps them
    return not {json.dumps(v, sort_keys=True) for v in a} & {json.dumps(v, sort_keys=True) for v in b}


def _disjoint(a: Any, b: Any) -> bool:
    if not isinstance(a, dict) or not isinstance(b, dict):
        return False
    ta, tb = _types(a), _types(b)
    if ta is not None and tb is not None and not ta & tb:
        return True
    va, vb = _values(a), _values(b)
    if va is not None and vb is not None and _disjoint_values(va, vb):
        return True
    props_a, props_b = a.get("properties"), b.get("properties")
    if isinstance(props_a, dict) and isinstance(props_b, dict):
        required = set(a.get("required") or []) & set(b.get("required") or [])
        for name in required & set(props_a) & set(props_b):
            pa, pb = _values(props_a[name]), _values(props_b[name])
            if pa is not None and pb is not None and _disjoint_values(pa, pb):
                return True
    return False
