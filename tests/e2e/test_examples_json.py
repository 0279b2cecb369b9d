"""examples/json_extraction.py runs end to end on the trained demo model: every printed Person
came from a JSON-schema gen, validated, (re-parsed here) validates again, and holds exactly
the name, age and city of its sentence; jump-forward tokens are reported."""

from __future__ import annotations

import importlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
ENV = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
HIT_RATE = re.compile(r"^cache hit rate: (\d+(?:\.\d+)?)%", re.M)


def _example():
    sys.path.insert(0, str(EXAMPLES))  # the example imports its helper as a sibling module
    try:
        return importlib.import_module("json_extraction")
    finally:
        sys.path.remove(str(EXAMPLES))


def test_the_examples_schema_is_the_demo_models():
    """The pydantic model asks for what the demo model was trained and evaluated under."""
    from radixlm.demo_model.tasks import EXTRACTION_SCHEMA

    schema = _example().Person.model_json_schema()
    assert list(schema["properties"]) == list(EXTRACTION_SCHEMA["properties"])  # the keys, in order
    for key, spec in EXTRACTION_SCHEMA["properties"].items():
        assert schema["properties"][key]["type"] == spec["type"]
    assert set(schema["required"]) == set(EXTRACTION_SCHEMA["required"])
    assert schema["additionalProperties"] is False


def test_json_extraction_example():
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / "json_extraction.py")],
        cwd=ROOT,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=240,
    )
    out = proc.stdout
    assert proc.returncode == 0, f"exited {proc.returncode}\n{out[-3000:]}\n{proc.stderr[-3000:]}"

    example = _example()
    printed = re.findall(r"^validated Person: (\{.*\}) \(right\)$", out, re.M)
    assert len(printed) == 4, out  # one run, then a run_batch of 3; each one right
    people = [example.Person.model_validate_json(text) for text in printed]
    expected = [person for _, person in example.TEXTS]
    assert [json.loads(text) for text in printed] == [p.model_dump() for p in people] == expected, out
    for text, person in example.TEXTS:  # the expected values are the sentence's own
        assert person["name"] in text and person["city"] in text and str(person["age"]) in text

    meta = re.findall(
        r"^  (\d+) tokens, (\d+) of them jump-forward \(forced by the schema\); finish: (\w+)$", out, re.M
    )
    assert len(meta) == 4, out
    for total, forced, finish in meta:
        assert finish == "stop", out  # the object closed, not cut off at max_tokens
        assert 0 < int(forced) < int(total), out  # keys and punctuation are forced, values are not
    assert re.search(r"^extracted 4 people, 4 right; names: \[", out, re.M), out
    rates = HIT_RATE.findall(out)
    assert len(rates) == 1 and 0 < float(rates[0]) <= 100, out  # the batch shares the system prompt
