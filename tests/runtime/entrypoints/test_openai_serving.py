"""The serving functions called directly: no subprocess, no socket, no runtime.

A TokenizerManager over the tiny model's real tokenizer validates requests as in production
(`prepare`), but its `generate` answers canned outputs: sample k of a request emits the
tokens CANNED_BASE + k, CANNED_BASE + k + 1, ... up to max_new_tokens (at most MAX_CANNED),
one per streamed delta, with logprobs derived from the ids. On that, the tests check
* the OpenAI shapes: completion and chat, n > 1 and batched prompts, echo, logprobs, streamed
  chunks (role first, finish_reason last, the usage chunk), usage counts;
* the native /generate shapes: one result, a batch, cumulative streamed chunks;
* errors: each runtime error maps to its HTTP status through http_errors, whether raised while
  validating, while waiting, or part-way through a stream (then sent as an SSE error event);
  a client that leaves has its request cancelled;
* the app itself (create_app) over an in-process ASGI transport, for the route wiring.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import httpx
import pytest

from radixlm.runtime.config import EngineConfig
from radixlm.runtime.entrypoints import generate_serving, openai_serving
from radixlm.runtime.entrypoints.http_errors import HTTPError, error_body, to_http_error
from radixlm.runtime.entrypoints.http_server import create_app, sse_response
from radixlm.runtime.entrypoints.openai_protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    GenerateRequest,
)
from radixlm.runtime.managers.request_state import RequestError
from radixlm.runtime.managers.tokenizer_manager import (
    PreparedRequest,
    RuntimeDiedError,
    TokenizerManager,
)
from radixlm.runtime.tokenizer import load_tokenizer
from radixlm.testing import build_tiny_model

CONTEXT, VOCAB = 2048, 8192
CANNED_BASE = 300
MAX_CANNED = 5
PROMPT = "The history of Python began"
MESSAGES = [{"role": "user", "content": "Name three colours."}]


class CannedTokenizerManager(TokenizerManager):
    """Real validation, canned generation. `fail_with` is raised after `fail_after` deltas
    (0: before any); `hang` never answers, and `cancelled` records that it was cancelled."""

    def __init__(self, tokenizer, fail_with: Exception | None = None, fail_after: int = 0) -> None:
        model_path = str(build_tiny_model("llama"))
        info = {"context_len": CONTEXT, "vocab_size": VOCAB}
        super().__init__(EngineConfig.from_kwargs(model_path), None, tokenizer, info, {})
        self.fail_with, self.fail_after = fail_with, fail_after
        self.hang = False
        self.cancelled = False
        self.requests: list[PreparedRequest] = []

    async def generate(
        self, req: PreparedRequest, stream: bool = False, rid: str | None = None
    ) -> AsyncIterator[dict]:
        self._check_alive()
        self.requests.append(req)
        if self.hang:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                self.cancelled = True
                raise
        sent = 0
        for k in range(req.params.n):
            ids = canned_ids(k, req.params.max_new_tokens)
            meta: dict = {"prompt_tokens": len(req.input_ids), "completion_tokens": 0, "finish_reason": None}
            if req.return_logprob and req.logprob_start_len == 0:
                meta["input_token_logprobs"] = [(None, req.input_ids[0])] + [
                    (-1.0, t) for t in req.input_ids[1:]
                ]
                meta["input_top_logprobs"] = [None] + [self._tops(t, req) for t in req.input_ids[1:]]
            for i, tid in enumerate(ids):
                if self.fail_with is not None and sent == self.fail_after:
                    raise self.fail_with
                sent += 1
                meta["completion_tokens"] = i + 1
                if req.return_logprob:
                    meta.setdefault("output_token_logprobs", []).append((logprob_of(tid), tid))
                    meta.setdefault("output_top_logprobs", []).append(self._tops(tid, req))
                if i == len(ids) - 1:
                    meta["finish_reason"] = {"type": "length", "length": len(ids)}
                if stream:
                    text = self.tokenizer.decode([tid])
                    snapshot = {key: list(v) if isinstance(v, list) else v for key, v in meta.items()}
                    finished = i == len(ids) - 1
                    yield {
                        "index": k,
                        "text": text,
                        "output_ids": [tid],
                        "meta_info": snapshot,
                        "finished": finished,
                    }
            if not stream:
                yield {"index": k, "text": canned_text(self, ids), "output_ids": ids, "meta_info": meta}

    @staticmethod
    def _tops(tid: int, req: PreparedRequest) -> list[tuple[int, float]]:
        # (token id, logprob), as messages.TokenOutput carries them; the token logprobs are
        # the other way round, (logprob, token id)
        return [(tid + j, logprob_of(tid) - j) for j in range(req.top_logprobs_num)]


def canned_ids(k: int, max_new_tokens: int) -> list[int]:
    return [CANNED_BASE + k + i for i in range(min(max_new_tokens, MAX_CANNED))]


def canned_text(tm: TokenizerManager, ids: list[int]) -> str:
    return "".join(tm.tokenizer.decode([t]) for t in ids)


def logprob_of(tid: int) -> float:
    return -(tid % 7) / 8


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(build_tiny_model("llama"))


@pytest.fixture
def tm(tokenizer) -> CannedTokenizerManager:
    return CannedTokenizerManager(tokenizer)


def run(coro):
    return asyncio.run(coro)


def stream_chunks(answer) -> list[dict]:
    """The chunks a streamed answer (a serving function's coroutine) yields."""

    async def drain() -> list[dict]:
        # a JSON round trip per chunk, as the SSE writer sends each before the next is made
        return [json.loads(json.dumps(c)) async for c in await answer]

    return run(drain())


def raises_http(status: int, coro) -> HTTPError:
    with pytest.raises(HTTPError) as info:
        run(coro)
    assert info.value.status == status, info.value.message
    return info.value


# ------------------------------------------------------------------------------- completions
def test_completion_shape_and_usage(tm):
    body = CompletionRequest(prompt=PROMPT, max_tokens=3, model="whatever")
    out = run(openai_serving.create_completion(tm, body))
    assert out["id"].startswith("cmpl-") and out["object"] == "text_completion"
    assert out["model"] == "whatever" and isinstance(out["created"], int)
    prompt_tokens = len(tm.tokenizer(PROMPT).input_ids)
    assert out["choices"] == [
        {"index": 0, "text": canned_text(tm, canned_ids(0, 3)), "logprobs": None, "finish_reason": "length"}
    ]
    assert out["usage"] == {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": 3,
        "total_tokens": prompt_tokens + 3,
    }
    assert tm.requests[0].params.max_new_tokens == 3


def test_completion_batch_of_prompts_with_n(tm):
    body = CompletionRequest(prompt=[[5, 6, 7], [8, 9]], max_tokens=2, n=2)
    out = run(openai_serving.create_completion(tm, body))
    assert [c["index"] for c in out["choices"]] == [0, 1, 2, 3]
    assert [c["text"] for c in out["choices"]] == [canned_text(tm, canned_ids(k, 2)) for k in (0, 1, 0, 1)]
    # each prompt's tokens count once, however many samples it has
    assert out["usage"] == {"prompt_tokens": 5, "completion_tokens": 8, "total_tokens": 13}


def test_completion_echo_with_logprobs_scores_the_prompt(tm):
    body = CompletionRequest(prompt=[5, 6, 7], max_tokens=2, echo=True, logprobs=2)
    choice = run(openai_serving.create_completion(tm, body))["choices"][0]
    prompt_text = tm.tokenizer.decode([5, 6, 7])
    out_ids = canned_ids(0, 2)
    assert choice["text"] == prompt_text + canned_text(tm, out_ids)
    lp = choice["logprobs"]
    assert lp["tokens"] == [tm.tokenizer.decode([t]) for t in [5, 6, 7, *out_ids]]
    assert lp["token_logprobs"] == [None, -1.0, -1.0] + [logprob_of(t) for t in out_ids]
    assert lp["text_offset"][3] == len(prompt_text) and lp["text_offset"] == sorted(lp["text_offset"])
    assert lp["top_logprobs"][0] is None and len(lp["top_logprobs"][-1]) == 2


def test_completion_stream_chunks_and_usage(tm):
    body = CompletionRequest(prompt=PROMPT, max_tokens=4, stream=True, stream_options={"include_usage": True})
    chunks = stream_chunks(openai_serving.create_completion(tm, body))
    *token_chunks, usage_chunk = chunks
    assert len(token_chunks) == 4 and len({c["id"] for c in chunks}) == 1
    assert "".join(c["choices"][0]["text"] for c in token_chunks) == canned_text(tm, canned_ids(0, 4))
    assert [c["choices"][0]["finish_reason"] for c in token_chunks] == [None, None, None, "length"]
    assert usage_chunk["choices"] == [] and usage_chunk["usage"]["completion_tokens"] == 4
    assert usage_chunk["usage"]["total_tokens"] == usage_chunk["usage"]["prompt_tokens"] + 4


def test_completion_stream_logprobs_cover_each_chunks_tokens_once(tm):
    body = CompletionRequest(prompt=PROMPT, max_tokens=3, stream=True, logprobs=1)
    chunks = stream_chunks(openai_serving.create_completion(tm, body))
    lps = [c["choices"][0]["logprobs"] for c in chunks]
    assert [lp["token_logprobs"] for lp in lps] == [[logprob_of(t)] for t in canned_ids(0, 3)]
    assert [lp["text_offset"][0] for lp in lps] == [
        0,
        len(lps[0]["tokens"][0]),
        sum(len(lp["tokens"][0]) for lp in lps[:2]),
    ]


# ------------------------------------------------------------------------------- chat
def test_chat_shape_and_logprobs(tm):
    body = ChatCompletionRequest(messages=MESSAGES, max_tokens=3, logprobs=True, top_logprobs=2)
    out = run(openai_serving.create_chat_completion(tm, body))
    assert out["id"].startswith("chatcmpl-") and out["object"] == "chat.completion"
    choice = out["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": canned_text(tm, canned_ids(0, 3))}
    assert choice["finish_reason"] == "length"
    first = choice["logprobs"]["content"][0]
    assert first["token"] == tm.tokenizer.decode([CANNED_BASE]) and first["bytes"] == list(
        first["token"].encode()
    )
    assert [t["logprob"] for t in first["top_logprobs"]] == [
        logprob_of(CANNED_BASE),
        logprob_of(CANNED_BASE) - 1,
    ]
    # the prompt is the conversation through the model's chat template, without added specials
    text = tm.tokenizer.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    assert tm.requests[0].input_ids == tm.tokenizer(text, add_special_tokens=False).input_ids
    assert out["usage"]["prompt_tokens"] == len(tm.requests[0].input_ids)


def test_chat_stream_role_first_then_content_then_usage(tm):
    body = ChatCompletionRequest(
        messages=MESSAGES, max_completion_tokens=2, n=2, stream=True, stream_options={"include_usage": True}
    )
    chunks = stream_chunks(openai_serving.create_chat_completion(tm, body))
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    for index in (0, 1):
        mine = [c["choices"][0] for c in chunks if c["choices"] and c["choices"][0]["index"] == index]
        assert mine[0]["delta"] == {"role": "assistant", "content": ""}
        assert "".join(c["delta"].get("content", "") for c in mine[1:]) == canned_text(
            tm, canned_ids(index, 2)
        )
        assert [c["finish_reason"] for c in mine] == [None, None, "length"]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 4


def test_chat_without_template_or_with_a_failing_one_is_a_400(tm):
    body = ChatCompletionRequest(messages=MESSAGES)
    saved = tm.tokenizer.chat_template
    try:
        tm.tokenizer.chat_template = None
        assert "no chat template" in raises_http(400, openai_serving.create_chat_completion(tm, body)).message
        tm.tokenizer.chat_template = "{{ raise_exception('roles must alternate') }}"
        err = raises_http(400, openai_serving.create_chat_completion(tm, body))
        assert "chat template failed" in err.message and "roles must alternate" in err.message
    finally:
        tm.tokenizer.chat_template = saved


# ------------------------------------------------------------------------------- native
def test_generate_single_batch_and_cumulative_stream(tm):
    one = run(
        generate_serving.generate(tm, GenerateRequest(text=PROMPT, sampling_params={"max_new_tokens": 2}))
    )
    assert one["output_ids"] == canned_ids(0, 2) and one["meta_info"]["finish_reason"]["type"] == "length"
    batch = run(
        generate_serving.generate(tm, GenerateRequest(input_ids=[[5, 6], [7]], sampling_params=[{}, {}]))
    )
    assert isinstance(batch, list) and len(batch) == 2
    body = GenerateRequest(text=PROMPT, sampling_params={"max_new_tokens": 3}, stream=True)
    chunks = stream_chunks(generate_serving.generate(tm, body))
    assert [c["output_ids"] for c in chunks] == [canned_ids(0, 3)[: i + 1] for i in range(3)]
    assert chunks[-1]["text"] == canned_text(tm, canned_ids(0, 3))


def test_generate_option_lists_must_match_the_prompts(tm):
    body = GenerateRequest(text=["a", "b"], return_logprob=[True])
    assert raises_http(400, generate_serving.generate(tm, body)).message == (
        "return_logprob is a list of 1 but there are 2 prompts"
    )


# ------------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "exc, status, kind, message",
    [
        (ValueError("top_p must be in (0, 1]"), 400, "invalid_request_error", "top_p must be in (0, 1]"),
        (TypeError("prompt must be a string"), 400, "invalid_request_error", "prompt must be a string"),
        (RequestError("aborted by user", 499), 499, "invalid_request_error", "aborted by user"),
        (RuntimeDiedError("scheduler died"), 503, "server_error", "scheduler died"),
        (asyncio.TimeoutError(), 503, "server_error", "scheduler did not answer"),
        (HTTPError(409, "cache not flushed"), 409, "invalid_request_error", "cache not flushed"),
    ],
)
def test_runtime_errors_map_to_http(exc, status, kind, message):
    err = to_http_error(exc)
    assert (err.status, err.kind, err.message) == (status, kind, message)


def test_an_unknown_error_has_no_http_answer():
    with pytest.raises(TypeError):
        to_http_error(KeyError("bug"))


def test_validation_errors_are_400s_naming_the_problem(tm):
    body = CompletionRequest(prompt=[VOCAB + 5], max_tokens=2)
    assert (
        "input_ids must be integers" in raises_http(400, openai_serving.create_completion(tm, body)).message
    )
    body = CompletionRequest(prompt=PROMPT, logit_bias={"5": 1.0})
    assert (
        raises_http(400, openai_serving.create_completion(tm, body)).message == "logit_bias is not supported"
    )
    body = CompletionRequest(prompt=PROMPT, logprobs=21)
    assert (
        raises_http(400, openai_serving.create_completion(tm, body)).message
        == "logprobs must be between 0 and 20"
    )
    assert not tm.requests, "a bad request reached the runtime"


@pytest.mark.parametrize(
    "exc, status",
    [(RequestError("prompt rejected late", 400), 400), (RuntimeDiedError("scheduler died"), 503)],
)
def test_runtime_error_while_waiting_maps_through_http_errors(tokenizer, exc, status):
    tm = CannedTokenizerManager(tokenizer, fail_with=exc)
    body = ChatCompletionRequest(messages=MESSAGES, max_tokens=2)
    assert raises_http(status, openai_serving.create_chat_completion(tm, body)).message == str(exc)


def test_dead_runtime_mid_stream_is_an_sse_error_event(tokenizer):
    tm = CannedTokenizerManager(tokenizer, fail_with=RuntimeDiedError("scheduler died"), fail_after=1)
    body = CompletionRequest(prompt=PROMPT, max_tokens=4, stream=True)

    async def events() -> list[str]:
        response = sse_response(await openai_serving.create_completion(tm, body))
        return [part async for part in response.body_iterator]

    first, error, done = run(events())
    assert json.loads(first.removeprefix("data: "))["choices"][0]["text"]
    assert json.loads(error.removeprefix("data: ")) == error_body(503, "scheduler died", "server_error")
    assert done == "data: [DONE]\n\n"


def test_a_client_that_leaves_has_its_request_cancelled(tm):
    tm.hang = True

    async def gone() -> bool:
        return True

    body = CompletionRequest(prompt=PROMPT, max_tokens=2)
    assert raises_http(499, openai_serving.create_completion(tm, body, gone)).message == "client disconnected"
    assert tm.cancelled


# ------------------------------------------------------------------------------- the app
def test_app_routes_frame_answers_and_errors(tm):
    app = create_app(tm, "tiny")  # its lifespan (which would start tm) does not run here

    async def calls() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            return [
                await client.get("/v1/models"),
                await client.post(
                    "/v1/chat/completions", json={"messages": MESSAGES, "max_tokens": 2, "stream": True}
                ),
                await client.post("/v1/completions", json={"prompt": PROMPT, "max_tokens": -1}),
                await client.post("/generate", json={"text": PROMPT, "input_ids": [5]}),
            ]

    models, stream, bad_body, bad_generate = run(calls())
    assert models.json()["data"][0]["id"] == "tiny" and models.json()["data"][0]["max_model_len"] == CONTEXT
    assert stream.headers["content-type"].startswith("text/event-stream")
    events = [line.removeprefix("data: ") for line in stream.text.split("\n\n") if line]
    assert events[-1] == "[DONE]" and json.loads(events[0])["choices"][0]["delta"]["role"] == "assistant"
    assert bad_body.status_code == 400
    assert bad_body.json()["error"] == {
        "message": "invalid request: max_tokens must be >= 0, got -1",
        "type": "invalid_request_error",
        "code": 400,
    }
    assert bad_generate.status_code == 400
    assert bad_generate.json()["error"]["message"] == "give exactly one of text or input_ids"
