"""The JSON-schema corpus (tests/data/json_schemas/: pydantic models, function-calling
parameters, SchemaStore configs, JSONSchemaBench): what each backend accepts, that everything
refused is refused by name, and that sampled outputs of the accepted schemas validate.
The whole corpus at temperature 1.0 is benchmarks/json_corpus_validity.py (its report is in
benchmarks/results/); here every eighth accepted schema runs."""

from __future__ import annotations

import pytest
from helpers import get_engine
from json_schema_corpus import load_corpus, validate_output

from radixlm.runtime.constrained.backend import Constraint, check_constraint
from radixlm.runtime.constrained.json_schema import normalize_json_schema

CORPUS = load_corpus()
TEXTS = {e["name"]: normalize_json_schema(e["schema"]) for e in CORPUS}


def verdicts(backend: str) -> dict[str, str | None]:
    """name -> None when accepted, else the refusal message."""
    out: dict[str, str | None] = {}
    for name, text in TEXTS.items():
        try:
            check_constraint(Constraint("json", text), backend, None)
            out[name] = None
        except ValueError as exc:
            out[name] = str(exc)
    return out


@pytest.fixture(scope="module")
def auto() -> dict[str, str | None]:
    return verdicts("auto")


def test_auto_accepts_what_either_backend_accepts_and_names_every_refusal(auto):
    assert len(CORPUS) >= 300
    outlines, llguidance = verdicts("outlines"), verdicts("llguidance")
    for name in TEXTS:
        if outlines[name] is None or llguidance[name] is None:
            assert auto[name] is None, f"{name}: a backend accepts it but auto refuses: {auto[name]}"
    for name, why in auto.items():
        if why is not None:
            assert why.startswith(("unsupported json_schema", "invalid json_schema")), (name, why)
    accepted = sum(v is None for v in auto.values())
    # measured when the llguidance backend came in: outlines-core alone 116/324, auto 251/324
    assert accepted >= 0.75 * len(CORPUS), f"auto accepts only {accepted}/{len(CORPUS)}"
    assert accepted > sum(v is None for v in outlines.values())


def test_sampled_outputs_of_accepted_schemas_validate(auto):
    accepted = [e for e in CORPUS if auto[e["name"]] is None]
    sample = accepted[::8]
    engine = get_engine("llama")
    outs = engine.generate(
        [f"A JSON value for {e['name']}:" for e in sample],
        [
            {"json_schema": TEXTS[e["name"]], "temperature": 1.0, "seed": i, "max_new_tokens": 384}
            for i, e in enumerate(sample)
        ],
    )
    stopped = 0
    for entry, out in zip(sample, outs):
        if out["meta_info"]["finish_reason"]["type"] != "stop":
            continue  # cut by max_new_tokens: the constraint held, the text is unfinished
        stopped += 1
        validate_output(out["text"], entry["schema"])
    # a random model often runs past 384 tokens on a wide schema (CI: 21 of 32 finished)
    assert stopped >= 0.5 * len(sample), f"only {stopped}/{len(sample)} outputs finished"
