"""OpenAI-compatible serving: completions, chat completions and the model list, as plain
functions of a TokenizerManager and a parsed request body (openai_protocol).

Each serving function answers the response body as a dict or, for `stream: true`, an async
iterator of chunk dicts for the HTTP layer to send as server-sent events. Everything about
the request is checked before the first chunk exists, so a bad streamed request still gets a
plain 4xx; a problem the client should hear about leaves as an HTTPError (http_errors).
Unknown `model` names are accepted and echoed back: one server serves one model.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

from radixlm.runtime.entrypoints.http_errors import HTTPError, as_http_errors
from radixlm.runtime.entrypoints.openai_protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    finish_reason_name,
)
from radixlm.runtime.entrypoints.reasoning_serving import (
    ChatDeltas,
    ReasoningPlan,
    chat_message,
    gate_params,
    plan_reasoning,
    template_kwargs,
)
from radixlm.runtime.entrypoints.serving_common import (
    IsDisconnected,
    collect,
    prepare,
    run_watching,
    stream,
    token_text,
)
from radixlm.runtime.entrypoints.tool_serving import ToolPlan, plan_tools, render, template_messages
from radixlm.runtime.managers.tokenizer_manager import PreparedRequest, TokenizerManager
from radixlm.runtime.scheduler.request import check_text

MAX_TOP_LOGPROBS = 20


def list_models(tm: TokenizerManager, model_name: str) -> dict:
    model = {
        "id": model_name,
        "object": "model",
        "created": int(time.time()),
        "owned_by": "radixlm",
        "max_model_len": tm.context_len,
    }
    return {"object": "list", "data": [model]}


# ---------------------------------------------------------------------------------- completions
async def create_completion(
    tm: TokenizerManager, body: CompletionRequest, is_disconnected: IsDisconnected | None = None
) -> dict | AsyncIterator[dict]:
    """The /v1/completions answer: the completion, or (stream) the chunks to send."""
    if (problem := body.unsupported()) is not None:
        raise HTTPError(400, problem)
    inputs = _completion_inputs(body.prompt)
    want_lp = body.logprobs is not None
    if want_lp and not 0 <= body.logprobs <= MAX_TOP_LOGPROBS:
        raise HTTPError(400, f"logprobs must be between 0 and {MAX_TOP_LOGPROBS}")
    params = body.sampling_params(body.max_tokens)
    # echo with logprobs scores the prompt too: its logprobs from the first token on
    reqs = [
        prepare(
            tm,
            t,
            ids,
            params,
            return_logprob=want_lp,
            top_logprobs_num=body.logprobs or 0,
            logprob_start_len=0 if body.echo and want_lp else None,
        )
        for t, ids in inputs
    ]
    echoes = [echo_prompt(tm, t, r.input_ids) if body.echo else ("", []) for (t, _), r in zip(inputs, reqs)]
    base = {
        "id": f"cmpl-{uuid.uuid4().hex}",
        "object": "text_completion",
        "created": int(time.time()),
        "model": body.model,
    }
    if body.stream:
        return _stream_completion(tm, body, reqs, echoes, base)
    groups = await run_watching(asyncio.gather(*(collect(tm, r) for r in reqs)), is_disconnected)
    choices, prompt_tokens, completion_tokens = [], 0, 0
    for p_idx, group in enumerate(groups):
        prompt_tokens += group[0]["meta_info"]["prompt_tokens"]
        echo_text, echo_offsets = echoes[p_idx]
        for out in group:
            meta = out["meta_info"]
            completion_tokens += meta["completion_tokens"]
            choices.append(
                {
                    "index": p_idx * body.n + out["index"],
                    "text": echo_text + out["text"],
                    "logprobs": _completion_logprobs(
                        tm, body.logprobs, meta, 0, len(echo_text), echo_offsets if body.echo else None
                    ),
                    "finish_reason": finish_reason_name(meta.get("finish_reason")),
                }
            )
    return {**base, "choices": choices, "usage": _usage(prompt_tokens, completion_tokens)}


def _completion_inputs(prompt: str | list) -> list[tuple[str | None, list[int] | None]]:
    """(text, token ids) per prompt, one of the two None."""
    if isinstance(prompt, str):
        return [(prompt, None)]
    if prompt and all(isinstance(p, str) for p in prompt):
        return [(p, None) for p in prompt]
    if prompt and all(isinstance(p, int) for p in prompt):
        return [(None, list(prompt))]
    if prompt and all(isinstance(p, list) for p in prompt):
        return [(None, p) for p in prompt]
    raise HTTPError(400, "prompt must be a non-empty string, list of strings, or token ids")


async def _stream_completion(
    tm: TokenizerManager,
    body: CompletionRequest,
    reqs: list[PreparedRequest],
    echoes: list[tuple[str, list[int]]],
    base: dict,
) -> AsyncIterator[dict]:
    want_lp = body.logprobs is not None
    seen: dict[int, tuple[int, int]] = {}  # choice index -> (output ids sent, characters sent)
    usage = {"prompt_tokens": 0, "completion_tokens": 0}
    for p_idx, req in enumerate(reqs):
        echo_text, echo_offsets = echoes[p_idx]
        async for item in stream(tm, req):
            index = p_idx * body.n + item["index"]
            meta = item["meta_info"]
            text, lp_echo = item["text"], None
            if body.echo and index not in seen:
                # the echoed prompt leads the first chunk, once its logprobs are all in
                # (a chunked prefill reports them over several steps, with no text)
                ready = (
                    not want_lp
                    or item["finished"]
                    or item["output_ids"]
                    or len(meta.get("input_token_logprobs", [])) >= len(req.input_ids)
                )
                if not ready:
                    continue
                text, lp_echo = echo_text + text, echo_offsets
                n_ids, n_chars = 0, len(echo_text)
            else:
                n_ids, n_chars = seen.get(index, (0, 0))
            choice = {
                "index": index,
                "text": text,
                "logprobs": _completion_logprobs(tm, body.logprobs, meta, n_ids, n_chars, lp_echo),
                "finish_reason": finish_reason_name(meta.get("finish_reason")),
            }
            seen[index] = (n_ids + len(item["output_ids"]), n_chars + len(item["text"]))
            if item["finished"]:
                if item["index"] == 0:  # the n samples of a prompt share its prompt tokens
                    usage["prompt_tokens"] += meta["prompt_tokens"]
                usage["completion_tokens"] += meta["completion_tokens"]
            yield {**base, "choices": [choice]}
    if body.stream_options and body.stream_options.include_usage:
        yield {**base, "choices": [], "usage": _usage(usage["prompt_tokens"], usage["completion_tokens"])}


def echo_prompt(tm: TokenizerManager, text: str | None, ids: list[int]) -> tuple[str, list[int]]:
    """An echoed prompt's text (a token-id prompt is decoded) and where each token starts in
    it: from the tokenizer's offset mapping where it has one (tokens it added, such as BOS,
    start where the text does), else by adding up the tokens' texts."""
    if text is not None and getattr(tm.tokenizer, "is_fast", False):
        enc = tm.tokenizer(text, return_offsets_mapping=True)
        if list(enc["input_ids"]) == list(ids):
            return text, [start for start, _ in enc["offset_mapping"]]
    text = tm.tokenizer.decode(ids) if text is None else text
    offsets, pos = [], 0
    for tid in ids:
        offsets.append(pos)
        pos += len(token_text(tm, tid))
    return text, offsets


def _completion_logprobs(
    tm: TokenizerManager,
    top_n: int | None,
    meta: dict,
    offset: int,
    text_start: int,
    echo_offsets: list[int] | None = None,
) -> dict | None:
    """The `logprobs` of a completion choice (None when `top_n`, the request's `logprobs`, is):
    the output tokens' from `offset` on, whose text starts at `text_start`; with `echo_offsets`
    the prompt's tokens come first (the first one has no logprob)."""
    if top_n is None:
        return None
    entries = meta.get("output_token_logprobs", [])[offset:]
    tops = meta.get("output_top_logprobs", [])[offset:] if top_n else [None] * len(entries)
    tokens = [token_text(tm, tid) for _, tid in entries]
    offsets, pos = [], text_start
    for tok in tokens:
        offsets.append(pos)
        pos += len(tok)
    if echo_offsets is not None:
        prompt_entries = meta.get("input_token_logprobs", [])
        prompt_tops = meta.get("input_top_logprobs", []) if top_n else [None] * len(prompt_entries)
        entries, tops = prompt_entries + entries, prompt_tops + tops
        tokens = [token_text(tm, tid) for _, tid in prompt_entries] + tokens
        offsets = echo_offsets[: len(prompt_entries)] + offsets
    return {
        "tokens": tokens,
        "token_logprobs": [lp for lp, _ in entries],
        "text_offset": offsets,
        "top_logprobs": [({token_text(tm, t): v for t, v in top} if top else None) for top in tops],
    }


# ---------------------------------------------------------------------------------- chat
async def create_chat_completion(
    tm: TokenizerManager, body: ChatCompletionRequest, is_disconnected: IsDisconnected | None = None
) -> dict | AsyncIterator[dict]:
    """The /v1/chat/completions answer: the completion, or (stream) the chunks to send."""
    if (problem := body.unsupported()) is not None:
        raise HTTPError(400, problem)
    if getattr(tm.tokenizer, "chat_template", None) is None:
        raise HTTPError(400, "this model's tokenizer has no chat template")
    if body.top_logprobs is not None and not 0 <= body.top_logprobs <= MAX_TOP_LOGPROBS:
        raise HTTPError(400, f"top_logprobs must be between 0 and {MAX_TOP_LOGPROBS}")
    with as_http_errors():
        plan = plan_tools(body, tm.tokenizer.chat_template, tm.cfg.tool_call_parser)
        messages = template_messages(body)
        kwargs = template_kwargs(body)
    text, ids = chat_prompt(tm, messages, plan.tools, kwargs)
    max_tokens = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
    top_n = body.top_logprobs or 0
    params = {**body.sampling_params(max_tokens), **plan.constraint}
    with as_http_errors():
        # reasoning: where the output starts, and a constraint held back until it ends
        thinking = plan_reasoning(tm.cfg.reasoning_parser, text, body.separate_reasoning)
        params.update(gate_params(thinking, tm.tokenizer, params))
    req = prepare(
        tm, None, ids, params, return_logprob=body.logprobs, top_logprobs_num=top_n if body.logprobs else 0
    )
    base = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": body.model}
    if body.stream:
        return _stream_chat(tm, body, req, base, plan, thinking)
    outs = await run_watching(collect(tm, req), is_disconnected)
    prompt_tokens = outs[0]["meta_info"]["prompt_tokens"]
    choices = []
    for o in outs:
        message, called = chat_message(plan, thinking, o["text"])
        finish = finish_reason_name(o["meta_info"].get("finish_reason"))
        choices.append(
            {
                "index": o["index"],
                "message": message,
                "logprobs": _chat_logprobs(tm, body, o["meta_info"], 0),
                "finish_reason": "tool_calls" if called and finish == "stop" else finish,
            }
        )
    completion_tokens = sum(o["meta_info"]["completion_tokens"] for o in outs)
    return {
        **base,
        "object": "chat.completion",
        "choices": choices,
        "usage": _usage(prompt_tokens, completion_tokens),
    }


def chat_prompt(
    tm: TokenizerManager,
    messages: list[dict],
    tools: list[dict] | None = None,
    template_kwargs: dict | None = None,
) -> tuple[str, list[int]]:
    """The prompt's text and token ids: the messages (and tools) through the model's own chat
    template, with the request's chat_template_kwargs."""
    with as_http_errors():
        for i, m in enumerate(messages):
            check_text(m["content"], f"messages[{i}].content")
        try:
            text = render(tm.tokenizer, messages, tools, template_kwargs)
        except Exception as exc:  # the template's own Jinja (raise_exception...) refused the conversation
            raise ValueError(f"chat template failed: {exc}") from None
    return text, tm.tokenizer(text, add_special_tokens=False).input_ids


async def _stream_chat(
    tm: TokenizerManager,
    body: ChatCompletionRequest,
    req: PreparedRequest,
    base: dict,
    plan: ToolPlan,
    thinking: ReasoningPlan,
) -> AsyncIterator[dict]:
    chunk_base = {**base, "object": "chat.completion.chunk"}
    # choice index -> output ids sent so far; a choice not in it yet is sent its role first
    offsets: dict[int, int] = {}
    chat_deltas: dict[int, ChatDeltas] = {}
    usage = {"prompt_tokens": 0, "completion_tokens": 0}
    async for item in stream(tm, req):
        index, meta = item["index"], item["meta_info"]
        if index not in offsets:
            role = {"role": "assistant", "content": ""}
            yield {**chunk_base, "choices": [_chat_delta(index, role, None, None)]}
            chat_deltas[index] = ChatDeltas(plan, thinking)
        off = offsets.get(index, 0)
        offsets[index] = off + len(item["output_ids"])
        deltas = list(chat_deltas[index].feed(item["text"], final=item["finished"])) or [{}]
        finish = finish_reason_name(meta.get("finish_reason"))
        if finish == "stop" and chat_deltas[index].made_calls:
            finish = "tool_calls"
        logprobs = _chat_logprobs(tm, body, meta, off)
        for k, delta in enumerate(deltas):  # the logprobs with the first, the finish with the last
            last = k == len(deltas) - 1
            yield {
                **chunk_base,
                "choices": [
                    _chat_delta(index, delta, logprobs if k == 0 else None, finish if last else None)
                ],
            }
        if item["finished"]:
            usage["prompt_tokens"] = meta["prompt_tokens"]
            usage["completion_tokens"] += meta["completion_tokens"]
    if body.stream_options and body.stream_options.include_usage:
        yield {
            **chunk_base,
            "choices": [],
            "usage": _usage(usage["prompt_tokens"], usage["completion_tokens"]),
        }


def _chat_delta(index: int, delta: dict, logprobs: dict | None, finish_reason: str | None) -> dict:
    return {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}


def _chat_logprobs(tm: TokenizerManager, body: ChatCompletionRequest, meta: dict, offset: int) -> dict | None:
    """A chat choice's `logprobs`: its output tokens' from `offset` on (None unless asked for)."""
    if not body.logprobs:
        return None
    entries = meta.get("output_token_logprobs", [])[offset:]
    tops = meta.get("output_top_logprobs", [])[offset:] if body.top_logprobs else [[]] * len(entries)
    content = []
    for (lp, tid), top in zip(entries, tops):
        tok = token_text(tm, tid)
        alternatives = []
        for t, v in top or []:
            alt = token_text(tm, t)
            alternatives.append({"token": alt, "logprob": v, "bytes": list(alt.encode())})
        content.append(
            {"token": tok, "logprob": lp, "bytes": list(tok.encode()), "top_logprobs": alternatives}
        )
    return {"content": content}


def _usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
