"""The task families: held-out examples are never drawn for training, draws are reproducible,
and each grader accepts the reference answer and refuses a wrong one."""

from __future__ import annotations

import json
import random

import pytest

from radixlm.demo_model import grading, tasks, wordlists
from radixlm.demo_model.chat_format import tool_call_text


def _training(count: int = 3000) -> list[tasks.Example]:
    rng = random.Random(11)
    return [tasks.training_example(rng) for _ in range(count)]


def test_training_never_draws_a_heldout_problem_name_or_city():
    heldout_names = {n for n in wordlists.FIRST_NAMES if tasks.heldout("name", n)}
    heldout_cities = {c for c in wordlists.CITIES if tasks.heldout("city", c)}
    assert 0.1 < len(heldout_names) / len(wordlists.FIRST_NAMES) < 0.3
    assert 0.1 < len(heldout_cities) / len(wordlists.CITIES) < 0.3
    for ex in _training():
        if ex.family == "arithmetic":
            d = ex.data
            assert not tasks.heldout("sum", f"{d['a']}{d['op']}{d['b']}")
        elif ex.family == "sentiment":
            assert not tasks.heldout("review", ex.data["review"])
        elif ex.family == "extraction":
            assert ex.expected["city"] not in heldout_cities
            assert ex.expected["name"].split()[0] not in heldout_names
        elif ex.family == "memory" and ex.expected:
            assert ex.expected.split()[0] not in heldout_names


def test_heldout_examples_are_reproducible_and_heldout():
    for family in tasks.EVALUATED:
        first = tasks.heldout_examples(family, 30)
        assert first == tasks.heldout_examples(family, 30)
        assert first[:10] == tasks.heldout_examples(family, 10)  # a smaller count is a prefix
        for ex in first:
            if family == "extraction":
                assert tasks.heldout("city", ex.expected["city"])
                assert tasks.heldout("name", ex.expected["name"].split()[0])
            if family == "arithmetic":
                assert tasks.heldout("sum", f"{ex.data['a']}{ex.data['op']}{ex.data['b']}")


@pytest.mark.parametrize(
    ("family", "phrase"),
    [
        ("arithmetic", "What is "),
        ("sentiment", "Is this review positive or negative? "),
        ("extraction", "Extract name, age and city as JSON: "),
        ("tool_use", "Use the calculator: what is "),
        ("memory", "My name is "),
    ],
)
def test_heldout_examples_use_the_documented_phrasings(family, phrase):
    for ex in tasks.heldout_examples(family, 20):
        users = [m["content"] for m in ex.messages if m["role"] == "user"]
        assert users[0].startswith(phrase)
        if family == "memory":
            assert users[-1] == "What is my name?"
        if family == "tool_use":
            assert ex.tools == [tasks.CALCULATOR_TOOL] and " * " in users[0]


def test_graders_accept_the_reference_and_refuse_a_wrong_answer():
    wrong = {
        "arithmetic": lambda ex: f"{ex.data['a']} {ex.data['op']} {ex.data['b']} = {ex.expected + 1}.",
        "sentiment": lambda ex: "negative" if ex.expected == "positive" else "positive",
        "extraction": lambda ex: json.dumps({**ex.expected, "age": ex.expected["age"] + 1}),
        "memory": lambda ex: "Your name is Nobody.",
    }
    for family in tasks.EVALUATED:
        for ex in tasks.heldout_examples(family, 10):
            stages = grading.stages(ex)
            if family == "tool_use":
                call, answer = stages
                reference = tool_call_text("calculator", {"expression": ex.data["expression"]})
                assert call.check(reference)
                assert not call.check(reference.replace("*", "+"))
                assert answer.check(ex.messages[-1]["content"])
                assert not answer.check(f"{ex.data['expression']} = {ex.expected + 1}.")
                continue
            [stage] = stages
            assert stage.check(ex.messages[-1]["content"])
            assert not stage.check(wrong[family](ex))
