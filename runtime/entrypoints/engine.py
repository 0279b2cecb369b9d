"""`Engine`: the programmatic entry to the runtime.

    with Engine(model_path) as engine:
        out = engine.generate("Hello", {"max_new_tokens": 16, "temperature": 0})
        out["text"], out["output_ids"], out["meta_info"]["cached_tokens"]

The Engine launches the runtime's processes (a scheduler process that owns the model and
the radix cache, a detokenizer process) and runs the tokenizer manager on a private
event loop in this process. Requests are validated before anything is queued, so a bad
request raises a `ValueError` naming the problem and never disturbs the others.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import queue
import threading
import weakref
from collections.abc import Iterator, Sequence
from typing import Any

from radixlm.runtime.config import EngineConfig, ModelConfig
from radixlm.runtime.entrypoints.launch import launch_runtime
from radixlm.runtime.layers.sampling import SamplingParams
from radixlm.runtime.managers.request_state import RequestError
from radixlm.runtime.managers.tokenizer_manager import PreparedRequest, TokenizerManager
from radixlm.runtime.radix.cache_snapshot import SnapshotLimits
from radixlm.runtime.tokenizer import load_tokenizer

logger = logging.getLogger(__name__)

PromptInput = str | Sequence[str] | None
IdsInput = Sequence[int] | Sequence[Sequence[int]] | None
_LIVE_ENGINES: weakref.WeakSet[Engine] = weakref.WeakSet()


class Engine:
    def __init__(self, model_path: str, **options: Any) -> None:
        self.config = EngineConfig.from_kwargs(model_path, **options)
        if self.config.node_rank > 0:
            raise ValueError(
                "node_rank > 0 runs worker ranks only, with no clients: start it with "
                "`radixlm serve --node-rank N ...`; the Engine belongs on node 0"
            )
        logging.getLogger("radixlm").setLevel(self.config.log_level.upper())
        self.model_config = ModelConfig.from_path(model_path)  # fail fast, before spawning anything
        self.tokenizer = load_tokenizer(self.config.tokenizer_path or model_path)
        self._closed = True
        self._runtime = launch_runtime(self.config)
        info = self._runtime.info
        self.context_len: int = info["context_len"]
        self.vocab_size: int = info["vocab_size"]
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="radixlm-tokenizer-manager", daemon=True
        )
        self._thread.start()
        self.tokenizer_manager = TokenizerManager(
            self.config, self._runtime.addrs, self.tokenizer, info, self._runtime.processes
        )
        self._endpoints: list = []
        self._closed = False
        self._call(self.tokenizer_manager.start())
        _LIVE_ENGINES.add(self)

    # ------------------------------------------------------------------ API
    def generate(
        self,
        prompt: PromptInput = None,
        sampling_params: dict | SamplingParams | Sequence[dict | SamplingParams] | None = None,
        input_ids: IdsInput = None,
        return_logprob: bool | Sequence[bool] = False,
        logprob_start_len: int | Sequence[int] | None = None,
        top_logprobs_num: int | Sequence[int] = 0,
        stream: bool = False,
    ) -> dict | list[dict] | Iterator[dict]:
        """Generate for one prompt (returns a dict) or a batch (returns a list of dicts, in order;
        a prompt with n > 1 contributes n consecutive entries). With `stream=True` (one prompt)
        returns an iterator of chunks whose `text` and `output_ids` are the new part only."""
        self._check_open()
        prompts, single = _normalise_inputs(prompt, input_ids)
        count = len(prompts)
        columns = [
            _broadcast(v, count, name)
            for v, name in (
                (sampling_params, "sampling_params"),
                (return_logprob, "return_logprob"),
                (logprob_start_len, "logprob_start_len"),
                (top_logprobs_num, "top_logprobs_num"),
            )
        ]
        prepared: list[PreparedRequest] = []
        tm = self.tokenizer_manager
        for i, p in enumerate(prompts):  # validate everything before queueing anything
            params, want_lp, start, top_n = (col[i] for col in columns)
            try:
                text, ids = (p, None) if isinstance(p, str) else (None, p)
                prepared.append(tm.prepare(text, ids, params, want_lp, start, top_n))
            except (ValueError, TypeError) as exc:
                raise type(exc)(f"request {i}: {exc}" if not single else str(exc)) from None
        if stream:
            if count != 1:
                raise ValueError("stream=True takes a single prompt")
            return self._stream(prepared[0])
        results = self._call(self._generate_all(prepared))
        if single and len(results) == 1:
            return results[0]
        return results

    def abort(self, rid: str) -> None:
        self._call(self.tokenizer_manager.abort(rid))

    def flush_cache(self) -> bool:
        return self._call(self.tokenizer_manager.control("flush_cache")).ok

    def get_server_info(self) -> dict:
        reply = self._call(self.tokenizer_manager.control("server_info"))
        return {
            "model_path": self.config.model_path,
            "architecture": self.model_config.architecture,
            **reply.data,
        }

    def cache_snapshot(self, max_nodes: int = 200, max_text_tokens: int = 256, order: str = "hits") -> dict:
        """The radix tree's top `max_nodes` nodes (by hits, recency or tokens) with their text,
        hits, locks and tier, as `/cache.json` serves it: `{"replicas": [snapshot, ...]}`."""
        SnapshotLimits(max_nodes=max_nodes, max_text_tokens=max_text_tokens, order=order)  # ValueError
        args = {"max_nodes": max_nodes, "max_text_tokens": max_text_tokens, "order": order}
        return self._call(self.tokenizer_manager.cache_snapshot(args))

    def check_accounting(self) -> dict:
        """Raise AssertionError unless free + evictable + locked + in use == total in the scheduler."""
        reply = self._call(self.tokenizer_manager.control("check_accounting"))
        if not reply.ok:
            raise AssertionError(reply.error)
        return reply.data

    def serve_zmq(self, address: str) -> str:
        """Also serve the ZeroMQ client endpoint (for `RuntimeClient` / the DSL) at `address`."""
        from radixlm.runtime.entrypoints.zmq_endpoint import ClientEndpoint

        endpoint = ClientEndpoint(self.tokenizer_manager, address)
        self._call(endpoint.start())
        self._endpoints.append(endpoint)
        return address

    @property
    def process_ids(self) -> dict[str, int]:
        return {name: proc.pid for name, proc in self._runtime.processes.items()}

    def shutdown(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            for endpoint in self._endpoints:
                self._call(endpoint.close(), check=False)
            self._call(self.tokenizer_manager.shutdown(), check=False)
        except Exception:
            logger.exception("error during shutdown")
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)
            self._runtime.terminate()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    # ------------------------------------------------------------------ internals
    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("engine has been shut down")

    def _call(self, coro: Any, check: bool = True) -> Any:
        if check:
            self._check_open()
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    async def _generate_all(self, prepared: list[PreparedRequest]) -> list[dict]:
        async def one(req: PreparedRequest) -> list[dict]:
            outs = [item async for item in self.tokenizer_manager.generate(req)]
            return [_public(o) for o in sorted(outs, key=lambda o: o["index"])]

        groups = await asyncio.gather(*(one(r) for r in prepared))
        return [o for group in groups for o in group]

    def _stream(self, req: PreparedRequest) -> Iterator[dict]:
        chunks: queue.Queue = queue.Queue()
        end = object()

        async def pump() -> None:
            try:
                async for item in self.tokenizer_manager.generate(req, stream=True):
                    chunks.put(item)
            except BaseException as exc:  # surfaced in the caller's thread
                chunks.put(exc)
            finally:
                chunks.put(end)

        future = asyncio.run_coroutine_threadsafe(pump(), self._loop)
        try:
            while True:
                item = chunks.get()
                if item is end:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield {
                    "text": item["text"],
                    "output_ids": item["output_ids"],
                    "meta_info": item["meta_info"],
                    "finished": item["finished"],
                }
        finally:
            future.cancel()  # consumer stopped early: the request is aborted and its KV freed


def _public(item: dict) -> dict:
    return {"text": item["text"], "output_ids": list(item["output_ids"]), "meta_info": item["meta_info"]}


def _normalise_inputs(prompt: PromptInput, input_ids: IdsInput) -> tuple[list, bool]:
    if (prompt is None) == (input_ids is None):
        raise ValueError("give exactly one of prompt or input_ids")
    if prompt is not None:
        if isinstance(prompt, str):
            return [prompt], True
        if not isinstance(prompt, (list, tuple)) or not all(isinstance(p, str) for p in prompt):
            raise TypeError("prompt must be a string or a list of strings")
        if not prompt:
            raise ValueError("prompt list is empty")
        return list(prompt), False
    if not isinstance(input_ids, (list, tuple)):
        raise TypeError("input_ids must be a list of token ids or a list of such lists")
    if input_ids and all(isinstance(x, (list, tuple)) for x in input_ids):
        return [list(x) for x in input_ids], False
    return [list(input_ids)], True


def _broadcast(value: Any, count: int, name: str) -> list:
    """One value per request: a scalar/None applies to all; a list must have one per request."""
    if isinstance(value, (list, tuple)):
        if len(value) != count:
            raise ValueError(f"{name} has {len(value)} entries for {count} prompts")
        return list(value)
    return [value] * count


@atexit.register
def _shutdown_all() -> None:
    for engine in list(_LIVE_ENGINES):
        engine.shutdown()


__all__ = ["Engine", "RequestError"]
