"""Helpers shared by the corpus build scripts in this folder.

``problems()`` is the corpus's admission check (an object, under 60 KB compact, only local ``$ref``s,
passes its draft's metaschema); ``dumps()`` and ``write_jsonl()`` fix the serialisation, so re-running a
script on the same inputs rewrites its file byte for byte.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from jsonschema.validators import validator_for

CORPUS_DIR = Path(__file__).resolve().parent.parent
MAX_BYTES = 60_000
REF_KEYS = ("$ref", "$dynamicRef", "$recursiveRef")


def dumps(value) -> str:
    """Compact JSON, keys in their given order, non-ASCII kept as is."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def git_show(repo: str | Path, rev: str, path: str) -> bytes:
    """The bytes of ``path`` at commit ``rev`` of the git repository (bare or not) at ``repo``."""
    cmd = ["git", "-C", str(repo), "show", f"{rev}:{path}"]
    return subprocess.run(cmd, capture_output=True, check=True).stdout


def refs(node, out: list[str] | None = None) -> list[str]:
    """Every ``$ref``/``$dynamicRef``/``$recursiveRef`` string in ``node``, depth first."""
    if out is None:
        out = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key in REF_KEYS and isinstance(value, str):
                out.append(value)
            refs(value, out)
    elif isinstance(node, list):
        for value in node:
            refs(value, out)
    return out


def problems(schema, max_bytes: int = MAX_BYTES) -> str | None:
    """Why ``schema`` can't go into the corpus, or None when it can."""
    if not isinstance(schema, dict):
        return "not an object"
    size = len(dumps(schema).encode())
    if size > max_bytes:
        return f"too big {size}"
    non_local = [r for r in refs(schema) if not r.startswith("#")]
    if non_local:
        return f"non-local refs {non_local[:3]}"
    try:
        validator_for(schema).check_schema(schema)
    except Exception as e:  # SchemaError, or whatever a malformed schema makes the checker raise
        return f"check_schema: {str(e)[:150]}"
    return None


def write_jsonl(path: Path, entries: list[dict]) -> None:
    """Writes ``entries`` to ``path``, one compact JSON object a line, sorted by name."""
    with path.open("w", encoding="utf-8") as f:
        for entry in sorted(entries, key=lambda e: e["name"]):
            f.write(dumps(entry) + "\n")
