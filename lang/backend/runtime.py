"""The radixlm runtime as a backend: `RuntimeEndpoint` talks to a running runtime's ZeroMQ
endpoint (`radixlm serve --zmq-port`); `Runtime` launches one in this process's children.

select scores every choice in one batch of prompt-logprob requests over the cached prefix.
A choice's tokens are scored from where its tokenisation first differs from the prompt's,
so a token that merges across the prompt/choice boundary is scored as part of the choice.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import Any

from radixlm.client.http_client import HttpRuntimeClient
from radixlm.client.runtime_client import RuntimeClient, prefill_message
from radixlm.lang.backend.base import BaseBackend, GatherJoin
from radixlm.lang.chat_template import chat_template_from_tokenizer, get_chat_template
from radixlm.lang.run_batch import GATHER_MAX_WAIT_S
from radixlm.runtime.tokenizer import load_tokenizer


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class RuntimeEndpoint(BaseBackend):
    """A running runtime, by its ZeroMQ address (`tcp://HOST:ZMQ_PORT`, `ipc://...`) or its
    HTTP address (`http://HOST:PORT`, as in SGLang). select tokenises locally, so the
    server's tokenizer folder (or `tokenizer_path`) must be readable here."""

    def __init__(
        self,
        address: str,
        api_key: str | None = None,
        chat_template_name: str | None = None,
        tokenizer_path: str | None = None,
        timeout_s: float = 600.0,
    ) -> None:
        self.address = address
        if address.startswith(("http://", "https://")):
            self.client: Any = HttpRuntimeClient(address, api_key=api_key, timeout_s=timeout_s)
        elif address.startswith(("tcp://", "ipc://")):
            self.client = RuntimeClient(address, timeout_s=timeout_s)
        else:
            raise ValueError(
                f"endpoint address must start with http://, https://, tcp:// or ipc://, got {address!r}"
            )
        self.info = self.client.get_server_info()
        path = tokenizer_path or self.info["tokenizer_path"]
        try:
            self.tokenizer = load_tokenizer(path)
        except (OSError, ValueError) as exc:
            raise ValueError(
                f"cannot load the server's tokenizer from {path!r} here ({exc}); pass tokenizer_path="
            ) from exc
        if chat_template_name is not None:
            self.chat_template = get_chat_template(chat_template_name)
        else:
            self.chat_template = chat_template_from_tokenizer(self.tokenizer) or get_chat_template("default")

    # ------------------------------------------------------------------ generation
    @staticmethod
    def _params(sampling_params: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in sampling_params.items() if v is not None}

    def generate(
        self,
        prompt: str,
        sampling_params: dict[str, Any],
        return_logprob: bool = False,
        logprob_start_len: int | None = None,
        top_logprobs_num: int = 0,
        return_text_in_logprobs: bool = False,
        **_: Any,
    ):
        n = int(sampling_params.get("n") or 1)
        params = self._params(sampling_params)
        kw = dict(
            return_logprob=return_logprob,
            logprob_start_len=logprob_start_len,
            top_logprobs_num=top_logprobs_num,
        )
        out = self.client.generate(prompt, params, **kw)
        if n == 1:
            return out["text"], self._meta(out["meta_info"], return_text_in_logprobs)
        # the runtime fans the n samples out: the prompt is prefilled once, sample k uses seed + k
        return [o["text"] for o in out], [self._meta(o["meta_info"], return_text_in_logprobs) for o in out]

    def _meta(self, meta: dict, with_text: bool) -> dict:
        """With `with_text`, logprob entries become (logprob, token_id, token_text)."""
        if not with_text:
            return meta
        meta = dict(meta)

        def entry(e: Any) -> tuple:
            return (e[0], e[1], self.tokenizer.decode([e[1]]))

        for key in ("input_token_logprobs", "output_token_logprobs"):
            if meta.get(key) is not None:
                meta[key] = [entry(e) for e in meta[key]]
        if meta.get("output_top_logprobs") is not None:
            meta["output_top_logprobs"] = [
                [entry(e) for e in top] if top else top for top in meta["output_top_logprobs"]
            ]
        return meta

    def generate_stream(
        self,
        prompt: str,
        sampling_params: dict[str, Any],
        return_logprob: bool = False,
        logprob_start_len: int | None = None,
        top_logprobs_num: int = 0,
        return_text_in_logprobs: bool = False,
        **_: Any,
    ) -> Iterator[tuple[str, dict]]:
        """(text delta, cumulative meta_info) pairs."""
        for chunk in self.client.generate_stream(
            prompt,
            self._params(sampling_params),
            return_logprob=return_logprob,
            logprob_start_len=logprob_start_len,
            top_logprobs_num=top_logprobs_num,
        ):
            yield chunk["text"], self._meta(chunk["meta_info"], return_text_in_logprobs)

    def cache_prefix(self, prompt: str) -> None:
        if prompt:
            self.client.generate(prompt, {"max_new_tokens": 0})

    def gather_requests(self, workers: int, prefix: str | None) -> GatherJoin | None:
        if not isinstance(self.client, RuntimeClient):  # HTTP: one request per call, as they come
            return None
        gather = self.client.gather(workers, GATHER_MAX_WAIT_S)
        if prefix and not self._deduplicated(prefix):
            gather.barrier(prefill_message(prefix))
        return functools.partial(self.client.gathering, gather)

    def _deduplicated(self, prefix: str) -> bool:
        """Whether the scheduler itself prefills `prefix` once for gathered requests sharing it.
        Under LPM it admits one of the requests that share at least `in_batch_prefix_tokens`
        uncached tokens and defers the others a round, so the programs' own first calls pre-cache
        the prefix. A shorter prefix (or FCFS) would be prefilled in every one of them: it goes
        first, alone, and the programs wait for it."""
        least = self.info.get("in_batch_prefix_tokens")
        return least is not None and len(self.tokenizer(prefix).input_ids) >= least

    # ------------------------------------------------------------------ select
    def choice_logprobs(self, prompt: str, choices: list[str], unconditional: bool = False):
        """Per choice: the logprob entries (logprob, token_id) of its tokens given the prompt,
        and, if asked, of the same tokens with no context."""
        conditional, uncond, _ = self.choice_logprobs_and_usage(prompt, choices, unconditional)
        return conditional, uncond

    def choice_logprobs_and_usage(
        self, prompt: str, choices: list[str], unconditional: bool = False
    ) -> tuple[list, list | None, dict[str, int]]:
        """`choice_logprobs`, and the shared prompt's `prompt_tokens` and `cached_tokens`: the
        fewest cached tokens of any choice's scoring request. The choices are scored together,
        and the scheduler may prefill the shared prompt for one of them and give it to the
        others from the cache: their counts say what this select computed itself, the fewest
        what it found in the cache from before (capped at the prompt's length)."""
        prompt_ids = self.tokenizer(prompt).input_ids
        full = [self.tokenizer(prompt + c).input_ids for c in choices]
        starts = [min(_common_prefix(prompt_ids, ids), len(ids) - 1) for ids in full]
        reqs = [
            {
                "input_ids": ids,
                "sampling_params": {"max_new_tokens": 0},
                "return_logprob": True,
                "logprob_start_len": start,
            }
            for ids, start in zip(full, starts)
        ]
        if unconditional:
            reqs += [
                {
                    "input_ids": ids[start:],
                    "sampling_params": {"max_new_tokens": 0},
                    "return_logprob": True,
                    "logprob_start_len": 0,
                }
                for ids, start in zip(full, starts)
            ]
        outs = self.client.generate_batch(reqs)
        scored = [[tuple(e) for e in o["meta_info"].get("input_token_logprobs", [])] for o in outs]
        k = len(choices)
        cached = [o["meta_info"].get("cached_tokens") for o in outs[:k]]
        usage = {"prompt_tokens": len(prompt_ids)}
        if cached and None not in cached:
            usage["cached_tokens"] = min(min(cached), len(prompt_ids))
        return scored[:k], (scored[k:] if unconditional else None), usage

    def tokenize(self, text: str) -> dict:
        """The server's tokenisation of `text` (ids and character spans), for the cache report."""
        return self.client.tokenize(text)

    # ------------------------------------------------------------------ operations
    def flush_cache(self) -> bool:
        return self.client.flush_cache()

    def get_server_info(self) -> dict:
        return self.client.get_server_info()

    def get_model_name(self) -> str:
        return self.info["model_path"]

    def shutdown(self) -> None:
        self.client.close()


class Runtime:
    """Launch the runtime (scheduler + detokenizer processes) for this program and connect
    to it over ZeroMQ; pass it (or `.endpoint`) as a backend."""

    def __init__(self, model_path: str, chat_template_name: str | None = None, **options: Any) -> None:
        from radixlm.runtime.entrypoints.engine import Engine

        self.engine = Engine(model_path, **options)
        address = f"ipc://{self.engine._runtime.addrs.directory}/client"
        self.engine.serve_zmq(address)
        self.endpoint = RuntimeEndpoint(address, chat_template_name=chat_template_name)

    def __getattr__(self, name: str) -> Any:
        if name == "endpoint":  # not built (a failed __init__): no recursion
            raise AttributeError(name)
        return getattr(self.endpoint, name)

    def shutdown(self) -> None:
        self.endpoint.shutdown()
        self.engine.shutdown()

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
