"""A corpus of real-world-style JSON schemas for constrained-decoding coverage tests.

The schemas live as JSON Lines under ``tests/data/json_schemas/`` (see its README.md): pydantic v2
models (``make_pydantic.py`` writes ``pydantic.jsonl``), OpenAI-style function-calling parameter
schemas, configs and API payload schemas from SchemaStore and public specs, and a sample of the
JSONSchemaBench dataset. Each entry is ``{"name", "kind", "source", "schema"}``; names are unique and
every schema passes its draft's metaschema check.
"""

from __future__ import annotations

import json
from pathlib import Path

CORPUS_DIR = Path(__file__).parent / "data" / "json_schemas"

KINDS = ("pydantic", "function_call", "recursive", "enum", "format", "union", "config", "api", "bench")


def load_corpus() -> list[dict]:
    """All corpus entries, sorted by name."""
    entries = []
    for path in sorted(CORPUS_DIR.glob("*.jsonl")):
        with path.open(encoding="utf-8") as f:
            entries.extend(json.loads(line) for line in f if line.strip())
    names = [e["name"] for e in entries]
    if len(names) != len(set(names)):
        dupes = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"duplicate schema names in {CORPUS_DIR}: {dupes}")
    return sorted(entries, key=lambda e: e["name"])
