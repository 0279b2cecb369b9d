"""Held-out accuracy of the shipped demo model through radixlm, greedy (so deterministic):
DSL programs on a Runtime and Engine batches, 200 examples per family, the README's table.

Measured for the shipped model (see README): 100% on every metric but extraction, 99.5%, the
same through both paths; the recipe with another seed scored 95.0% extraction and 99.5%
arithmetic. The bar is the issue's 90% for every metric; the margin absorbs a few answers
that a different CPU's float rounding might flip on the model's rare near-ties, and a model
retrained by the recipe (which lands within a few points) still passes."""

from __future__ import annotations

import pytest

from radixlm.demo_model import demo_model_path, evaluate, grading

BAR = 0.90


@pytest.fixture(scope="module")
def report():
    return evaluate.evaluate(demo_model_path(), count=200)


@pytest.mark.parametrize("path", ["dsl", "engine"])
@pytest.mark.parametrize("metric", grading.METRICS)
def test_heldout_accuracy(report, path, metric):
    accuracy = report[path][metric]
    assert accuracy >= BAR, f"{path}/{metric}: {accuracy:.1%}; misses: {report['misses'][f'{path}/{metric}']}"


def test_dsl_and_engine_agree_on_single_turn_tasks(report):
    """Same prompts, both greedy: the two paths may differ only where the DSL does more (the
    agent loop and the chat generate their own earlier turns)."""
    for metric in ("arithmetic", "extraction", "tool_call"):
        assert report["dsl"][metric] == report["engine"][metric]
