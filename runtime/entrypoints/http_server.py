"""HTTP server: the FastAPI app behind `radixlm serve`.

This module builds the app and its routes and frames streamed answers as server-sent
events; the routes themselves are thin. What they serve lives elsewhere in this package:
  generate_serving   the native /generate route (SGLang's shapes);
  sglang_compat      the rest of SGLang's native API (/get_model_info, /get_server_info,
                     /health_generate, /concate_and_append_request) and its dialect of /generate;
  openai_serving     /v1/completions, /v1/chat/completions and /v1/models;
  http_errors        the one mapping from runtime errors to HTTP statuses and error bodies;
  http_guard         the API key and body-size checks every request passes first.
Operations (/health, /flush_cache, /server_info, /metrics) are answered here, under SGLang's
names too, so SGLang's frontend (`sgl.RuntimeEndpoint`) and clients work unchanged.
  cache_view         /cache (the radix tree drawn live) and /cache.json, with --enable-cache-view.

Every route validates its input and answers 4xx naming the problem; a client that goes away
(mid-stream or while waiting) has its request aborted, which frees its KV.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse

from radixlm.runtime.entrypoints import cache_view, generate_serving, openai_serving, sglang_compat
from radixlm.runtime.entrypoints.http_errors import (
    UNAMBIGUOUS_ERRORS,
    HTTPError,
    as_http_errors,
    error_body,
    install_error_handlers,
    to_http_error,
)
from radixlm.runtime.entrypoints.http_guard import GuardMiddleware
from radixlm.runtime.entrypoints.metrics import ServerMetrics
from radixlm.runtime.entrypoints.openai_protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    ConcatAndAppendRequest,
    GenerateRequest,
)
from radixlm.runtime.managers.tokenizer_manager import RuntimeDiedError, TokenizerManager

Hook = Callable[[], Awaitable[None]]
HEALTH_TIMEOUT_S = 5.0  # a probe must answer fast; a scheduler this slow is unhealthy


def create_app(
    tm: TokenizerManager,
    model_name: str,
    api_key: str | None = None,
    on_startup: Hook | None = None,
    on_shutdown: Hook | None = None,
    enable_cache_view: bool = False,
) -> FastAPI:
    """The app serving `tm`'s model as `model_name`; it starts and shuts down `tm` itself, with
    `on_startup` run after the start and `on_shutdown` before the shutdown. `enable_cache_view`
    adds `/cache` and `/cache.json` (they show prompt text, so they are off by default)."""
    metrics = ServerMetrics()
    tm.metrics = metrics
    app = FastAPI(title="radixlm", lifespan=_lifespan(tm, on_startup, on_shutdown))
    app.add_middleware(GuardMiddleware, api_key=api_key)
    install_error_handlers(app)
    _add_serving_routes(app, tm, model_name)
    _add_operations_routes(app, tm, model_name, metrics)
    _add_cache_view_routes(app, tm, enable_cache_view)
    return app


def _lifespan(tm: TokenizerManager, on_startup: Hook | None, on_shutdown: Hook | None) -> Callable:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await tm.start()
        if on_startup:
            await on_startup()
        yield
        if on_shutdown:
            await on_shutdown()
        await tm.shutdown()

    return lifespan


def _add_serving_routes(app: FastAPI, tm: TokenizerManager, model_name: str) -> None:
    @app.api_route("/generate", methods=["POST", "PUT"])  # SGLang takes both
    async def generate(body: GenerateRequest, request: Request):
        return _respond(await generate_serving.generate(tm, body, request.is_disconnected))

    @app.get("/v1/models")
    async def models():
        return openai_serving.list_models(tm, model_name)

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        return _respond(await openai_serving.create_completion(tm, body, request.is_disconnected))

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request):
        return _respond(await openai_serving.create_chat_completion(tm, body, request.is_disconnected))

    @app.post("/tokenize")  # the DSL's cache report: a prompt's tokens and their character spans
    async def tokenize(body: generate_serving.TokenizeRequest):
        return generate_serving.tokenize(tm, body)


def _add_operations_routes(
    app: FastAPI, tm: TokenizerManager, model_name: str, metrics: ServerMetrics
) -> None:
    @app.get("/health")
    async def health():
        if tm.dead is not None:
            return JSONResponse({"status": "unhealthy", "error": tm.dead}, status_code=503)
        try:
            with as_http_errors():
                reply = await tm.control("health", timeout=HEALTH_TIMEOUT_S)
        except HTTPError as err:
            return JSONResponse({"status": "unhealthy", "error": err.message}, status_code=err.status)
        return {"status": "ok" if reply.ok else "unhealthy"}

    @app.api_route("/flush_cache", methods=["GET", "POST"])  # SGLang takes both
    async def flush_cache():
        with as_http_errors():
            reply = await tm.control("flush_cache")
        if not reply.ok:
            raise HTTPError(409, f"cache not flushed: {reply.error}")
        return {"success": True}

    @app.get("/server_info")
    @app.get("/get_server_info")  # SGLang's older name, which its clients still call
    async def server_info():
        with as_http_errors():
            reply = await tm.control("server_info")
        pids = {name: proc.pid for name, proc in tm.processes.items()}
        live = {"model": model_name, "process_ids": pids, **reply.data}
        return sglang_compat.server_info(tm, model_name, live)

    @app.get("/model_info")
    @app.get("/get_model_info")
    async def model_info():
        return sglang_compat.model_info(tm, model_name)

    @app.get("/health_generate")
    async def health_generate():
        # /health asks the scheduler; this runs the model for one token, as SGLang's does
        if tm.dead is not None:
            return JSONResponse({"status": "unhealthy", "error": tm.dead}, status_code=503)
        try:
            with as_http_errors():
                await sglang_compat.health_generate(tm)
        except HTTPError as err:
            return JSONResponse({"status": "unhealthy", "error": err.message}, status_code=503)
        return {"status": "ok"}

    @app.post("/concate_and_append_request")  # SGLang's spelling, as its frontend calls it
    async def concate_and_append_request(body: ConcatAndAppendRequest):
        return sglang_compat.concat_and_append(body)

    @app.get("/metrics")
    async def prometheus_metrics():
        if tm.dead is None:
            # a scrape still gets the counters this process keeps when the scheduler cannot answer
            with contextlib.suppress(RuntimeDiedError, asyncio.TimeoutError):
                info = await tm.control("server_info", timeout=HEALTH_TIMEOUT_S)
                metrics.update_from_server_info(info.data)
        return Response(metrics.render(), media_type="text/plain; version=0.0.4")


def _add_cache_view_routes(app: FastAPI, tm: TokenizerManager, enabled: bool) -> None:
    def check_enabled() -> None:
        if not enabled:
            raise HTTPError(404, "the cache view is off: start the server with --enable-cache-view")

    @app.get("/cache")
    async def cache_page():
        check_enabled()
        return HTMLResponse(cache_view.page_html(), headers={"Cache-Control": "no-store"})

    @app.get("/cache.json")
    async def cache_json(request: Request):
        check_enabled()
        args = cache_view.parse_limits(dict(request.query_params))
        with as_http_errors():
            return await tm.cache_snapshot(args)


def _respond(answer: Any) -> Any:
    """A serving function's answer as FastAPI returns it: a stream of chunks as SSE."""
    if isinstance(answer, AsyncIterator):
        return sse_response(answer)
    return answer


def sse_response(chunks: AsyncIterator[dict]) -> StreamingResponse:
    """Each chunk as one `data:` event, then `data: [DONE]`. An error part-way through (the
    status line has gone out) is sent as one more event with the standard error body."""

    async def body() -> AsyncIterator[str]:
        try:
            async for chunk in chunks:
                yield f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n"
        except UNAMBIGUOUS_ERRORS as exc:
            err = to_http_error(exc)
            yield f"data: {json.dumps(error_body(err.status, err.message, err.kind))}\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(body(), media_type="text/event-stream")
