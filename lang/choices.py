"""How `select` picks one of its choices, given each choice's token logprobs.

Pure functions over numbers: the backend scores every `prefix + choice` and hands the logprobs
here, so the rules can be tested without a model. A token logprob entry is a tuple or list whose
first element is the logprob (a float, or None where there is none, e.g. the very first token of
a sequence); the rest (token id, text) is carried into `meta_info` untouched.

With temperature 0 every method is greedy (ties go to the first choice). With temperature > 0 a
choice is drawn with probability softmax(score / temperature); SGLang refuses that case, but the
scores are already on a log scale, so sampling from them is the natural extension.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

TokenLogprobs = Sequence[Sequence[Any]]  # one choice: [(logprob | None, token_id, text), ...]


@dataclass(frozen=True)
class ChoicesDecision:
    decision: str
    meta_info: dict


def normalized_logprob(token_logprobs: TokenLogprobs) -> float:
    """Mean of the non-None logprobs; 0.0 when there are none (no evidence either way)."""
    values = [entry[0] for entry in token_logprobs if entry[0] is not None]
    return sum(values) / len(values) if values else 0.0


def _argmax(scores: Sequence[float]) -> int:
    # max() keeps the first of equal keys, so ties go to the lowest index.
    return max(range(len(scores)), key=lambda i: scores[i])


def softmax(scores: Sequence[float], temperature: float) -> list[float]:
    """softmax(scores / temperature), shifted by the maximum so large scores do not overflow."""
    top = max(scores)
    if top == -math.inf:  # every choice impossible: nothing to prefer, so uniform
        return [1.0 / len(scores)] * len(scores)
    weights = [math.exp((s - top) / temperature) for s in scores]
    total = sum(weights)
    return [w / total for w in weights]


def _draw(probabilities: Sequence[float], rng: random.Random) -> int:
    point = rng.random()
    cumulative = 0.0
    for i, p in enumerate(probabilities):
        cumulative += p
        if point < cumulative:
            return i
    # Rounding can leave the total a hair under 1.0: fall back to the last choice with mass.
    return max(i for i, p in enumerate(probabilities) if p > 0)


class ChoicesSamplingMethod:
    """Base class: subclasses turn logprobs into one score per choice (`_scores`) and may replace
    the greedy rule (`_greedy_index`); the shared `__call__` validates, picks and builds meta."""

    requires_unconditional_logprobs: bool = False

    def __call__(
        self,
        *,
        choices: list[str],
        normalized_prompt_logprobs: list[float],
        input_token_logprobs: list[list[tuple]],
        output_token_logprobs: list[list[tuple]] | None = None,
        unconditional_token_logprobs: list[list[tuple]] | None = None,
        temperature: float = 0.0,
        rng: random.Random | None = None,
    ) -> ChoicesDecision:
        if not choices:
            raise ValueError("select needs at least one choice")
        for label, values in (
            ("normalized_prompt_logprobs", normalized_prompt_logprobs),
            ("input_token_logprobs", input_token_logprobs),
        ):
            if len(values) != len(choices):
                raise ValueError(f"{label} has {len(values)} entries for {len(choices)} choices")
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")

        meta: dict[str, Any] = {
            "normalized_prompt_logprobs": normalized_prompt_logprobs,
            "input_token_logprobs": input_token_logprobs,
            "output_token_logprobs": output_token_logprobs,
        }
        scores = self._scores(
            normalized_prompt_logprobs, input_token_logprobs, unconditional_token_logprobs, meta
        )
        if temperature == 0:
            index = self._greedy_index(scores, meta)
        else:
            probabilities = softmax(scores, temperature)
            index = _draw(probabilities, rng if rng is not None else random.Random())
            meta["scores"] = list(scores)
            meta["probabilities"] = probabilities
        return ChoicesDecision(decision=choices[index], meta_info=meta)

    def _scores(
        self,
        normalized_prompt_logprobs: list[float],
        input_token_logprobs: list[list[tuple]],
        unconditional_token_logprobs: list[list[tuple]] | None,
        meta: dict[str, Any],
    ) -> list[float]:
        raise NotImplementedError

    def _greedy_index(self, scores: list[float], meta: dict[str, Any]) -> int:
        return _argmax(scores)


class TokenLengthNormalized(ChoicesSamplingMethod):
    """Highest mean token logprob. Favors long choices whose later tokens are easy to predict
    (a known failure: "Antidisestablishmentarianism" beats "Paris")."""

    def _scores(self, normalized_prompt_logprobs, input_token_logprobs, unconditional_token_logprobs, meta):
        return [float(x) for x in normalized_prompt_logprobs]


class GreedyTokenSelection(ChoicesSamplingMethod):
    """Race token by token: keep the choices with the best logprob at each position until one is
    left. Shorter choices are padded with their own mean so they stay in the race without an
    unfair advantage. Known failure: an attractive first token wins regardless of the rest.

    With temperature > 0 there is no race: a choice is drawn from softmax of its matrix row's
    mean, which (because of the mean padding) is simply its mean token logprob."""

    def _scores(self, normalized_prompt_logprobs, input_token_logprobs, unconditional_token_logprobs, meta):
        # None (no logprob) counts as 0.0: it only happens at the start of a sequence, so it hits
        # every choice in the same column and eliminates nobody.
        rows = [
            [0.0 if entry[0] is None else float(entry[0]) for entry in option]
            for option in input_token_logprobs
        ]
        width = max(len(row) for row in rows)
        matrix = []
        for row in rows:
            mean = sum(row) / len(row) if row else 0.0
            matrix.append(row + [mean] * (width - len(row)))
        meta["greedy_logprob_matrix"] = matrix
        return [sum(row) / width if width else 0.0 for row in matrix]

    def _greedy_index(self, scores, meta):
        matrix: list[list[float]] = meta["greedy_logprob_matrix"]
        alive = list(range(len(matrix)))
        for column in range(len(matrix[0])):
            best = max(matrix[i][column] for i in alive)
            alive = [i for i in alive if matrix[i][column] == best]
            if len(alive) == 1:
                break
        return alive[0]  # still tied after the last column: lowest index


class UnconditionalLikelihoodNormalized(ChoicesSamplingMethod):
    """Mean of (logprob in context - logprob with no context) per token: how much the prompt
    raises each choice above its prior, so a rare word is not punished for being rare
    (EleutherAI's "unconditional likelihood normalization")."""

    requires_unconditional_logprobs = True

    def _scores(self, normalized_prompt_logprobs, input_token_logprobs, unconditional_token_logprobs, meta):
        if unconditional_token_logprobs is None:
            raise ValueError("Unconditional token logprobs are required for this method.")
        if len(unconditional_token_logprobs) != len(input_token_logprobs):
            raise ValueError(
                f"unconditional_token_logprobs has {len(unconditional_token_logprobs)} "
                f"entries for {len(input_token_logprobs)} choices"
            )
        scores = []
        for i, (given, prior) in enumerate(zip(input_token_logprobs, unconditional_token_logprobs)):
            if len(given) != len(prior):
                raise ValueError(
                    f"choice {i}: {len(given)} input token logprobs but {len(prior)} unconditional ones"
                )
            # The unconditional first token has no context, hence no logprob: None counts as 0.
            diffs = [(a[0] or 0.0) - (b[0] or 0.0) for a, b in zip(given, prior)]
            scores.append(sum(diffs) / len(diffs) if diffs else 0.0)
        meta["unconditional_token_logprobs"] = unconditional_token_logprobs
        meta["normalized_unconditional_prompt_logprobs"] = list(scores)
        return scores


token_length_normalized = TokenLengthNormalized()
greedy_token_selection = GreedyTokenSelection()
unconditional_likelihood_normalized = UnconditionalLikelihoodNormalized()

__all__ = [
    "ChoicesDecision",
    "ChoicesSamplingMethod",
    "greedy_token_selection",
    "normalized_logprob",
    "softmax",
    "token_length_normalized",
    "unconditional_likelihood_normalized",
]
