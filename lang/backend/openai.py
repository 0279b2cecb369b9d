"""Any OpenAI-compatible server as a backend, through the official `openai` client: OpenAI
itself, vLLM, SGLang, or `radixlm serve`.

* Chat models (`is_chat_model=True`) get the program's conversation, not its text: the
  interpreter hands over `messages=` (closed turns plus the open one), and a gen must open an
  assistant turn, since a chat API cannot continue a partly written turn or text outside roles.
* Completion models get the text, built with `chat_template` where the program uses roles.
* Sampling parameters map to OpenAI's names; those OpenAI lacks (top_k, min_p, regex...) go in
  `extra_body`, which vLLM, SGLang and radixlm servers read, and only when they differ from
  their defaults, so a plain OpenAI endpoint never sees them unless a program asks.
* select scores each choice like the runtime backend, from prompt logprobs: one completions
  request with `echo=True, logprobs=1, max_tokens=0` over the prompt and every prompt + choice.
  That needs a completion model on a server that echoes with logprobs (vLLM, SGLang, radixlm);
  OpenAI's chat models cannot, and select on them raises NotImplementedError.
* Token logprobs in meta_info are `(logprob, None, token_text)`: the API gives token text, not
  ids, so the id slot (SGLang's `[logprob, id, text]` layout) is None.
* Server errors (`openai.APIError` and its kinds) propagate with the server's message.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Iterator
from typing import Any

try:
    import openai
except ImportError as exc:  # an optional dependency: only this backend needs it
    raise ImportError(
        "rl.OpenAI needs the openai package: pip install 'radixlm[openai]' (or openai)"
    ) from exc

from radixlm.lang.backend.base import BaseBackend
from radixlm.lang.chat_template import ChatTemplate, get_chat_template

# OpenAI's own completion (non-chat) models; any other name is taken for a chat model unless
# is_chat_model says otherwise (SGLang's rule).
COMPLETION_MODEL_NAMES = ("gpt-3.5-turbo-instruct", "davinci-002", "babbage-002")

# runtime name -> OpenAI name, sent as ordinary request fields
_STANDARD = {
    "max_new_tokens": "max_tokens",
    "n": "n",
    "temperature": "temperature",
    "top_p": "top_p",
    "frequency_penalty": "frequency_penalty",
    "presence_penalty": "presence_penalty",
    "seed": "seed",
}
# runtime name -> (extra_body name, default): sent in extra_body only when not the default
_EXTRA = {
    "top_k": ("top_k", -1),
    "min_p": ("min_p", 0.0),
    "repetition_penalty": ("repetition_penalty", 1.0),
    "min_new_tokens": ("min_tokens", 0),
    "ignore_eos": ("ignore_eos", False),
    "regex": ("regex", None),
    "ebnf": ("ebnf", None),
    "grammar": ("grammar", None),
    "stop_token_ids": ("stop_token_ids", None),
}


def guess_is_chat_model(model: str) -> bool:
    return not model.startswith(COMPLETION_MODEL_NAMES)


def _uses_max_completion_tokens(model: str) -> bool:
    """OpenAI's reasoning models refuse max_tokens and take max_completion_tokens."""
    name = model.rsplit("/", 1)[-1]
    return name.startswith(("o1", "o3", "o4"))


def _schema(value: Any) -> dict:
    """A JSON schema given as JSON text, a dict, or a pydantic model class."""
    if isinstance(value, str):
        return json.loads(value)
    if isinstance(value, dict):
        return value
    if hasattr(value, "model_json_schema"):
        return value.model_json_schema()
    raise TypeError(f"json_schema must be JSON text, a dict or a pydantic model, got {type(value).__name__}")


class OpenAI(BaseBackend):
    def __init__(
        self,
        model: str,
        base_url: str | None = None,
        api_key: str | None = None,
        is_chat_model: bool | None = None,
        chat_template: str | ChatTemplate | None = None,
        **client_kwargs: Any,
    ) -> None:
        """`is_chat_model=None` guesses from the name (SGLang's rule: every name but OpenAI's legacy
        completion models is a chat model), so say it for a base model on another server.
        `chat_template` (a name or a ChatTemplate; default "default") builds the text of role turns:
        the prompt itself for a completion model, for show for a chat model.
        `client_kwargs` go to `openai.OpenAI` (timeout, max_retries, default_headers...). A local
        server (base_url given) needs no key: "EMPTY" is sent when none is set."""
        if api_key is None and base_url is not None and not os.environ.get("OPENAI_API_KEY"):
            api_key = "EMPTY"
        if base_url is not None:
            client_kwargs["base_url"] = base_url
        self.client = openai.OpenAI(api_key=api_key, **client_kwargs)
        self.model = model
        self.is_chat_model = guess_is_chat_model(model) if is_chat_model is None else bool(is_chat_model)
        self.takes_messages = self.is_chat_model
        if isinstance(chat_template, str):
            chat_template = get_chat_template(chat_template)
        self.chat_template = chat_template or get_chat_template("default")
        self._rng = random.Random()

    # ------------------------------------------------------------------ request building
    def _kwargs(
        self,
        sampling_params: dict[str, Any],
        return_logprob: bool,
        logprob_start_len: int | None,
        top_logprobs_num: int,
    ) -> dict[str, Any]:
        if logprob_start_len is not None and logprob_start_len >= 0:
            raise NotImplementedError(
                "prompt logprobs (logprob_start_len) are not available through the OpenAI "
                "backend; ask for output logprobs only (return_logprob=True)"
            )
        kw: dict[str, Any] = {}
        extra: dict[str, Any] = {}
        for key, value in sampling_params.items():
            if value is None:
                continue
            if key in _STANDARD:
                kw[_STANDARD[key]] = value
            elif key == "stop":
                stops = [value] if isinstance(value, str) else list(value)
                if stops:
                    kw["stop"] = stops
            elif key in _EXTRA:
                name, default = _EXTRA[key]
                if value != default and value != []:
                    extra[name] = value
            elif key == "json_schema":
                if self.is_chat_model:
                    kw["response_format"] = {
                        "type": "json_schema",
                        "json_schema": {"name": "output", "schema": _schema(value)},
                    }
                else:
                    extra["json_schema"] = value if isinstance(value, str) else json.dumps(_schema(value))
            else:  # another runtime parameter: servers that know it read it from extra_body
                extra[key] = value
        if self.is_chat_model and "max_tokens" in kw and _uses_max_completion_tokens(self.model):
            kw["max_completion_tokens"] = kw.pop("max_tokens")
        if return_logprob:
            if self.is_chat_model:
                kw["logprobs"] = True
                if top_logprobs_num:
                    kw["top_logprobs"] = top_logprobs_num
            else:
                kw["logprobs"] = top_logprobs_num or 0
        if extra:
            kw["extra_body"] = extra
        return kw

    def _chat_messages(self, prompt: str, messages: list[dict] | None) -> list[dict]:
        """The conversation before the open assistant turn; refuses a gen anywhere else."""
        if messages is None:
            raise RuntimeError(
                "a chat model needs the program's messages; this interpreter did not pass them"
            )
        last = messages[-1] if messages else None
        assistant_prefix = self.chat_template.get_prefix_and_suffix("assistant", messages)[0]
        if (
            last is not None
            and last["role"] == "assistant"
            and not last["content"]
            and prompt.endswith(assistant_prefix)
        ):
            return messages[:-1]
        if last is not None and last["role"] == "assistant" and last["content"]:
            place = f"after the text {last['content'][-40:]!r} in the assistant turn"
        else:
            place = "not at the start of an assistant turn"
        raise RuntimeError(
            f"gen is {place}. For chat models (is_chat_model=True) gen must come "
            "right after assistant begins, "
            "e.g. s += rl.assistant(rl.gen('answer')): a chat API answers a conversation with a whole "
            "assistant turn, and cannot continue text inside a turn or outside roles. Use a completion model "
            f"(is_chat_model=False) to continue arbitrary text."
        )

    # ------------------------------------------------------------------ generation
    def generate(
        self,
        prompt: str,
        sampling_params: dict[str, Any],
        return_logprob: bool = False,
        logprob_start_len: int | None = None,
        top_logprobs_num: int = 0,
        messages: list[dict] | None = None,
    ):
        kw = self._kwargs(sampling_params, return_logprob, logprob_start_len, top_logprobs_num)
        if self.is_chat_model:
            chat = self._chat_messages(prompt, messages)
            resp = self.client.chat.completions.create(model=self.model, messages=chat, **kw)
            texts = [c.message.content or "" for c in resp.choices]
            logprobs = [_chat_logprobs(c.logprobs) for c in resp.choices]
        else:
            resp = self.client.completions.create(model=self.model, prompt=prompt, **kw)
            texts = [c.text for c in resp.choices]
            logprobs = [_completion_logprobs(c.logprobs) for c in resp.choices]
        usage = resp.usage
        metas = []
        for choice, lp in zip(resp.choices, logprobs):
            meta: dict[str, Any] = {
                "id": resp.id,
                "model": resp.model,
                "finish_reason": {"type": choice.finish_reason} if choice.finish_reason else None,
            }
            if usage is not None:
                meta["prompt_tokens"] = usage.prompt_tokens
                meta.update(_cached_tokens(usage))
                if len(resp.choices) == 1:
                    meta["completion_tokens"] = usage.completion_tokens
            if return_logprob:
                meta.update(lp)
            metas.append(meta)
        if int(sampling_params.get("n") or 1) > 1:
            return texts, metas
        return texts[0], metas[0]

    def generate_stream(
        self,
        prompt: str,
        sampling_params: dict[str, Any],
        return_logprob: bool = False,
        logprob_start_len: int | None = None,
        top_logprobs_num: int = 0,
        messages: list[dict] | None = None,
    ) -> Iterator[tuple[str, dict]]:
        if int(sampling_params.get("n") or 1) > 1:
            raise ValueError("streaming takes n == 1")
        kw = self._kwargs(sampling_params, return_logprob, logprob_start_len, top_logprobs_num)
        kw.update(stream=True, stream_options={"include_usage": True})
        if self.is_chat_model:
            chat = self._chat_messages(prompt, messages)
            stream = self.client.chat.completions.create(model=self.model, messages=chat, **kw)
        else:
            stream = self.client.completions.create(model=self.model, prompt=prompt, **kw)
        meta: dict[str, Any] = {}
        with stream:
            for chunk in stream:
                meta = dict(meta, id=chunk.id, model=chunk.model)
                if chunk.usage is not None:
                    meta.update(
                        prompt_tokens=chunk.usage.prompt_tokens,
                        completion_tokens=chunk.usage.completion_tokens,
                    )
                    meta.update(_cached_tokens(chunk.usage))
                if not chunk.choices:
                    yield "", meta
                    continue
                choice = chunk.choices[0]
                if self.is_chat_model:
                    text, lp = choice.delta.content or "", _chat_logprobs(choice.logprobs)
                else:
                    text, lp = choice.text, _completion_logprobs(choice.logprobs)
                if choice.finish_reason:
                    meta["finish_reason"] = {"type": choice.finish_reason}
                if return_logprob:
                    for key, values in lp.items():
                        meta[key] = meta.get(key, []) + values
                yield text, meta

    # ------------------------------------------------------------------ select
    def _echo(self, texts: list[str]) -> list[Any]:
        """Per text, the `logprobs` block of echoing it with no completion."""
        if self.is_chat_model:
            raise NotImplementedError(
                f"select/choices needs a completion model: {self.model!r} is used as a chat model, "
                "and a chat API cannot score given text. "
                "Construct the backend with is_chat_model=False on a server whose "
                "completions endpoint supports echo with logprobs (vLLM, SGLang, radixlm serve)."
            )
        try:
            resp = self.client.completions.create(
                model=self.model, prompt=texts, echo=True, logprobs=1, max_tokens=0, temperature=0
            )
        except (openai.BadRequestError, openai.UnprocessableEntityError, openai.NotFoundError) as exc:
            raise NotImplementedError(
                "select/choices needs a completions endpoint that scores the prompt "
                f"(echo=True with logprobs and max_tokens=0); the server refused: {exc}"
            ) from exc
        blocks = [c.logprobs for c in sorted(resp.choices, key=lambda c: c.index)]
        if len(blocks) != len(texts) or any(b is None or not b.tokens for b in blocks):
            raise NotImplementedError(
                "select/choices needs prompt logprobs, but the server's echo response "
                "has none (its completions endpoint does not echo logprobs)"
            )
        return blocks

    def choice_logprobs(self, prompt: str, choices: list[str], unconditional: bool = False):
        """Per choice: the (logprob, None, token_text) entries of its tokens given the prompt, and,
        if asked, of the same tokens with no context. As in the runtime backend, a choice's tokens
        start where the tokenisation of prompt + choice first differs from the prompt's own."""
        texts = ([prompt] if prompt else []) + [prompt + c for c in choices]
        blocks = self._echo(texts)
        head = list(zip(blocks[0].tokens, blocks[0].text_offset)) if prompt else []
        full_blocks = blocks[1:] if prompt else blocks
        conditional, spans = [], []
        for text, block in zip(texts[1:] if prompt else texts, full_blocks):
            pairs = list(zip(block.tokens, block.text_offset))
            same = 0
            while same < min(len(head), len(pairs)) and head[same] == pairs[same]:
                same += 1
            start = min(same, len(pairs) - 1)
            conditional.append(
                [(lp, None, tok) for lp, tok in zip(block.token_logprobs[start:], block.tokens[start:])]
            )
            span = "".join(block.tokens[start:])
            if "\ufffd" in span:  # a character split over tokens: take it from the echoed text
                span = text[block.text_offset[start] :]
            spans.append(span)
        if not unconditional:
            return conditional, None
        # the choice's tokens on their own; a token the server puts first that is not part of the
        # text (a BOS) is dropped, so each choice has as many entries as in context
        prior = []
        for i, (entries, block) in enumerate(zip(conditional, self._echo(spans))):
            pairs = list(zip(block.token_logprobs, block.tokens))
            if len(pairs) == len(entries) + 1 and not spans[i].startswith(pairs[0][1]):
                pairs = pairs[1:]
            if len(pairs) != len(entries):
                raise RuntimeError(
                    f"choice {choices[i]!r}: its tokens re-tokenise differently on their own "
                    f"({len(entries)} in context, {len(pairs)} alone); cannot score it unconditionally"
                )
            prior.append([(None if k == 0 else lp, None, tok) for k, (lp, tok) in enumerate(pairs)])
        return conditional, prior

    # ------------------------------------------------------------------ operations
    def get_server_info(self) -> dict:
        return {
            "model": self.model,
            "base_url": str(self.client.base_url),
            "is_chat_model": self.is_chat_model,
        }

    def shutdown(self) -> None:
        self.client.close()


def _cached_tokens(usage: Any) -> dict:
    """{"cached_tokens": n} where the server reports its prompt cache hit
    (`usage.prompt_tokens_details.cached_tokens`, as OpenAI and vLLM do), else {}."""
    details = getattr(usage, "prompt_tokens_details", None)
    cached = getattr(details, "cached_tokens", None)
    return {"cached_tokens": cached} if isinstance(cached, int) else {}


def _completion_logprobs(block: Any) -> dict:
    if block is None or block.tokens is None:
        return {}
    out: dict[str, Any] = {
        "output_token_logprobs": [(lp, None, tok) for lp, tok in zip(block.token_logprobs, block.tokens)]
    }
    if block.top_logprobs and any(block.top_logprobs):
        out["output_top_logprobs"] = [
            [(lp, None, tok) for tok, lp in (top or {}).items()] for top in block.top_logprobs
        ]
    return out


def _chat_logprobs(block: Any) -> dict:
    if block is None or block.content is None:
        return {}
    out: dict[str, Any] = {"output_token_logprobs": [(e.logprob, None, e.token) for e in block.content]}
    if any(e.top_logprobs for e in block.content):
        out["output_top_logprobs"] = [
            [(t.logprob, None, t.token) for t in e.top_logprobs] for e in block.content
        ]
    return out


__all__ = ["OpenAI", "guess_is_chat_model"]
