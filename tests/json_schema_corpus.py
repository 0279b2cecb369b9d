"""A corpus of real-world-style JSON schemas for constrained-decoding coverage tests.

The schemas live as JSON Lines under ``tests/data/json_schemas/`` (see its README.md): pydantic v2
models (``make_pydantic.py`` writes ``pydantic.jsonl``), OpenAI-style function-calling parameter
schemas, configs and API payload schemas from SchemaStore and public specs, and a sample of the
JSONSchemaBench dataset. Each entry is ``{"name", "kind", "source", "schema"}``; names are unique and
every schema passes its draft's metaschema check.
"""

from __future__ import annotations

import decimal
import json
from pathlib import Path

import jsonschema

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


def validate_output(text: str, schema: dict) -> None:
    """Raise (ValueError or jsonschema.ValidationError) unless `text` is JSON the schema allows.
    Numbers are read as decimals, in the instance and in the schema, because JSON numbers are
    decimal: `10053.30` is a multiple of `0.01`, which Python floats get wrong (10053.3 / 0.01
    is 1005329.9999999999)."""
    instance = json.loads(text, parse_float=_decimal)
    exact = json.loads(json.dumps(schema), parse_float=_decimal)
    with decimal.localcontext() as ctx:
        # multipleOf divides: a quotient of a few hundred digits (1e300 by 0.01) must be exact
        ctx.prec, ctx.Emax, ctx.Emin = 100_000, decimal.MAX_EMAX, decimal.MIN_EMIN
        jsonschema.validate(instance, exact)


def _decimal(text: str) -> decimal.Decimal | float:
    try:
        return decimal.Decimal(text)
    except decimal.InvalidOperation:  # an exponent past 10^18 digits: only a float holds it (inf)
        return float(text)
