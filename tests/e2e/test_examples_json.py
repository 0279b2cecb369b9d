"""examples/json_extraction.py runs end to end: every printed Contact came from a JSON-schema
gen, validated, and (re-parsed here) validates again; jump-forward tokens are reported."""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
ENV = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
HIT_RATE = re.compile(r"^cache hit rate: (\d+(?:\.\d+)?)%", re.M)


def _contact_model():
    sys.path.insert(0, str(EXAMPLES))  # the example imports its helper as a sibling module
    try:
        return importlib.import_module("json_extraction").Contact
    finally:
        sys.path.remove(str(EXAMPLES))


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

    contact_model = _contact_model()
    printed = re.findall(r"^validated Contact: (\{.*\})$", out, re.M)
    assert len(printed) == 4, out  # one run, then a run_batch of 3
    contacts = [contact_model.model_validate_json(text) for text in printed]
    assert all(c.role in ("customer", "supplier", "partner", "employee") for c in contacts)

    meta = re.findall(
        r"^  (\d+) tokens, (\d+) of them jump-forward \(forced by the schema\); finish: (\w+)$", out, re.M
    )
    assert len(meta) == 4, out
    for total, forced, finish in meta:
        assert finish == "stop", out  # the object closed, not cut off at max_tokens
        assert 0 < int(forced) < int(total), out  # keys and punctuation are forced, values are not
    assert re.search(r"^extracted 4 contacts; roles: \[", out, re.M), out
    rates = HIT_RATE.findall(out)
    assert len(rates) == 1 and 0 < float(rates[0]) <= 100, out  # the batch shares the system prompt
