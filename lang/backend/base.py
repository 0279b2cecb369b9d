"""What a backend must do for the interpreter. Each call gets the state's full text so far;
reuse of the shared prefix is the runtime's business (its radix cache).

A backend that talks to a chat API needs the conversation rather than the text: it sets
`takes_messages = True`, and generate / generate_stream then also get `messages=`, the closed
turns followed by the open turn (if any) with its content so far."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any

from radixlm.lang.chat_template import ChatTemplate, get_chat_template
from radixlm.lang.choices import ChoicesDecision, ChoicesSamplingMethod, normalized_logprob

GatherJoin = Callable[[], AbstractContextManager]  # run_batch's workers each run inside one


class BaseBackend:
    chat_template: ChatTemplate = get_chat_template("default")
    takes_messages: bool = False  # True: generate / generate_stream also get messages=[...]
    _rng: random.Random | None = None  # draws select's choice at temperature > 0 (None: a fresh one)

    def generate(
        self,
        prompt: str,
        sampling_params: dict[str, Any],
        return_logprob: bool = False,
        logprob_start_len: int | None = None,
        top_logprobs_num: int = 0,
    ) -> tuple[str | list[str], dict | list[dict]]:
        """(completion, meta_info); with n > 1 both are lists of n."""
        raise NotImplementedError

    def generate_stream(
        self,
        prompt: str,
        sampling_params: dict[str, Any],
        return_logprob: bool = False,
        logprob_start_len: int | None = None,
        top_logprobs_num: int = 0,
        **kwargs: Any,
    ) -> Iterator[tuple[str, dict]]:
        """(text delta, meta_info so far) pairs; the default streams the whole completion once."""
        text, meta = self.generate(
            prompt, sampling_params, return_logprob, logprob_start_len, top_logprobs_num, **kwargs
        )
        yield (text[0] if isinstance(text, list) else text), meta

    def choice_logprobs(self, prompt: str, choices: list[str], unconditional: bool = False):
        """Per choice, the logprob entries of its tokens after `prompt` (and, if asked, of the
        same tokens with no context): what `select` scores."""
        raise NotImplementedError(f"{type(self).__name__} cannot score choices")

    def choice_logprobs_and_usage(
        self, prompt: str, choices: list[str], unconditional: bool = False
    ) -> tuple[list, list | None, dict[str, int]]:
        """`choice_logprobs`, and what scoring cost where the backend knows it: `prompt_tokens`
        and `cached_tokens` of the shared prompt (select's meta_info gets them); {} here."""
        conditional, uncond = self.choice_logprobs(prompt, choices, unconditional)
        return conditional, uncond, {}

    def select(
        self, prompt: str, choices: list[str], temperature: float, method: ChoicesSamplingMethod
    ) -> ChoicesDecision:
        conditional, uncond, usage = self.choice_logprobs_and_usage(
            prompt, choices, method.requires_unconditional_logprobs
        )
        decision = method(
            choices=choices,
            normalized_prompt_logprobs=[normalized_logprob(c) for c in conditional],
            input_token_logprobs=conditional,
            output_token_logprobs=[[] for _ in choices],
            unconditional_token_logprobs=uncond,
            temperature=temperature,
            rng=self._rng,
        )
        decision.meta_info.update(usage)
        return decision

    def tokenize(self, text: str) -> dict:
        """`text`'s token ids exactly as the server counts a prompt's, and each token's (start,
        end) character span: {"input_ids": [...], "offsets": [(start, end), ...]}. Only the cache
        report calls it (never a program's own requests)."""
        raise NotImplementedError(
            f"{type(self).__name__} cannot tokenise text as its server does, so the cache report "
            "shows no divergence point for it (the radixlm runtime can)"
        )

    def cache_prefix(self, prompt: str) -> None:
        """Prefill `prompt` so that later requests sharing it hit the cache (optional)."""

    def gather_requests(self, workers: int, prefix: str | None) -> GatherJoin | None:
        """For run_batch: a way for its `workers` threads to send their requests together,
        `prefix` prefilled once; each worker runs inside `join()`. None: this backend sends
        each request as it comes (run_batch then prefills `prefix` with cache_prefix)."""
        return None

    def flush_cache(self) -> bool:
        return False

    def get_server_info(self) -> dict:
        return {}

    def shutdown(self) -> None:
        pass
