"""select's decision rules on mock logprobs (the SGLang unit-test data), plus ties, sampling with
temperature and the missing-unconditional error."""

from __future__ import annotations

import math
import random

import pytest

from radixlm.lang.choices import (
    ChoicesDecision,
    greedy_token_selection,
    normalized_logprob,
    softmax,
    token_length_normalized,
    unconditional_likelihood_normalized,
)

CHOICES = ["organ", "organism", "antidisestablishmentarianism"]
NORMALIZED = [-0.1, -0.2, -0.05]
# Entries are 1-tuples for the first two choices and lists for the third: both shapes must work.
INPUT = [[(-0.1,)], [(-0.1,), (-0.3,)], [[-0.4], [-0.25], [-0.1]] + [[-0.01]] * 5]
UNCONDITIONAL = [[(None,)], [(None,), (-1.4,)], [[None], [-0.25], [-0.1]] + [[-0.01]] * 5]


def decide(method, **overrides) -> ChoicesDecision:
    kwargs = dict(
        choices=CHOICES,
        normalized_prompt_logprobs=NORMALIZED,
        input_token_logprobs=INPUT,
        output_token_logprobs=[[]] * 3,
        unconditional_token_logprobs=UNCONDITIONAL,
    )
    kwargs.update(overrides)
    return method(**kwargs)


def test_token_length_normalized_picks_highest_mean():
    result = decide(token_length_normalized)
    assert result.decision == "antidisestablishmentarianism"
    assert result.meta_info["normalized_prompt_logprobs"] == NORMALIZED
    assert result.meta_info["input_token_logprobs"] is INPUT
    assert result.meta_info["output_token_logprobs"] == [[]] * 3
    assert not token_length_normalized.requires_unconditional_logprobs


def test_greedy_token_selection_races_token_by_token():
    result = decide(greedy_token_selection)
    assert result.decision == "organ"
    expected = [[-0.1] * 8, [-0.1, -0.3] + [-0.2] * 6, [-0.4, -0.25, -0.1] + [-0.01] * 5]
    matrix = result.meta_info["greedy_logprob_matrix"]
    assert len(matrix) == 3
    for row, want in zip(matrix, expected):
        assert row == pytest.approx(want)
    assert set(result.meta_info) >= {
        "normalized_prompt_logprobs",
        "input_token_logprobs",
        "output_token_logprobs",
    }


def test_unconditional_likelihood_normalized_subtracts_the_prior():
    result = decide(unconditional_likelihood_normalized)
    assert result.decision == "organism"
    assert result.meta_info["normalized_unconditional_prompt_logprobs"] == pytest.approx([-0.1, 0.5, -0.05])
    assert result.meta_info["unconditional_token_logprobs"] is UNCONDITIONAL
    assert unconditional_likelihood_normalized.requires_unconditional_logprobs


def test_unconditional_missing_raises():
    with pytest.raises(ValueError, match="Unconditional token logprobs are required for this method."):
        decide(unconditional_likelihood_normalized, unconditional_token_logprobs=None)


def test_ties_go_to_the_first_choice():
    tied = dict(
        choices=["a", "b", "c"],
        normalized_prompt_logprobs=[-1.0, -0.5, -0.5],
        input_token_logprobs=[[(-1.0,)], [(-0.5,), (-0.5,)], [(-0.5,)]],
        unconditional_token_logprobs=[[(None,)], [(None,), (0.0,)], [(None,)]],
    )
    assert token_length_normalized(**tied).decision == "b"
    # Greedy: b and c tie on every column (c is padded with its own mean -0.5).
    assert greedy_token_selection(**tied).decision == "b"
    assert unconditional_likelihood_normalized(**tied).decision == "b"
    # Equal on all columns including padding: lowest index.
    same = dict(
        choices=["x", "y"],
        normalized_prompt_logprobs=[-0.3, -0.3],
        input_token_logprobs=[[(-0.3, 7, "x")], [(-0.3, 8, "y")]],
    )
    assert greedy_token_selection(**same).decision == "x"
    assert token_length_normalized(**same).decision == "x"


def test_none_logprobs_and_helper():
    assert normalized_logprob([(None, 1, "a"), (-1.0, 2, "b"), (-3.0, 3, "c")]) == -2.0
    assert normalized_logprob([(None,)]) == 0.0
    assert normalized_logprob([]) == 0.0
    # A shared None first column eliminates nobody; the second column decides.
    result = greedy_token_selection(
        choices=["p", "q"],
        normalized_prompt_logprobs=[-2.0, -1.0],
        input_token_logprobs=[[(None,), (-2.0,)], [(None,), (-1.0,)]],
    )
    assert result.decision == "q"


@pytest.mark.parametrize(
    "method", [token_length_normalized, greedy_token_selection, unconditional_likelihood_normalized]
)
@pytest.mark.parametrize("temperature", [0.05, 0.2])
def test_temperature_sampling_matches_softmax(method, temperature):
    rng = random.Random(1234)
    draws = 4000
    counts = dict.fromkeys(CHOICES, 0)
    first = None
    for _ in range(draws):
        result = decide(method, temperature=temperature, rng=rng)
        counts[result.decision] += 1
        first = first or result
    scores = first.meta_info["scores"]
    probabilities = first.meta_info["probabilities"]
    assert probabilities == pytest.approx(softmax(scores, temperature))
    assert sum(probabilities) == pytest.approx(1.0)
    for choice, p in zip(CHOICES, probabilities):
        # 5 standard deviations of a binomial proportion, plus a little slack for p near 0.
        tolerance = 5 * math.sqrt(p * (1 - p) / draws) + 0.005
        assert abs(counts[choice] / draws - p) < tolerance, (choice, counts, probabilities)


def test_temperature_scores_per_method():
    t = 0.1
    assert decide(token_length_normalized, temperature=t).meta_info["scores"] == NORMALIZED
    # Greedy samples from each matrix row's mean, which the mean padding keeps at the choice's mean.
    greedy = decide(greedy_token_selection, temperature=t).meta_info
    assert greedy["scores"] == pytest.approx([-0.1, -0.2, (-0.4 - 0.25 - 0.1 - 0.05) / 8])
    assert "greedy_logprob_matrix" in greedy
    uncond = decide(unconditional_likelihood_normalized, temperature=t).meta_info
    assert uncond["scores"] == pytest.approx([-0.1, 0.5, -0.05])


def test_sampling_is_reproducible_with_a_seeded_rng():
    picks_a = [
        decide(token_length_normalized, temperature=1.0, rng=random.Random(7)).decision for _ in range(5)
    ]
    rng = random.Random(7)
    first = decide(token_length_normalized, temperature=1.0, rng=rng).decision
    assert picks_a == [first] * 5
    # Without an rng a fresh one is used; it must still return one of the choices.
    assert decide(token_length_normalized, temperature=1.0).decision in CHOICES


def test_softmax_is_stable():
    assert softmax([1000.0, 1000.0], 1.0) == pytest.approx([0.5, 0.5])
    assert softmax([-math.inf, -math.inf], 1.0) == [0.5, 0.5]
    assert softmax([0.0, -math.inf], 0.5) == [1.0, 0.0]


def test_bad_input_is_rejected():
    with pytest.raises(ValueError, match="at least one choice"):
        token_length_normalized(choices=[], normalized_prompt_logprobs=[], input_token_logprobs=[])
    with pytest.raises(ValueError, match="normalized_prompt_logprobs"):
        decide(token_length_normalized, normalized_prompt_logprobs=[-0.1])
    with pytest.raises(ValueError, match="temperature"):
        decide(token_length_normalized, temperature=-1.0)
    with pytest.raises(ValueError, match="choice 1"):
        decide(
            unconditional_likelihood_normalized,
            unconditional_token_logprobs=[[(None,)], [(None,)], UNCONDITIONAL[2]],
        )


def test_decision_is_frozen():
    result = decide(token_length_normalized)
    with pytest.raises(AttributeError):
        result.decision = "organ"  # type: ignore[misc]
