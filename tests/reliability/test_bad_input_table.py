"""One table of bad inputs, each row tried against every public entry that can express it.

Entries: HTTP (`/v1/completions`, `/v1/chat/completions`, the native `/generate`, and raw bytes
over a plain TCP socket to the HTTP port), the ZeroMQ endpoint (`RuntimeClient`, raw frames on a
DEALER socket, and raw bytes over a plain TCP socket to its port) and the Python API (`Engine`).
A row/entry combination the entry cannot express (socket bytes have no Python-API form, unknown
top-level fields are ignored by the OpenAI routes by design, msgpack cannot carry ints past
2**64) is not generated at all.

For every generated combination the table proves:
* the request is refused with an error that names the problem: HTTP answers the row's 4xx with
  a JSON body `{"error": {"message", "type", "code"}}` whose message matches the row's pattern;
  `RuntimeClient` / `Engine` raise an exception whose message matches it; a raw ZeroMQ frame gets
  an error reply; raw socket noise gets a 400 status line (HTTP) or the connection dropped (ZMQ);
* nothing ran (the finished-request count did not move), and no wait is unbounded: an attempt at
  n = 10**6 would hang past the request timeout instead of answering;
* the next good request on the same entry (the same raw DEALER connection for frames) answers
  exactly the greedy reference computed once, on the Engine, before any bad call.

One row is not an error: `max_new_tokens` / `max_tokens` = 10**12 is clamped to the room the
context leaves after the prompt (as in vLLM and SGLang, documented in the README), so a prompt
four tokens short of the context gets exactly four tokens, the same as asking for four.

A row may need an Engine configured otherwise (`engine_options`, e.g. a 64-token context): it is
tried on that Engine only (the server runs the defaults), and the good request afterwards must
answer the same greedy reference there. On the Engine the table also checks that the refused
request left nothing queued or running.

After every test tests/reliability/conftest.py checks that the server is idle with balanced KV
accounting, and tests/conftest.py does the same (plus a cache flush) for the Engine.
One `radixlm serve` (default 2048-token context, which the too-long rows exceed) serves the
whole file; the Engine is the cached one of tests/helpers.py.
"""

from __future__ import annotations

import json
import math
import random
import re
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import msgspec
import pytest
import zmq
from helpers import assert_serves_as_before, get_engine
from server_process import HOST, ServerProcess, server_info

from radixlm.client.runtime_client import RuntimeClient
from radixlm.runtime.managers import messages as P
from radixlm.testing import build_tiny_model

CONTEXT = 2048  # the tiny llama's context length (checked by the reference fixture)
VOCAB = 8192
TIMEOUT_S = 30.0  # every network wait: generous, only there to turn a hang into a failure
PROMPT = "Once upon a time, in a land far away"
TOKENS = 4
GOOD_SP = {"max_new_tokens": TOKENS, "temperature": 0, "ignore_eos": True}
MESSAGES = [{"role": "user", "content": "Name three colours."}]
CMPL_OK = {"prompt": PROMPT, "max_tokens": TOKENS, "temperature": 0, "ignore_eos": True}
CHAT_OK = {"messages": MESSAGES, "max_tokens": TOKENS, "temperature": 0, "ignore_eos": True}
GEN_OK = {"text": PROMPT, "sampling_params": GOOD_SP}
TOO_LONG_IDS = [5] * (CONTEXT + 952)
ROOM = 4  # the clamp row's prompt leaves this many tokens of context
LONG_IDS = [100 + (i * 37) % 8000 for i in range(CONTEXT - ROOM)]
HUGE = 10**12
BEYOND_MSGPACK = 2**70
SHORT_CTX = {"context_length": 64}  # the engine_options of the rows about a short context

ENTRIES = ("completions", "chat", "generate", "http-tcp", "zmq", "zmq-frame", "zmq-tcp", "engine")
HTTP_PATHS = {"completions": "/v1/completions", "chat": "/v1/chat/completions", "generate": "/generate"}


@dataclass
class Row:
    """One bad input. `match` is a regex (case-insensitive) the error message must contain;
    `matches` overrides it per entry. Each entry field holds that entry's form of the input
    (None: the entry cannot express it, so the combination is not generated):
      completions / chat / generate: the JSON body (dict) or raw body bytes;
      zmq: RuntimeClient.generate keywords; zmq_frame: one raw frame; engine: Engine.generate
      keywords; http_tcp / zmq_tcp: bytes written to a plain TCP connection.
    A form may be a callable of the Reference (for inputs that depend on the tokenizer).
    `engine_options` (a row with only the engine form) runs it on get_engine("llama", **options)."""

    id: str
    match: str
    completions: Any = None
    chat: Any = None
    generate: Any = None
    http_tcp: bytes | None = None
    zmq: Any = None
    zmq_frame: bytes | None = None
    zmq_tcp: bytes | None = None
    engine: Any = None
    matches: dict[str, str] = field(default_factory=dict)
    status: int = 400
    zmq_exc: type[BaseException] = RuntimeError  # what RuntimeClient raises
    engine_exc: tuple[type[BaseException], ...] = (ValueError, TypeError)
    zmq_tcp_half_close: bool = True  # close our sending side after the bytes (else the server must drop us)
    clamped: bool = False  # not an error: the answer is the clamped reference
    engine_options: dict[str, Any] = field(default_factory=dict)  # the Engine's options (engine form only)

    def form(self, entry: str) -> Any:
        return getattr(self, entry.replace("-", "_"))

    def pattern(self, entry: str) -> str:
        return self.matches.get(entry, self.match)


OPENAI_NAMES = {"max_new_tokens": "max_tokens", "min_new_tokens": "min_tokens"}


def sampling(
    id: str,
    match: str,
    openai_match: str | None = None,
    zmq: bool = True,
    openai: bool = True,
    engine_exc: tuple[type[BaseException], ...] = (ValueError, TypeError),
    **bad: Any,
) -> Row:
    """A bad sampling value, in every entry: OpenAI field names on the OpenAI routes, the
    engine's names in /generate's sampling_params, RuntimeClient and Engine. openai=False leaves
    out the OpenAI routes (where the value is valid: they coerce "5" to 5), zmq=False RuntimeClient."""
    named = {OPENAI_NAMES.get(k, k): v for k, v in bad.items()}
    sp = {**GOOD_SP, **bad}
    return Row(
        id,
        match,
        completions={**CMPL_OK, **named} if openai else None,
        chat={**CHAT_OK, **named} if openai else None,
        generate={"text": PROMPT, "sampling_params": sp},
        zmq={"prompt": PROMPT, "sampling_params": sp} if zmq else None,
        engine={"prompt": PROMPT, "sampling_params": sp},
        matches={"completions": openai_match, "chat": openai_match} if openai_match else {},
        engine_exc=engine_exc,
    )


def frame(**fields: Any) -> bytes:
    """A msgpack map frame with exactly these fields (may be an invalid ClientRequest)."""
    return msgspec.msgpack.encode(fields)


def frame_with_raw_text(text_bytes: bytes) -> bytes:
    """A ClientGenerate frame whose `text` msgpack str holds these bytes verbatim."""
    e = msgspec.msgpack.encode
    assert len(text_bytes) < 32
    return (
        b"\x83"
        + e("type")
        + e("ClientGenerate")
        + e("rid")
        + e("x")
        + e("text")
        + bytes([0xA0 | len(text_bytes)])
        + text_bytes
    )


def raw_body(text: str) -> bytes:
    """A JSON body as bytes, built from text with JSON escapes kept as written."""
    return text.encode("ascii")


RNG = random.Random(20240611)
RANDOM_BYTES = RNG.randbytes(4096)
RANDOM_BODY = RNG.randbytes(256)
ZMTP_SIGNATURE = b"\xff" + b"\x00" * 8 + b"\x7f"
# a ZMTP 3.0 greeting asking for a mechanism that does not exist, then noise
BAD_GREETING = (
    ZMTP_SIGNATURE + b"\x03\x00" + b"NOSUCHMECHANISM".ljust(20, b"\x00") + b"\x00" * 31 + RNG.randbytes(512)
)


def long_chat(ref: Reference) -> dict:
    return {"messages": ref.long_messages, "max_tokens": HUGE, "temperature": 0, "ignore_eos": True}


ROWS = [
    # ------------------------------------------------------------------ prompts
    Row(
        "prompt-empty",
        "prompt is empty",
        completions={**CMPL_OK, "prompt": ""},
        chat={**CHAT_OK, "messages": []},
        generate={**GEN_OK, "text": ""},
        zmq={"prompt": "", "sampling_params": GOOD_SP},
        engine={"prompt": "", "sampling_params": GOOD_SP},
        matches={"chat": r"messages must have at least 1 item\(s\), got 0"},
        engine_exc=(ValueError,),
    ),
    Row(
        "input_ids-empty",
        "prompt is empty",
        completions={**CMPL_OK, "prompt": []},
        generate={"input_ids": [], "sampling_params": GOOD_SP},
        zmq={"input_ids": [], "sampling_params": GOOD_SP},
        engine={"input_ids": [], "sampling_params": GOOD_SP},
        matches={"completions": "prompt must be a non-empty"},
        engine_exc=(ValueError,),
    ),
    Row(
        "prompt-longer-than-context",
        rf"prompt is too long: {len(TOO_LONG_IDS)} tokens, context length is {CONTEXT}",
        completions={**CMPL_OK, "prompt": TOO_LONG_IDS},
        chat={**CHAT_OK, "messages": [{"role": "user", "content": "hello " * len(TOO_LONG_IDS)}]},
        generate={"input_ids": TOO_LONG_IDS, "sampling_params": GOOD_SP},
        zmq={"input_ids": TOO_LONG_IDS, "sampling_params": GOOD_SP},
        engine={"input_ids": TOO_LONG_IDS, "sampling_params": GOOD_SP},
        matches={"chat": rf"prompt is too long: \d+ tokens, context length is {CONTEXT}"},
    ),
    Row(
        "prompt-list-empty",
        "empty",
        generate={"text": [], "sampling_params": GOOD_SP},
        engine={"prompt": [], "sampling_params": GOOD_SP},
        engine_exc=(ValueError,),
        matches={"generate": "no prompts given"},
    ),
    Row(
        "prompt-longer-than-a-short-context",
        r"too long.*100 tokens.*64",
        engine={"input_ids": [100] * 100, "sampling_params": GOOD_SP},
        engine_exc=(ValueError,),
        engine_options=SHORT_CTX,
    ),
    Row(
        "prompt-fills-a-short-context-and-wants-tokens",
        "too long",
        engine={"input_ids": [100] * 64, "sampling_params": GOOD_SP},
        engine_exc=(ValueError,),
        engine_options=SHORT_CTX,
    ),
    Row(
        "prompt-and-input_ids",
        "exactly one of prompt or input_ids",
        generate={"text": "hi", "input_ids": [5, 6], "sampling_params": GOOD_SP},
        zmq={"prompt": "hi", "input_ids": [5, 6], "sampling_params": GOOD_SP},
        engine={"prompt": "hi", "input_ids": [5, 6], "sampling_params": GOOD_SP},
        engine_exc=(ValueError,),
        matches={
            "generate": "give exactly one of text or input_ids",
            "zmq": r"give exactly one of prompt \(text\) or input_ids",
        },
    ),
    Row(
        "neither-prompt-nor-input_ids",
        "exactly one of prompt or input_ids",
        generate={"sampling_params": GOOD_SP},
        zmq={"sampling_params": GOOD_SP},
        engine={"sampling_params": GOOD_SP},
        engine_exc=(ValueError,),
        matches={
            "generate": "give exactly one of text or input_ids",
            "zmq": r"give exactly one of prompt \(text\) or input_ids",
        },
    ),
    Row(
        "input_ids-id-too-large",
        rf"input_ids.*\[0, {VOCAB}\)",
        completions={**CMPL_OK, "prompt": [5, VOCAB]},
        generate={"input_ids": [5, VOCAB], "sampling_params": GOOD_SP},
        zmq={"input_ids": [5, VOCAB], "sampling_params": GOOD_SP},
        engine={"input_ids": [5, VOCAB], "sampling_params": GOOD_SP},
        engine_exc=(ValueError,),
    ),
    Row(
        "input_ids-negative-id",
        "input_ids",
        completions={**CMPL_OK, "prompt": [5, -1]},
        generate={"input_ids": [5, -1], "sampling_params": GOOD_SP},
        zmq={"input_ids": [5, -1], "sampling_params": GOOD_SP},
        engine={"input_ids": [5, -1], "sampling_params": GOOD_SP},
        engine_exc=(ValueError,),
    ),
    Row(
        "input_ids-float-id",
        "input_ids",
        zmq={"input_ids": [5, 6.0], "sampling_params": GOOD_SP},
        engine={"input_ids": [5, 6.0], "sampling_params": GOOD_SP},
        engine_exc=(ValueError,),
    ),
    Row(
        "input_ids-bool-id",
        "input_ids",
        zmq={"input_ids": [5, True], "sampling_params": GOOD_SP},
        engine={"input_ids": [5, True], "sampling_params": GOOD_SP},
        engine_exc=(ValueError,),
    ),
    Row(
        "input_ids-not-a-list",
        "input_ids",
        generate={"input_ids": 5, "sampling_params": GOOD_SP},
        zmq_frame=frame(type="ClientGenerate", rid="x", input_ids=5),
        engine={"input_ids": 5, "sampling_params": GOOD_SP},
        engine_exc=(TypeError,),
    ),
    Row(
        "prompt-not-a-string",
        "prompt",
        completions={**CMPL_OK, "prompt": 123},
        generate={"text": 123, "sampling_params": GOOD_SP},
        zmq={"prompt": 123, "sampling_params": GOOD_SP},
        zmq_frame=frame(type="ClientGenerate", rid="x", text=123),
        engine={"prompt": 123, "sampling_params": GOOD_SP},
        engine_exc=(TypeError,),
        matches={"generate": "text", "zmq": "text", "zmq-frame": "text"},
    ),
    Row(
        "prompt-list-with-a-non-string",
        "prompt",
        completions={**CMPL_OK, "prompt": ["a", 5]},
        generate={"text": ["a", 5], "sampling_params": GOOD_SP},
        engine={"prompt": ["a", 5], "sampling_params": GOOD_SP},
        engine_exc=(TypeError,),
        matches={"generate": "text"},
    ),
    # ------------------------------------------------------------------ sampling values
    sampling(
        "temperature-negative",
        r"temperature must be a finite number >= 0, got -0\.5",
        temperature=-0.5,
        engine_exc=(ValueError,),
    ),
    sampling(
        "temperature-nan",
        r"temperature must be a finite number >= 0, got nan",
        temperature=math.nan,
        engine_exc=(ValueError,),
    ),
    sampling("temperature-inf", r"temperature must be a finite number >= 0, got inf", temperature=math.inf),
    sampling("top_p-zero", r"top_p must be in \(0, 1\], got 0", top_p=0, engine_exc=(ValueError,)),
    sampling("top_p-above-one", r"top_p must be in \(0, 1\], got 1\.5", top_p=1.5, engine_exc=(ValueError,)),
    sampling(
        "top_k-zero",
        r"top_k must be -1 \(no limit\) or in \[1, 2\*\*64\), got 0",
        top_k=0,
        engine_exc=(ValueError,),
    ),
    sampling(
        "max_tokens-negative",
        r"max_new_tokens must be an integer >= 0, got -1",
        r"max_tokens must be >= 0, got -1",
        max_new_tokens=-1,
        engine_exc=(ValueError,),
    ),
    sampling("min_p-above-one", r"min_p must be in \[0, 1\], got 2", min_p=2, engine_exc=(ValueError,)),
    sampling(
        "frequency_penalty-out-of-range",
        r"frequency_penalty must be in \[-2, 2\], got 5",
        frequency_penalty=5,
        engine_exc=(ValueError,),
    ),
    sampling(
        "presence_penalty-out-of-range",
        r"presence_penalty must be in \[-2, 2\], got -3",
        presence_penalty=-3,
        engine_exc=(ValueError,),
    ),
    sampling(
        "repetition_penalty-zero",
        r"repetition_penalty must be in \(0, 2\], got 0",
        repetition_penalty=0,
        engine_exc=(ValueError,),
    ),
    # msgpack (the ZeroMQ transport) cannot carry these ints at all: RuntimeClient fails to encode
    sampling(
        "seed-beyond-64-bit",
        r"seed must be an integer in \[-2\*\*63, 2\*\*64\)",
        zmq=False,
        seed=BEYOND_MSGPACK,
    ),
    sampling(
        "top_k-beyond-64-bit",
        r"top_k must be -1 \(no limit\) or in \[1, 2\*\*64\)",
        zmq=False,
        top_k=BEYOND_MSGPACK,
    ),
    Row(
        "top_logprobs-beyond-64-bit",
        r"top_logprobs_num must be an integer in \[0, 2\*\*64\)",
        completions={**CMPL_OK, "logprobs": BEYOND_MSGPACK},
        chat={**CHAT_OK, "logprobs": True, "top_logprobs": BEYOND_MSGPACK},
        generate={**GEN_OK, "return_logprob": True, "top_logprobs_num": BEYOND_MSGPACK},
        engine={
            "prompt": PROMPT,
            "sampling_params": GOOD_SP,
            "return_logprob": True,
            "top_logprobs_num": BEYOND_MSGPACK,
        },
        matches={
            "completions": "logprobs must be between 0 and 20",
            "chat": "top_logprobs must be between 0 and 20",
        },
    ),
    sampling("n-huge", r"n must be an integer in \[1, 128\], got 1000000", n=10**6),
    Row(
        "max_tokens-huge-is-clamped",
        "",
        clamped=True,
        completions={"prompt": LONG_IDS, "max_tokens": HUGE, "temperature": 0, "ignore_eos": True},
        chat=long_chat,
        generate={"input_ids": LONG_IDS, "sampling_params": {**GOOD_SP, "max_new_tokens": HUGE}},
        zmq={"input_ids": LONG_IDS, "sampling_params": {**GOOD_SP, "max_new_tokens": HUGE}},
        engine={"input_ids": LONG_IDS, "sampling_params": {**GOOD_SP, "max_new_tokens": HUGE}},
    ),
    sampling(
        "max_tokens-numeric-string",
        "max_new_tokens",
        openai=False,
        engine_exc=(ValueError,),
        max_new_tokens="5",
    ),
    sampling("min_tokens-above-max_tokens", "min_new_tokens", engine_exc=(ValueError,), min_new_tokens=5),
    sampling("top_k-minus-two", "top_k", engine_exc=(ValueError,), top_k=-2),
    sampling("n-zero", r"\bn must", engine_exc=(ValueError,), n=0),
    sampling("seed-not-an-int", "seed", engine_exc=(ValueError,), seed="x"),
    sampling("stop-empty-string", "stop", engine_exc=(ValueError,), stop=""),
    sampling("stop-list-with-a-non-string", "stop", engine_exc=(ValueError,), stop=["ok", 3]),
    sampling(
        "stop_token_ids-out-of-range", "stop_token_ids", engine_exc=(ValueError,), stop_token_ids=[2, VOCAB]
    ),
    sampling("stop_token_ids-not-a-list", "stop_token_ids", engine_exc=(ValueError,), stop_token_ids=2),
    # ------------------------------------------------------------------ constraints
    sampling("regex-invalid", r"invalid regex '\(a'", regex="(a", engine_exc=(ValueError,)),
    sampling(
        "json_schema-not-json", "json_schema is not valid JSON", json_schema="{nope", engine_exc=(ValueError,)
    ),
    Row(
        "json_schema-unsupported-type",
        "unsupported json_schema",
        completions={**CMPL_OK, "json_schema": {"type": "x"}},
        chat={
            **CHAT_OK,
            "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "x"}}},
        },
        generate={"text": PROMPT, "sampling_params": {**GOOD_SP, "json_schema": {"type": "x"}}},
        zmq={"prompt": PROMPT, "sampling_params": {**GOOD_SP, "json_schema": {"type": "x"}}},
        engine={"prompt": PROMPT, "sampling_params": {**GOOD_SP, "json_schema": {"type": "x"}}},
        engine_exc=(ValueError,),
    ),
    sampling("regex-and-json_schema", "at most one", engine_exc=(ValueError,), regex="a", json_schema="{}"),
    sampling("json_schema-neither-text-nor-object", "json_schema", engine_exc=(TypeError,), json_schema=3),
    # ------------------------------------------------------------------ unknown fields
    # (the OpenAI routes ignore fields they do not know, by design: test_openai_routes_ignore_unknown_fields)
    Row(
        "unknown-sampling-parameter",
        r"unknown sampling parameter\(s\): bogus",
        generate={"text": PROMPT, "sampling_params": {**GOOD_SP, "bogus": 1}},
        zmq={"prompt": PROMPT, "sampling_params": {**GOOD_SP, "bogus": 1}},
        engine={"prompt": PROMPT, "sampling_params": {**GOOD_SP, "bogus": 1}},
    ),
    Row(
        "unknown-top-level-field",
        "bogus",
        generate={**GEN_OK, "bogus": 1},
        zmq_frame=frame(type="ClientGenerate", rid="x", text=PROMPT, bogus=1),
        engine={"prompt": PROMPT, "sampling_params": GOOD_SP, "bogus": 1},
        matches={
            "generate": r"bogus is not a known field",
            "zmq-frame": r"undecodable message: ClientGenerate has unknown field\(s\): 'bogus'",
        },
    ),
    Row(
        "unknown-sampling-parameter-max_tokens",
        r"unknown sampling parameter.*max_tokens",
        generate={"text": PROMPT, "sampling_params": {**GOOD_SP, "max_tokens": 5}},
        zmq={"prompt": PROMPT, "sampling_params": {**GOOD_SP, "max_tokens": 5}},
        engine={"prompt": PROMPT, "sampling_params": {**GOOD_SP, "max_tokens": 5}},
        engine_exc=(ValueError,),
    ),
    # ------------------------------------------------------------------ wrong types
    sampling(
        "temperature-string",
        r"temperature must be a finite number >= 0, got 'hot'",
        r"temperature must be a number, got a string",
        temperature="hot",
    ),
    sampling(
        "max_tokens-string",
        r"max_new_tokens must be an integer >= 0, got 'lots'",
        r"max_tokens must be an integer, got a string",
        max_new_tokens="lots",
    ),
    sampling(
        "stop-object-for-list",
        r"stop must be a non-empty string or a list of non-empty strings",
        r"stop must be a string or a list, got an object",
        stop={"a": 1},
    ),
    Row(
        "prompt-object-for-list",
        r"input_ids",
        completions={**CMPL_OK, "prompt": {"a": 1}},
        chat={**CHAT_OK, "messages": {"role": "user", "content": "hi"}},
        generate={"input_ids": {"a": 1}, "sampling_params": GOOD_SP},
        zmq_frame=frame(type="ClientGenerate", rid="x", input_ids={"a": 1}),
        engine={"input_ids": {"a": 1}, "sampling_params": GOOD_SP},
        matches={
            "completions": r"prompt must be a string or a list, got an object",
            "chat": r"messages must be a list, got an object",
            "generate": r"input_ids must be a list, got an object",
            "zmq-frame": r"undecodable message: field 'input_ids' of ClientGenerate must be "
            r"list\[int\] \| None, got a map",
            "engine": r"input_ids must be a list of token ids",
        },
    ),
    Row(
        "sampling_params-list-for-object",
        r"sampling_params",
        completions={**CMPL_OK, "response_format": [1]},
        chat={**CHAT_OK, "response_format": [1]},
        generate={"text": PROMPT, "sampling_params": [1]},
        zmq_frame=frame(type="ClientGenerate", rid="x", text=PROMPT, sampling_params=[1]),
        engine={"prompt": PROMPT, "sampling_params": [1]},
        matches={
            "completions": r"response_format must be an object, got a list",
            "chat": r"response_format must be an object, got a list",
            "generate": r"sampling_params must be an object, got a list",
            "zmq-frame": r"undecodable message: field 'sampling_params' of ClientGenerate must be "
            r"dict\[str, Any\], got an array",
            "engine": r"sampling_params must be a dict or SamplingParams, got int",
        },
    ),
    Row(
        "sampling_params-string-for-object",
        "sampling_params",
        generate={"text": PROMPT, "sampling_params": "greedy"},
        zmq_frame=frame(type="ClientGenerate", rid="x", text=PROMPT, sampling_params="greedy"),
        engine={"prompt": PROMPT, "sampling_params": "greedy"},
        engine_exc=(TypeError,),
    ),
    # ------------------------------------------------------------------ logprob options
    Row(
        "top_logprobs-negative",
        "top_logprobs_num",
        completions={**CMPL_OK, "logprobs": -1},
        chat={**CHAT_OK, "logprobs": True, "top_logprobs": -1},
        generate={**GEN_OK, "return_logprob": True, "top_logprobs_num": -1},
        zmq={"prompt": PROMPT, "sampling_params": GOOD_SP, "return_logprob": True, "top_logprobs_num": -1},
        engine={"prompt": PROMPT, "sampling_params": GOOD_SP, "return_logprob": True, "top_logprobs_num": -1},
        engine_exc=(ValueError,),
        matches={
            "completions": "logprobs must be between 0 and 20",
            "chat": "top_logprobs must be between 0 and 20",
        },
    ),
    Row(
        "logprob_start_len-past-the-prompt",
        "logprob_start_len",
        generate={
            "input_ids": [5, 6, 7],
            "sampling_params": GOOD_SP,
            "return_logprob": True,
            "logprob_start_len": 3,
        },
        zmq={
            "input_ids": [5, 6, 7],
            "sampling_params": GOOD_SP,
            "return_logprob": True,
            "logprob_start_len": 3,
        },
        engine={
            "input_ids": [5, 6, 7],
            "sampling_params": GOOD_SP,
            "return_logprob": True,
            "logprob_start_len": 3,
        },
        engine_exc=(ValueError,),
    ),
    Row(
        "logprob_start_len-minus-two",
        "logprob_start_len",
        generate={
            "input_ids": [5, 6, 7],
            "sampling_params": GOOD_SP,
            "return_logprob": True,
            "logprob_start_len": -2,
        },
        zmq={
            "input_ids": [5, 6, 7],
            "sampling_params": GOOD_SP,
            "return_logprob": True,
            "logprob_start_len": -2,
        },
        engine={
            "input_ids": [5, 6, 7],
            "sampling_params": GOOD_SP,
            "return_logprob": True,
            "logprob_start_len": -2,
        },
        engine_exc=(ValueError,),
    ),
    Row(
        "logprob_start_len-float",
        "logprob_start_len",
        generate={**GEN_OK, "return_logprob": True, "logprob_start_len": 1.5},
        zmq={"prompt": PROMPT, "sampling_params": GOOD_SP, "return_logprob": True, "logprob_start_len": 1.5},
        engine={
            "prompt": PROMPT,
            "sampling_params": GOOD_SP,
            "return_logprob": True,
            "logprob_start_len": 1.5,
        },
    ),
    Row(
        "logprob_start_len-string",
        "logprob_start_len",
        zmq={"prompt": PROMPT, "sampling_params": GOOD_SP, "return_logprob": True, "logprob_start_len": "2"},
        engine={
            "prompt": PROMPT,
            "sampling_params": GOOD_SP,
            "return_logprob": True,
            "logprob_start_len": "2",
        },
    ),
    Row(
        "return_logprob-list-shorter-than-the-batch",
        "return_logprob",
        generate={"text": ["a", "b"], "sampling_params": GOOD_SP, "return_logprob": [True]},
        engine={"prompt": ["a", "b"], "sampling_params": GOOD_SP, "return_logprob": [True]},
        engine_exc=(ValueError,),
    ),
    # ------------------------------------------------------------------ batches
    # the Engine's error names the request; /generate names the problem (not the index, unless
    # its body check catches it) and, as everywhere, runs none of the batch
    Row(
        "sampling_params-list-longer-than-the-batch",
        "sampling_params has 3 entries for 2 prompts",
        generate={"text": ["a", "b"], "sampling_params": [GOOD_SP] * 3},
        engine={"prompt": ["a", "b"], "sampling_params": [GOOD_SP] * 3},
        engine_exc=(ValueError,),
        matches={"generate": "sampling_params is a list of 3 but there are 2 prompts"},
    ),
    Row(
        "batch-with-an-empty-prompt",
        r"request 2: prompt is empty",
        generate={"text": ["fine", "also fine", ""], "sampling_params": GOOD_SP},
        engine={"prompt": ["fine", "also fine", ""], "sampling_params": GOOD_SP},
        engine_exc=(ValueError,),
        matches={"generate": r"prompt is empty"},
    ),
    Row(
        "batch-with-a-bad-id",
        r"request 1: input_ids",
        generate={"input_ids": [[5, 6], [7, VOCAB + 5]], "sampling_params": GOOD_SP},
        engine={"input_ids": [[5, 6], [7, VOCAB + 5]], "sampling_params": GOOD_SP},
        engine_exc=(ValueError,),
        matches={"generate": rf"input_ids must be integers in \[0, {VOCAB}\)"},
    ),
    Row(
        "batch-with-an-empty-id-list",
        r"request 1: prompt is empty",
        generate={"input_ids": [[5, 6], []], "sampling_params": GOOD_SP},
        engine={"input_ids": [[5, 6], []], "sampling_params": GOOD_SP},
        engine_exc=(ValueError,),
        matches={"generate": r"prompt is empty"},
    ),
    Row(
        "batch-with-one-bad-params-entry",
        r"request 1: temperature",
        generate={
            "text": ["a", "b", "c"],
            "sampling_params": [{**GOOD_SP, "n": 3}, {**GOOD_SP, "temperature": -1}, GOOD_SP],
        },
        engine={
            "prompt": ["a", "b", "c"],
            "sampling_params": [{**GOOD_SP, "n": 3}, {**GOOD_SP, "temperature": -1}, GOOD_SP],
        },
        engine_exc=(ValueError,),
        matches={"generate": r"temperature must be a finite number >= 0, got -1"},
    ),
    Row(
        "batch-with-one-unknown-parameter",
        r"request 1: unknown sampling parameter.*best_of",
        generate={"text": ["a", "b"], "sampling_params": [GOOD_SP, {**GOOD_SP, "best_of": 2}]},
        engine={"prompt": ["a", "b"], "sampling_params": [GOOD_SP, {**GOOD_SP, "best_of": 2}]},
        engine_exc=(ValueError,),
        matches={"generate": r"unknown sampling parameter\(s\): best_of"},
    ),
    Row(
        "batch-with-one-non-dict-params",
        r"request 1: sampling_params",
        generate={"text": ["a", "b"], "sampling_params": [GOOD_SP, 7]},
        engine={"prompt": ["a", "b"], "sampling_params": [GOOD_SP, 7]},
        engine_exc=(TypeError,),
        matches={"generate": r"sampling_params\[1\] must be an object, got an integer"},
    ),
    Row(
        "batch-with-a-prompt-too-long-for-a-short-context",
        r"request 1: prompt is too long",
        engine={"input_ids": [[5] * 10, [5] * 80], "sampling_params": GOOD_SP},
        engine_exc=(ValueError,),
        engine_options=SHORT_CTX,
    ),
    # ------------------------------------------------------------------ bytes
    Row(
        "body-not-utf8",
        r"request body is not valid UTF-8 JSON: byte 0xe9 at offset \d+ is not UTF-8",
        completions=b'{"prompt": "caf\xe9", "max_tokens": 4}',
        chat=b'{"messages": [{"role": "user", "content": "caf\xe9"}], "max_tokens": 4}',
        generate=b'{"text": "caf\xe9"}',
        zmq={"prompt": b"caf\xe9", "sampling_params": GOOD_SP},
        zmq_frame=frame_with_raw_text(b"caf\xe9"),
        engine={"prompt": b"caf\xe9", "sampling_params": GOOD_SP},
        matches={
            "zmq": r"undecodable message: field 'text' of ClientGenerate must be str \| None, "
            r"got binary data",
            "zmq-frame": r"undecodable message: the string at \$\.text is not valid UTF-8 "
            r"\(byte 0xe9 at offset \d+ of the frame\)",
            "engine": "prompt must be a string",
        },
    ),
    Row(
        "lone-surrogate",
        r"prompt is not valid Unicode: lone surrogate '\\ud800' at index 3",
        completions=raw_body('{"prompt": "caf\\ud800", "max_tokens": 4}'),
        chat=raw_body('{"messages": [{"role": "user", "content": "caf\\ud800"}], "max_tokens": 4}'),
        generate=raw_body('{"text": "caf\\ud800"}'),
        zmq={"prompt": "caf\ud800", "sampling_params": GOOD_SP},
        zmq_exc=ValueError,
        zmq_frame=frame_with_raw_text(b"caf\xed\xa0\x80"),  # the surrogate's (invalid) UTF-8 form
        engine={"prompt": "caf\ud800", "sampling_params": GOOD_SP},
        matches={
            "chat": r"messages\[0\]\.content is not valid Unicode: lone surrogate '\\ud800' at index 3",
            "zmq-frame": r"undecodable message: the string at \$\.text is not valid UTF-8 "
            r"\(byte 0xed at offset \d+ of the frame\)",
        },
    ),
    Row(
        "body-not-json",
        r"invalid request: request body is not valid JSON",
        completions=b"prompt=hello&max_tokens=4",
        chat=b"messages=hello",
        generate=b"text=hello",
        zmq_frame=b"text=hello",
        matches={"zmq-frame": r"undecodable message: "},
    ),
    Row(
        "random-bytes",
        r"JSON",
        completions=RANDOM_BODY,
        chat=RANDOM_BODY,
        generate=RANDOM_BODY,
        http_tcp=RANDOM_BYTES + b"\r\n\r\n",
        zmq_frame=RANDOM_BODY,
        zmq_tcp=RANDOM_BYTES,
        matches={
            "http-tcp": r"^HTTP/1\.1 400 ",
            "zmq-frame": r"undecodable message: ",
            "zmq-tcp": "connection dropped",
        },
    ),
    # a ZeroMQ greeting naming a mechanism that does not exist: the endpoint drops us unprompted;
    # sent to the HTTP port it is just a bad request line
    Row(
        "zmtp-greeting-bad-mechanism",
        r"^HTTP/1\.1 400 ",
        http_tcp=BAD_GREETING + b"\r\n\r\n",
        zmq_tcp=BAD_GREETING,
        zmq_tcp_half_close=False,
    ),
    Row(
        "http-request-to-zmq-port",
        "connection dropped",
        zmq_tcp=b'POST /generate HTTP/1.1\r\nHost: x\r\nContent-Length: 15\r\n\r\n{"text": "hi"}',
    ),
]

CASES = [(row, entry) for row in ROWS for entry in ENTRIES if row.form(entry) is not None]


# ---------------------------------------------------------------------------- fixtures
@dataclass
class Reference:
    """Greedy outputs computed once on the Engine, before any bad call."""

    text: str
    ids: list[int]
    chat_text: str
    long_text: str  # LONG_IDS, ROOM tokens
    long_ids: list[int]
    long_messages: list[dict]  # a chat whose prompt leaves long_chat_room tokens
    long_chat_room: int
    long_chat_text: str


def chat_ids(engine, messages: list[dict]) -> list[int]:
    """Token ids of a chat prompt, as the server builds them."""
    text = engine.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return engine.tokenizer(text, add_special_tokens=False).input_ids


@pytest.fixture(scope="module")
def server():
    srv = ServerProcess(str(build_tiny_model("llama"))).start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def client(server):
    c = RuntimeClient(f"tcp://{HOST}:{server.zmq_port}", timeout_s=TIMEOUT_S)
    yield c
    c.close()


@pytest.fixture(scope="module")
def reference(server, client) -> Reference:
    engine = get_engine("llama")
    assert engine.context_len == CONTEXT and engine.vocab_size == VOCAB
    assert server_info(server)["context_length"] == CONTEXT
    out = engine.generate(PROMPT, GOOD_SP)
    chat = engine.generate(input_ids=chat_ids(engine, MESSAGES), sampling_params=GOOD_SP)
    long = engine.generate(input_ids=LONG_IDS, sampling_params=GOOD_SP)
    # a chat prompt a few tokens short of the context (each " hello" is a token or so)
    words = CONTEXT - 40
    for _ in range(50):
        messages = [{"role": "user", "content": "hello" + " hello" * words}]
        room = CONTEXT - len(chat_ids(engine, messages))
        if 1 <= room <= 8:
            break
        words += (room - 4) // 2 or (1 if room > 4 else -1)
    assert 1 <= room <= 8, room
    long_chat = engine.generate(
        input_ids=chat_ids(engine, messages), sampling_params={**GOOD_SP, "max_new_tokens": room}
    )
    ref = Reference(
        out["text"],
        out["output_ids"],
        chat["text"],
        long["text"],
        long["output_ids"],
        messages,
        room,
        long_chat["text"],
    )
    assert len(ref.ids) == TOKENS and len(ref.long_ids) == ROOM
    # every entry agrees with the Engine before anything bad was sent, and so does every other
    # Engine a row asks for (engine_options): the same greedy reference holds on each
    for entry in ("completions", "chat", "generate", "zmq"):
        check_good(entry, server, client, engine, ref)
    for options in sorted({tuple(sorted(row.engine_options.items())) for row in ROWS if row.engine_options}):
        check_good("engine", server, client, get_engine("llama", **dict(options)), ref)
    return ref


# ---------------------------------------------------------------------------- entries
def post(srv: ServerProcess, path: str, body: Any) -> httpx.Response:
    # json.dumps, not httpx's json=: NaN and Infinity must go out as the literals Python's JSON reads
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(
        f"{srv.url}{path}", content=content, headers={"content-type": "application/json"}, timeout=TIMEOUT_S
    )


def check_good(
    entry: str,
    srv: ServerProcess,
    client: RuntimeClient,
    engine,
    ref: Reference,
    sock: zmq.Socket | None = None,
) -> None:
    """The good request on this entry answers exactly the reference."""
    if entry in ("completions", "http-tcp"):
        r = post(srv, "/v1/completions", CMPL_OK)
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["text"] == ref.text
        assert r.json()["usage"]["completion_tokens"] == TOKENS
    elif entry == "chat":
        r = post(srv, "/v1/chat/completions", CHAT_OK)
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["message"]["content"] == ref.chat_text
    elif entry == "generate":
        r = post(srv, "/generate", GEN_OK)
        assert r.status_code == 200, r.text
        assert (r.json()["text"], r.json()["output_ids"]) == (ref.text, ref.ids)
    elif entry in ("zmq", "zmq-tcp"):
        out = client.generate(PROMPT, GOOD_SP)
        assert (out["text"], out["output_ids"]) == (ref.text, ref.ids)
    elif entry == "zmq-frame":
        # on the same connection that sent the bad frame, then on the shared client
        assert sock is not None
        sock.send(P.encoder().encode(P.ClientGenerate(rid="good", text=PROMPT, sampling_params=GOOD_SP)))
        reply = recv_reply(sock, "good")
        assert isinstance(reply, P.ClientChunk) and reply.finished, reply
        assert (reply.text, reply.output_ids) == (ref.text, ref.ids)
        out = client.generate(PROMPT, GOOD_SP)
        assert (out["text"], out["output_ids"]) == (ref.text, ref.ids)
    elif entry == "engine":
        out = bounded(engine.generate, prompt=PROMPT, sampling_params=GOOD_SP)
        assert (out["text"], out["output_ids"]) == (ref.text, ref.ids)
        assert out["meta_info"]["finish_reason"] == {"type": "length", "length": TOKENS}
    else:
        raise AssertionError(entry)


def recv_reply(sock: zmq.Socket, rid: str) -> Any:
    """The next reply for rid (or for rid "": a frame that did not decode), bounded."""
    dec = P.decoder(P.ClientReply)
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        if sock.poll(100):
            msg = dec.decode(sock.recv())
            if msg.rid in (rid, ""):
                return msg
    raise AssertionError(f"no reply for {rid!r} within {TIMEOUT_S}s")


def raw_tcp(port: int, data: bytes, half_close: bool) -> tuple[bytes, bool]:
    """Write data to a plain TCP connection; read until the server closes it (bounded).
    Returns what came back and whether the server dropped the connection."""
    received = b""
    with socket.create_connection((HOST, port), timeout=TIMEOUT_S) as s:
        s.settimeout(TIMEOUT_S)
        try:
            s.sendall(data)
            if half_close:
                s.shutdown(socket.SHUT_WR)
            deadline = time.monotonic() + TIMEOUT_S
            while time.monotonic() < deadline:
                chunk = s.recv(65536)
                if not chunk:
                    return received, True
                received += chunk
        except (ConnectionResetError, BrokenPipeError):
            return received, True
        except TimeoutError:
            pass
    return received, False


def bounded(fn: Callable[..., Any], **kwargs: Any) -> Any:
    """fn(**kwargs) on a daemon thread, waited for at most TIMEOUT_S: an Engine call has no
    timeout of its own, and one that hangs (an n = 10**6 attempted) must fail the test, not CI."""
    result: list = []

    def call() -> None:
        try:
            result.append((True, fn(**kwargs)))
        except BaseException as exc:  # re-raised in the test's thread
            result.append((False, exc))

    thread = threading.Thread(target=call, name="bounded-engine-call", daemon=True)
    thread.start()
    thread.join(TIMEOUT_S)
    if not result:
        pytest.fail(f"the call did not return within {TIMEOUT_S}s")
    ok, value = result[0]
    if not ok:
        raise value
    return value


def finished_requests(entry: str, srv: ServerProcess, engine) -> int:
    if entry == "engine":
        return bounded(engine.get_server_info)["finished_requests"]
    return server_info(srv)["finished_requests"]


def run_bad(
    row: Row,
    entry: str,
    form: Any,
    srv: ServerProcess,
    client: RuntimeClient,
    engine,
    sock: zmq.Socket | None,
) -> None:
    """Send the bad input on this entry and check the error names the problem."""
    pattern = re.compile(row.pattern(entry), re.IGNORECASE)
    if entry in HTTP_PATHS:
        r = post(srv, HTTP_PATHS[entry], form)
        assert r.status_code == row.status, f"{r.status_code}: {r.text[:500]}"
        assert r.headers["content-type"].startswith("application/json"), r.headers
        err = r.json()["error"]
        assert err["code"] == row.status and err["type"] == "invalid_request_error", err
        assert pattern.search(err["message"]), f"the message does not name the problem: {err['message']!r}"
    elif entry == "http-tcp":
        received, dropped = raw_tcp(srv.port, form, half_close=False)
        assert pattern.search(received.decode("latin-1")), received[:300]
        assert dropped, "the server kept the connection after a bad request line"
    elif entry == "zmq-tcp":
        # no error message travels here: the endpoint's answer to noise is to drop the peer
        _, dropped = raw_tcp(srv.zmq_port, form, half_close=row.zmq_tcp_half_close)
        assert dropped, "the ZeroMQ endpoint kept a connection that sent garbage"
    elif entry == "zmq-frame":
        sock.send(form)
        reply = recv_reply(sock, "x")
        assert isinstance(reply, P.ClientResult) and reply.ok is False, reply
        assert pattern.search(reply.error), f"the error does not name the problem: {reply.error!r}"
    elif entry == "zmq":
        with pytest.raises(row.zmq_exc) as info:
            client.generate(**form)
        assert pattern.search(str(info.value)), f"the error does not name the problem: {info.value!r}"
    elif entry == "engine":
        with pytest.raises(row.engine_exc) as info:
            bounded(engine.generate, **form)
        assert pattern.search(str(info.value)), f"the error does not name the problem: {info.value!r}"
    else:
        raise AssertionError(entry)


def run_clamped(
    entry: str, form: Any, srv: ServerProcess, client: RuntimeClient, engine, ref: Reference
) -> None:
    """max_tokens = 10**12 is clamped to the context: exactly the room the prompt leaves."""
    length = {"type": "length", "length": ref.long_chat_room if entry == "chat" else ROOM}
    if entry in ("completions", "chat"):
        r = post(srv, HTTP_PATHS[entry], form)
        assert r.status_code == 200, r.text
        choice = r.json()["choices"][0]
        text = choice["text"] if entry == "completions" else choice["message"]["content"]
        assert text == (ref.long_text if entry == "completions" else ref.long_chat_text)
        assert (
            choice["finish_reason"] == "length" and r.json()["usage"]["completion_tokens"] == length["length"]
        )
        return
    if entry == "generate":
        r = post(srv, "/generate", form)
        assert r.status_code == 200, r.text
        out = r.json()
    elif entry == "zmq":
        out = client.generate(**form)
    else:
        out = bounded(engine.generate, **form)
    assert (out["text"], out["output_ids"]) == (ref.long_text, ref.long_ids)
    assert out["meta_info"]["finish_reason"] == length


@pytest.mark.parametrize("row, entry", CASES, ids=[f"{row.id}@{entry}" for row, entry in CASES])
def test_bad_input_is_refused_by_name_and_the_entry_keeps_serving(row, entry, server, client, reference):
    engine = get_engine("llama", **row.engine_options)
    form = row.form(entry)
    if callable(form):
        form = form(reference)
    sock = None
    if entry == "zmq-frame":
        sock = zmq.Context.instance().socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(f"tcp://{HOST}:{server.zmq_port}")
    try:
        before = finished_requests(entry, server, engine)
        if row.clamped:
            run_clamped(entry, form, server, client, engine, reference)
        else:
            run_bad(row, entry, form, server, client, engine, sock)
        ran = finished_requests(entry, server, engine) - before
        assert ran == (1 if row.clamped else 0), f"{ran} requests ran"
        if entry == "engine":
            usage = bounded(engine.check_accounting)
            assert usage["waiting"] == 0 and usage["running"] == 0, f"work left behind: {usage}"
        check_good(entry, server, client, engine, reference, sock)
    finally:
        if sock is not None:
            sock.close(0)


# ---------------------------------------------------------------------------- outside the table
@pytest.mark.parametrize("entry", ["completions", "chat"])
def test_openai_routes_ignore_unknown_fields(entry, server, client, reference):
    """The documented exception to the unknown-field rows: the OpenAI routes ignore fields they
    do not know (clients send many), at the top level and inside messages, and answer as usual."""
    body = {**(CMPL_OK if entry == "completions" else CHAT_OK), "bogus": 1, "user": "someone"}
    if entry == "chat":
        body["messages"] = [{**m, "bogus": {"x": [1]}} for m in MESSAGES]
    r = post(server, HTTP_PATHS[entry], body)
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    got = choice["text"] if entry == "completions" else choice["message"]["content"]
    assert got == (reference.text if entry == "completions" else reference.chat_text)


def test_valid_edges_are_accepted(reference):
    """The limits themselves are fine (the rows above are one step past them): on a 64-token
    context a prompt filling it with max_new_tokens=0, one token short of it (max_new_tokens is
    clipped), and the extreme valid parameter values."""
    engine = get_engine("llama", **SHORT_CTX)
    full = engine.generate(input_ids=[100] * 64, sampling_params={"max_new_tokens": 0})
    assert full["output_ids"] == [] and full["meta_info"]["finish_reason"] == {"type": "length", "length": 0}
    clipped = engine.generate(input_ids=[100] * 63, sampling_params={**GOOD_SP, "max_new_tokens": 50})
    assert len(clipped["output_ids"]) == 1
    assert clipped["meta_info"]["finish_reason"]["type"] == "length"
    edge = {
        **GOOD_SP,
        "top_p": 1.0,
        "top_k": -1,
        "min_p": 1.0,
        "frequency_penalty": 2,
        "presence_penalty": -2,
        "repetition_penalty": 2,
        "stop_token_ids": [0, VOCAB - 1],
        "temperature": 0.0,
        "seed": -5,
        "max_new_tokens": 3,
        "min_new_tokens": 3,
    }
    out = engine.generate(input_ids=[5, 6, 7], sampling_params=edge)
    assert len(out["output_ids"]) == 3
    assert_serves_as_before(engine, PROMPT, GOOD_SP, reference.ids)


def test_the_table_is_complete():
    """Every row reaches at least one entry, the ids are unique, each entry is exercised, and
    rows with engine_options run on the Engine only."""
    assert all(any(row.form(e) is not None for e in ENTRIES) for row in ROWS)
    assert len({row.id for row in ROWS}) == len(ROWS)
    assert {entry for _, entry in CASES} == set(ENTRIES)
    # a row for an Engine configured otherwise has no form on the entries the default server answers
    assert all(row.form(e) is None for row in ROWS if row.engine_options for e in ENTRIES if e != "engine")
