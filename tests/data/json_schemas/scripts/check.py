"""Checks the corpus and prints its make-up; exits 1 if a check fails.

Checks: every ``*.jsonl`` line is an entry ``{"name", "kind", "source", "schema"}`` with a known kind;
each file is sorted by name and names are unique across files; every schema passes the admission check
(``common.problems``: an object, under 60 KB compact, no non-local ``$ref``s, passes its draft's
metaschema); the entry counts in README.md's "Files" and "Kinds" tables match the files.

Prints: entries and bytes per file, counts per kind and per source, the largest schemas, the schemas
with recursive ``$ref``s, the ``$schema`` drafts and the string formats used.

Run from the repository root: ``python tests/data/json_schemas/scripts/check.py``.
"""

from __future__ import annotations

import json
import re
import sys
import warnings
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[3]))  # tests/, for json_schema_corpus

from common import CORPUS_DIR, MAX_BYTES, dumps, problems, refs
from json_schema_corpus import KINDS, load_corpus

KEYS = {"name", "kind", "source", "schema"}
UPSTREAMS = (
    "SchemaStore/schemastore",
    "guidance-ai/jsonschemabench",
    "OAI/OpenAPI-Specification",
    "geojson/schema",
    "cloudevents/spec",
)


def origin(entry: dict) -> str:
    for repo in UPSTREAMS:
        if f"github.com/{repo}/" in entry["source"]:
            return repo
    return "written for this corpus: " + entry["name"].split(".")[0]


def is_recursive(schema: dict) -> bool:
    """Whether a definition reaches itself through local ``$ref``s, or anything refers to ``#``."""
    all_refs = refs(schema)
    if "#" in all_refs:
        return True
    defs = {}
    for container in ("$defs", "definitions"):
        for key, value in (schema.get(container) or {}).items():
            defs[f"#/{container}/{key}"] = value
    graph = {d: {r for r in refs(v) if r in defs} for d, v in defs.items()}
    for start, targets in graph.items():
        seen, stack = set(), list(targets)
        while stack:
            node = stack.pop()
            if node == start:
                return True
            if node not in seen:
                seen.add(node)
                stack.extend(graph[node])
    return False


def string_formats(node, counts: Counter) -> Counter:
    if isinstance(node, dict):
        if isinstance(node.get("format"), str) and node.get("type") in ("string", ["string", "null"], None):
            counts[node["format"]] += 1
        for value in node.values():
            string_formats(value, counts)
    elif isinstance(node, list):
        for value in node:
            string_formats(value, counts)
    return counts


def readme_counts(table: str) -> dict[str, int]:
    """``{first cell: count}`` of the rows of README.md's table under ``## <table>``."""
    text = (CORPUS_DIR / "README.md").read_text(encoding="utf-8")
    section = text.split(f"## {table}\n", 1)[1].split("\n## ", 1)[0]
    return {m[1]: int(m[2]) for m in re.finditer(r"^\| `([^`]+)` \| (\d+) \|", section, re.M)}


def main() -> int:
    warnings.filterwarnings("ignore", category=FutureWarning)  # jsonschema compiling upstream regexes
    failures = []
    per_file = {}
    for path in sorted(CORPUS_DIR.glob("*.jsonl")):
        lines = path.read_text(encoding="utf-8").splitlines()
        entries = [json.loads(line) for line in lines]
        per_file[path.name] = entries
        names = [e.get("name") for e in entries]
        if names != sorted(names):
            failures.append(f"{path.name}: not sorted by name")
        for entry in entries:
            if set(entry) != KEYS:
                failures.append(f"{path.name}: {entry.get('name')}: keys {sorted(entry)}")
            elif entry["kind"] not in KINDS:
                failures.append(f"{entry['name']}: unknown kind {entry['kind']!r}")
            elif problem := problems(entry["schema"]):
                failures.append(f"{entry['name']}: {problem}")
        print(f"{path.name}: {len(entries)} entries, {path.stat().st_size} bytes")
    try:
        corpus = load_corpus()  # also checks that names are unique across files
    except ValueError as e:
        failures.append(str(e))
        corpus = [e for entries in per_file.values() for e in entries]

    total_bytes = sum(f.stat().st_size for f in CORPUS_DIR.glob("*.jsonl"))
    print(f"total: {len(corpus)} entries, {total_bytes} bytes")
    kinds = Counter(e["kind"] for e in corpus)
    print("per kind:", dict(kinds))
    print("per source:", dict(Counter(origin(e) for e in corpus)))
    sizes = sorted(((len(dumps(e["schema"]).encode()), e["name"]) for e in corpus), reverse=True)
    print(f"largest (limit {MAX_BYTES}):", sizes[:6])
    recursive = [e["name"] for e in corpus if is_recursive(e["schema"])]
    print(f"recursive: {len(recursive)}", recursive)
    print("drafts:", dict(Counter(e["schema"].get("$schema", "(none: 2020-12)") for e in corpus)))
    formats = Counter()
    for entry in corpus:
        string_formats(entry["schema"], formats)
    print("string formats:", dict(formats.most_common()))

    readme_files = readme_counts("Files")
    actual_files = {name: len(entries) for name, entries in per_file.items()}
    if readme_files != actual_files:
        failures.append(f"README.md Files table {readme_files} != files {actual_files}")
    readme_kinds = readme_counts("Kinds")
    if readme_kinds != dict(kinds):
        failures.append(f"README.md Kinds table {readme_kinds} != kinds {dict(kinds)}")

    for failure in failures:
        print("FAIL", failure)
    print("FAILED" if failures else "OK", f"({len(failures)} failures)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
