"""HTTP server: the native /generate route, OpenAI-compatible completions and chat, and
operations routes (/health, /flush_cache, /server_info, /metrics).

Every handler validates its input and answers 4xx naming the problem; a client that goes
away (mid-stream or while waiting) has its request aborted, which frees its KV.
Unknown `model` names are accepted: one server serves one model.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from radixlm.runtime.entrypoints.metrics import ServerMetrics
from radixlm.runtime.entrypoints.openai_protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    GenerateRequest,
    finish_reason_name,
)
from radixlm.runtime.entrypoints.validation_text import describe_undecodable_body, describe_validation_errors
from radixlm.runtime.managers.tokenizer_manager import (
    PreparedRequest,
    RequestError,
    RuntimeDiedError,
    TokenizerManager,
)
from radixlm.runtime.scheduler.request import check_text

MAX_BODY_BYTES = 32 * 1024 * 1024


class HTTPError(Exception):
    def __init__(self, status: int, message: str, kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.message, self.kind = status, message, kind


def _error_body(status: int, message: str, kind: str) -> dict:
    return {"error": {"message": message, "type": kind, "code": status}}


def create_app(
    tm: TokenizerManager,
    model_name: str,
    api_key: str | None = None,
    on_startup: Callable[[], Awaitable[None]] | None = None,
    on_shutdown: Callable[[], Awaitable[None]] | None = None,
) -> FastAPI:
    metrics = ServerMetrics()
    tm.metrics = metrics

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await tm.start()
        if on_startup:
            await on_startup()
        yield
        if on_shutdown:
            await on_shutdown()
        await tm.shutdown()

    app = FastAPI(title="radixlm", lifespan=lifespan)

    # ------------------------------------------------------------------ middleware and errors
    # a plain ASGI middleware: Starlette's BaseHTTPMiddleware would hide client disconnects
    app.add_middleware(GuardMiddleware, api_key=api_key)

    @app.exception_handler(RequestValidationError)
    async def on_validation_error(request: Request, exc: RequestValidationError):
        problems = describe_validation_errors(exc.errors())
        return JSONResponse(
            _error_body(400, f"invalid request: {problems}", "invalid_request_error"), status_code=400
        )

    @app.exception_handler(HTTPError)
    async def on_http_error(request: Request, exc: HTTPError):
        return JSONResponse(_error_body(exc.status, exc.message, exc.kind), status_code=exc.status)

    @app.exception_handler(StarletteHTTPException)
    async def on_starlette_error(request: Request, exc: StarletteHTTPException):
        # 404/405 and bodies FastAPI cannot read get the same error shape as every other 4xx;
        # FastAPI's own text for a body that is not UTF-8 does not say what is wrong with it
        message = str(exc.detail)
        if isinstance(exc.__cause__, UnicodeDecodeError):
            message = describe_undecodable_body(exc.__cause__)
        return JSONResponse(
            _error_body(exc.status_code, message, "invalid_request_error"),
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )

    # ------------------------------------------------------------------ helpers
    def prepare(text: str | None, ids: list[int] | None, params: dict, **kw: Any) -> PreparedRequest:
        try:
            return tm.prepare(text, ids, params, **kw)
        except (ValueError, TypeError) as exc:
            raise HTTPError(400, str(exc)) from None

    async def collect(req: PreparedRequest) -> list[dict]:
        outs = [item async for item in tm.generate(req)]
        return sorted(outs, key=lambda o: o["index"])

    async def run_watching(request: Request, coro: Awaitable[Any]) -> Any:
        """Await coro, cancelling it (and so aborting its requests) if the client leaves."""
        task = asyncio.ensure_future(coro)
        try:
            while True:
                done, _ = await asyncio.wait({task}, timeout=0.5)
                if done:
                    return _translate(task)
                if await request.is_disconnected():
                    task.cancel()
                    raise HTTPError(499, "client disconnected")
        finally:
            if not task.done():
                task.cancel()

    def sse(chunks: AsyncIterator[dict]) -> StreamingResponse:
        async def body():
            try:
                async for chunk in chunks:
                    yield f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n"
            except HTTPError as exc:
                yield f"data: {json.dumps(_error_body(exc.status, exc.message, exc.kind))}\n\n"
            except (RequestError, RuntimeDiedError, ValueError) as exc:
                status = getattr(exc, "status_code", 503 if isinstance(exc, RuntimeDiedError) else 400)
                yield f"data: {json.dumps(_error_body(status, str(exc), 'server_error'))}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(body(), media_type="text/event-stream")

    def token_text(token_id: int) -> str:
        return tm.tokenizer.decode([token_id])

    def echo_prompt(text: str | None, ids: list[int]) -> tuple[str, list[int]]:
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
            pos += len(token_text(tid))
        return text, offsets

    # ------------------------------------------------------------------ native
    @app.post("/generate")
    async def generate(body: GenerateRequest, request: Request):
        if (body.text is None) == (body.input_ids is None):
            raise HTTPError(400, "give exactly one of text or input_ids")
        if body.text is not None:
            inputs = [(t, None) for t in ([body.text] if isinstance(body.text, str) else body.text)]
            single = isinstance(body.text, str)
        else:
            nested = bool(body.input_ids) and isinstance(body.input_ids[0], list)
            inputs = [(None, ids) for ids in (body.input_ids if nested else [body.input_ids])]
            single = not nested
        if not inputs:
            raise HTTPError(400, "no prompts given")
        # each option is one value for every prompt, or a list with one value per prompt
        options = {}
        for field in ("sampling_params", "return_logprob", "logprob_start_len", "top_logprobs_num"):
            value = getattr(body, field)
            if isinstance(value, list):
                if single or len(value) != len(inputs):
                    raise HTTPError(
                        400,
                        f"{field} is a list of {len(value)} but there "
                        f"{'is one prompt' if single else f'are {len(inputs)} prompts'}",
                    )
                options[field] = value
            else:
                options[field] = [value] * len(inputs)
        reqs = [
            prepare(t, ids, params, return_logprob=want_lp, logprob_start_len=start, top_logprobs_num=top)
            for (t, ids), params, want_lp, start, top in zip(inputs, *options.values())
        ]
        if body.stream:
            if len(reqs) != 1 or reqs[0].params.n != 1:
                raise HTTPError(400, "stream takes one prompt with n == 1")

            async def chunks():
                text, ids = "", []
                async for item in _guard(tm.generate(reqs[0], stream=True, rid=body.rid)):
                    text += item["text"]
                    ids += item["output_ids"]
                    yield {"text": text, "output_ids": ids, "meta_info": item["meta_info"]}

            return sse(chunks())
        groups = await run_watching(request, asyncio.gather(*(collect(r) for r in reqs)))
        outs = [
            {"text": o["text"], "output_ids": o["output_ids"], "meta_info": o["meta_info"]}
            for group in groups
            for o in group
        ]
        return outs[0] if single and len(outs) == 1 else outs

    # ------------------------------------------------------------------ OpenAI
    @app.get("/v1/models")
    async def models():
        return {
            "object": "list",
            "data": [
                {
                    "id": model_name,
                    "object": "model",
                    "created": int(time.time()),
                    "owned_by": "radixlm",
                    "max_model_len": tm.context_len,
                }
            ],
        }

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        if (problem := body.unsupported()) is not None:
            raise HTTPError(400, problem)
        prompt = body.prompt
        if isinstance(prompt, str):
            inputs = [(prompt, None)]
        elif prompt and all(isinstance(p, str) for p in prompt):
            inputs = [(p, None) for p in prompt]
        elif prompt and all(isinstance(p, int) for p in prompt):
            inputs = [(None, list(prompt))]
        elif prompt and all(isinstance(p, list) for p in prompt):
            inputs = [(None, p) for p in prompt]
        else:
            raise HTTPError(400, "prompt must be a non-empty string, list of strings, or token ids")
        want_lp = body.logprobs is not None
        if want_lp and not 0 <= body.logprobs <= 20:
            raise HTTPError(400, "logprobs must be between 0 and 20")
        params = body.sampling_params(body.max_tokens)
        # echo with logprobs scores the prompt too: its logprobs from the first token on
        reqs = [
            prepare(
                t,
                ids,
                params,
                return_logprob=want_lp,
                top_logprobs_num=body.logprobs or 0,
                logprob_start_len=0 if body.echo and want_lp else None,
            )
            for t, ids in inputs
        ]
        # echo: per prompt, its text and where each of its tokens starts in that text
        echoes = [echo_prompt(t, r.input_ids) if body.echo else ("", []) for (t, _), r in zip(inputs, reqs)]
        rid, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
        base = {"id": rid, "object": "text_completion", "created": created, "model": body.model}

        def lp_block(
            meta: dict, offset: int, text_start: int, echo_offsets: list[int] | None = None
        ) -> dict | None:
            """Logprobs of the output tokens from `offset` on, whose text starts at `text_start`;
            with `echo_offsets` the prompt's tokens come first (the first one has no logprob)."""
            if not want_lp:
                return None
            entries = meta.get("output_token_logprobs", [])[offset:]
            tops = meta.get("output_top_logprobs", [])[offset:] if body.logprobs else [None] * len(entries)
            tokens = [token_text(tid) for _, tid in entries]
            offsets, pos = [], text_start
            for tok in tokens:
                offsets.append(pos)
                pos += len(tok)
            if echo_offsets is not None:
                prompt_entries = meta.get("input_token_logprobs", [])
                prompt_tops = (
                    meta.get("input_top_logprobs", []) if body.logprobs else [None] * len(prompt_entries)
                )
                entries, tops = prompt_entries + entries, prompt_tops + tops
                tokens = [token_text(tid) for _, tid in prompt_entries] + tokens
                offsets = echo_offsets[: len(prompt_entries)] + offsets
            return {
                "tokens": tokens,
                "token_logprobs": [lp for lp, _ in entries],
                "text_offset": offsets,
                "top_logprobs": [({token_text(t): v for t, v in top} if top else None) for top in tops],
            }

        if body.stream:

            async def chunks():
                seen: dict[int, tuple[int, int]] = {}
                usage = {"prompt_tokens": 0, "completion_tokens": 0}
                for p_idx, req in enumerate(reqs):
                    echo_text, echo_offsets = echoes[p_idx]
                    async for item in _guard(tm.generate(req, stream=True)):
                        index = p_idx * body.n + item["index"]
                        meta = item["meta_info"]
                        text, lp_extra = item["text"], None
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
                            text, lp_extra = echo_text + text, echo_offsets
                            n_ids, n_chars = 0, len(echo_text)
                        else:
                            n_ids, n_chars = seen.get(index, (0, 0))
                        choice = {
                            "index": index,
                            "text": text,
                            "logprobs": lp_block(meta, n_ids, n_chars, lp_extra),
                            "finish_reason": finish_reason_name(meta.get("finish_reason")),
                        }
                        seen[index] = (n_ids + len(item["output_ids"]), n_chars + len(item["text"]))
                        if item["finished"]:
                            if item["index"] == 0:
                                usage["prompt_tokens"] += meta["prompt_tokens"]
                            usage["completion_tokens"] += meta["completion_tokens"]
                        yield {**base, "choices": [choice]}
                if body.stream_options and body.stream_options.include_usage:
                    usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
                    yield {**base, "choices": [], "usage": usage}

            return sse(chunks())

        groups = await run_watching(request, asyncio.gather(*(collect(r) for r in reqs)))
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
                        "logprobs": lp_block(meta, 0, len(echo_text), echo_offsets if body.echo else None),
                        "finish_reason": finish_reason_name(meta.get("finish_reason")),
                    }
                )
        return {
            **base,
            "choices": choices,
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request):
        if (problem := body.unsupported()) is not None:
            raise HTTPError(400, problem)
        if getattr(tm.tokenizer, "chat_template", None) is None:
            raise HTTPError(400, "this model's tokenizer has no chat template")
        if body.top_logprobs is not None and not 0 <= body.top_logprobs <= 20:
            raise HTTPError(400, "top_logprobs must be between 0 and 20")
        messages = [{"role": m.role, "content": m.text()} for m in body.messages]
        for i, m in enumerate(messages):
            try:
                check_text(m["content"], f"messages[{i}].content")
            except ValueError as exc:
                raise HTTPError(400, str(exc)) from None
        try:
            text = tm.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        except Exception as exc:  # the model's own Jinja template rejected the conversation
            raise HTTPError(400, f"chat template failed: {exc}") from None
        ids = tm.tokenizer(text, add_special_tokens=False).input_ids
        max_tokens = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
        top_n = body.top_logprobs or 0
        req = prepare(
            None,
            ids,
            body.sampling_params(max_tokens),
            return_logprob=body.logprobs,
            top_logprobs_num=top_n if body.logprobs else 0,
        )
        rid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        base = {"id": rid, "created": created, "model": body.model}

        def lp_content(meta: dict, offset: int) -> dict | None:
            if not body.logprobs:
                return None
            entries = meta.get("output_token_logprobs", [])[offset:]
            tops = meta.get("output_top_logprobs", [])[offset:] if top_n else [[]] * len(entries)
            content = []
            for (lp, tid), top in zip(entries, tops):
                tok = token_text(tid)
                content.append(
                    {
                        "token": tok,
                        "logprob": lp,
                        "bytes": list(tok.encode()),
                        "top_logprobs": [
                            {"token": token_text(t), "logprob": v, "bytes": list(token_text(t).encode())}
                            for t, v in (top or [])
                        ],
                    }
                )
            return {"content": content}

        if body.stream:

            async def chunks():
                sent_role: set[int] = set()
                offsets: dict[int, int] = {}
                usage = {"prompt_tokens": 0, "completion_tokens": 0}
                async for item in _guard(tm.generate(req, stream=True)):
                    index, meta = item["index"], item["meta_info"]
                    if index not in sent_role:
                        sent_role.add(index)
                        yield {
                            **base,
                            "object": "chat.completion.chunk",
                            "choices": [
                                {
                                    "index": index,
                                    "delta": {"role": "assistant", "content": ""},
                                    "logprobs": None,
                                    "finish_reason": None,
                                }
                            ],
                        }
                    off = offsets.get(index, 0)
                    offsets[index] = off + len(item["output_ids"])
                    yield {
                        **base,
                        "object": "chat.completion.chunk",
                        "choices": [
                            {
                                "index": index,
                                "delta": {"content": item["text"]} if item["text"] else {},
                                "logprobs": lp_content(meta, off),
                                "finish_reason": finish_reason_name(meta.get("finish_reason")),
                            }
                        ],
                    }
                    if item["finished"]:
                        usage["prompt_tokens"] = meta["prompt_tokens"]
                        usage["completion_tokens"] += meta["completion_tokens"]
                if body.stream_options and body.stream_options.include_usage:
                    usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
                    yield {**base, "object": "chat.completion.chunk", "choices": [], "usage": usage}

            return sse(chunks())

        outs = await run_watching(request, collect(req))
        meta0 = outs[0]["meta_info"]
        completion_tokens = sum(o["meta_info"]["completion_tokens"] for o in outs)
        return {
            **base,
            "object": "chat.completion",
            "choices": [
                {
                    "index": o["index"],
                    "message": {"role": "assistant", "content": o["text"]},
                    "logprobs": lp_content(o["meta_info"], 0),
                    "finish_reason": finish_reason_name(o["meta_info"].get("finish_reason")),
                }
                for o in outs
            ],
            "usage": {
                "prompt_tokens": meta0["prompt_tokens"],
                "completion_tokens": completion_tokens,
                "total_tokens": meta0["prompt_tokens"] + completion_tokens,
            },
        }

    # ------------------------------------------------------------------ operations
    @app.get("/health")
    async def health():
        if tm.dead is not None:
            return JSONResponse({"status": "unhealthy", "error": tm.dead}, status_code=503)
        try:
            reply = await tm.control("health", timeout=5.0)
        except (RuntimeDiedError, asyncio.TimeoutError) as exc:
            return JSONResponse(
                {"status": "unhealthy", "error": str(exc) or "scheduler did not answer"}, status_code=503
            )
        return {"status": "ok" if reply.ok else "unhealthy"}

    @app.post("/flush_cache")
    async def flush_cache():
        reply = await _control(tm, "flush_cache")
        if not reply.ok:
            raise HTTPError(409, f"cache not flushed: {reply.error}")
        return {"success": True}

    @app.get("/server_info")
    async def server_info():
        reply = await _control(tm, "server_info")
        pids = {name: proc.pid for name, proc in tm.processes.items()}
        return {"model": model_name, "process_ids": pids, **reply.data}

    @app.get("/metrics")
    async def prometheus_metrics():
        if tm.dead is None:
            try:
                metrics.update_from_server_info((await tm.control("server_info", timeout=5.0)).data)
            except (RuntimeDiedError, asyncio.TimeoutError):
                pass
        return Response(metrics.render(), media_type="text/plain; version=0.0.4")

    return app


class GuardMiddleware:
    """API-key check and request-size limit, before any route runs. Bodies without a
    Content-Length (chunked uploads) are read up to the limit first, then replayed."""

    def __init__(self, app: Any, api_key: str | None) -> None:
        self.app = app
        self.api_key = api_key

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        if self.api_key and scope.get("path") != "/health":
            if headers.get("authorization", "") != f"Bearer {self.api_key}":
                return await _send_json(
                    send, 401, _error_body(401, "missing or invalid API key", "authentication_error")
                )
        length = headers.get("content-length")
        if length is not None:
            if length.isdigit() and int(length) > MAX_BODY_BYTES:
                return await _send_json(
                    send,
                    413,
                    _error_body(413, f"request body over {MAX_BODY_BYTES} bytes", "invalid_request_error"),
                )
            return await self.app(scope, receive, send)
        buffered, total = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                buffered.append(message)
                break
            total += len(message.get("body", b""))
            if total > MAX_BODY_BYTES:
                return await _send_json(
                    send,
                    413,
                    _error_body(413, f"request body over {MAX_BODY_BYTES} bytes", "invalid_request_error"),
                )
            buffered.append(message)
            if not message.get("more_body", False):
                break

        async def replay() -> dict:
            return buffered.pop(0) if buffered else await receive()

        return await self.app(scope, replay, send)


async def _send_json(send: Callable, status: int, body: dict) -> None:
    payload = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})


async def _control(tm: TokenizerManager, op: str):
    try:
        return await tm.control(op)
    except RuntimeDiedError as exc:
        raise HTTPError(503, str(exc), "server_error") from None


async def _guard(items: AsyncIterator[dict]) -> AsyncIterator[dict]:
    """Turn runtime errors inside a stream into HTTPErrors that the SSE writer reports."""
    try:
        async for item in items:
            yield item
    except RequestError as exc:
        raise HTTPError(exc.status_code, str(exc)) from None
    except RuntimeDiedError as exc:
        raise HTTPError(503, str(exc), "server_error") from None


def _translate(task: asyncio.Future) -> Any:
    try:
        return task.result()
    except RequestError as exc:
        raise HTTPError(exc.status_code, str(exc)) from None
    except RuntimeDiedError as exc:
        raise HTTPError(503, str(exc), "server_error") from None
