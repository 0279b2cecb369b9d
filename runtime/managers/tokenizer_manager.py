"""The tokenizer manager: the runtime's front door, in the caller's process (asyncio).

It tokenises and validates requests (a bad request raises before anything is queued),
sends them to the scheduler, tracks each request's state, and turns the detokenizer's
text deltas into results and streams. It also watches the child processes: if one dies,
every pending request fails at once with an error naming it, and health turns bad.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import zmq
import zmq.asyncio

from radixlm.runtime.config import EngineConfig
from radixlm.runtime.layers.sampling import SamplingParams
from radixlm.runtime.managers.ipc import IpcAddresses, make_socket
from radixlm.runtime.managers.messages import (
    DECODE_ERRORS,
    AbortReq,
    ControlReply,
    ControlReq,
    GenerateReq,
    ShutdownAck,
    TextOutputBatch,
    ToTokenizerManager,
    decoder,
    encoder,
)
from radixlm.runtime.managers.request_state import ReqState
from radixlm.runtime.radix.cache_snapshot import decode_snapshot
from radixlm.runtime.scheduler.request import check_request, check_text

logger = logging.getLogger("radixlm.tokenizer_manager")

WATCHDOG_INTERVAL_S = 0.25


class RuntimeDiedError(RuntimeError):
    """A runtime process died; pending and new requests fail with this."""


@dataclass
class PreparedRequest:
    """A validated request: token ids, sampling parameters and logprob options."""

    input_ids: list[int]
    params: SamplingParams
    return_logprob: bool
    logprob_start_len: int
    top_logprobs_num: int


class TokenizerManager:
    def __init__(
        self, cfg: EngineConfig, addrs: IpcAddresses, tokenizer: Any, info: dict, processes: dict[str, Any]
    ) -> None:
        self.cfg = cfg
        self.addrs = addrs
        self.tokenizer = tokenizer
        self.info = info
        self.context_len: int = info["context_len"]
        self.vocab_size: int = info["vocab_size"]
        self.processes = processes
        self.states: dict[str, ReqState] = {}
        self.pending_control: dict[str, asyncio.Future] = {}
        self.dead: str | None = None
        self.on_death: list[Callable[[str], None]] = []
        self.metrics: Any = None  # set by the HTTP server: observes TTFT, ITL, tokens
        self._rng = random.Random(cfg.random_seed)
        self._acks: set[str] = set()
        self._tasks: list[asyncio.Task] = []
        self._died: asyncio.Future | None = None  # resolved once the runtime is dead or shut down

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        self.ctx = zmq.asyncio.Context()
        self.to_scheduler = make_socket(self.ctx, zmq.PUSH, self.addrs.scheduler_input, bind=True)
        self.from_runtime = make_socket(self.ctx, zmq.PULL, self.addrs.tokenizer_input, bind=True)
        self.enc = encoder()
        self.dec = decoder(ToTokenizerManager)
        self._died = asyncio.get_running_loop().create_future()
        self._tasks = [asyncio.create_task(self._recv_loop()), asyncio.create_task(self._watchdog())]

    async def shutdown(self, timeout: float = 5.0) -> None:
        if self.dead is None:
            try:
                await self._send(ControlReq(rid="shutdown", op="shutdown"))
                deadline = time.monotonic() + timeout
                while (
                    self._acks != {"scheduler", "detokenizer"}
                    and time.monotonic() < deadline
                    and all(p.is_alive() for p in self.processes.values())
                ):
                    await asyncio.sleep(0.02)
            except Exception:  # best effort: the launcher terminates whatever is left
                pass
        self.dead = self.dead or "runtime shut down"
        self._set_died()
        for task in self._tasks:
            task.cancel()
        self._fail_all(RuntimeDiedError("runtime shut down"))
        self.to_scheduler.close(0)
        self.from_runtime.close(0)
        self.ctx.term()

    # ------------------------------------------------------------------ validation
    def prepare(
        self,
        prompt: str | None,
        input_ids: Sequence[int] | None,
        sampling_params: Any,
        return_logprob: bool = False,
        logprob_start_len: int | None = None,
        top_logprobs_num: int = 0,
        *,
        token_ids: list[int] | None = None,
    ) -> PreparedRequest:
        """Tokenise and validate one request; raises ValueError/TypeError naming the problem.
        `token_ids`: the prompt's tokens, already computed (prepare_many)."""
        params = SamplingParams.from_any(sampling_params)
        if (prompt is None) == (input_ids is None):
            raise ValueError("give exactly one of prompt (text) or input_ids")
        if prompt is not None:
            check_prompt_text(prompt)
            ids = token_ids if token_ids is not None else list(self.tokenizer(prompt).input_ids)
        else:
            if not isinstance(input_ids, (list, tuple)):
                raise TypeError("input_ids must be a list of token ids")
            ids = list(input_ids)
        if not isinstance(return_logprob, bool):
            raise TypeError("return_logprob must be a boolean")
        start = -1 if logprob_start_len is None else logprob_start_len
        check_request(
            ids,
            params,
            self.vocab_size,
            self.context_len,
            start,
            top_logprobs_num,
            grammar_backend=self.cfg.grammar_backend,
            whitespace_pattern=self.cfg.constrained_json_whitespace_pattern,
        )
        return PreparedRequest(ids, params, return_logprob, start, top_logprobs_num)

    def prepare_many(self, requests: Sequence[dict]) -> list[PreparedRequest | Exception]:
        """`prepare` for several requests (each a dict of its keywords), tokenising their text
        prompts in one batch call; an invalid request gets its ValueError/TypeError in its place."""
        texts: dict[int, str] = {}
        for i, req in enumerate(requests):
            prompt = req.get("prompt")
            if prompt is not None and req.get("input_ids") is None:
                try:
                    check_prompt_text(prompt)
                except (ValueError, TypeError):
                    continue  # prepare raises it again, in its place
                texts[i] = prompt
        encoded = self.tokenizer(list(texts.values())).input_ids if texts else []
        tokens = dict(zip(texts, encoded))
        out: list[PreparedRequest | Exception] = []
        for i, req in enumerate(requests):
            try:
                out.append(self.prepare(**req, token_ids=tokens.get(i)))
            except (ValueError, TypeError) as exc:
                out.append(exc)
        return out

    def tokenize(self, text: str) -> dict[str, list]:
        """`text`'s token ids exactly as `prepare` counts a text prompt's (the same tokenizer
        call, special tokens included), with each token's (start, end) character span in `text`;
        a token the tokenizer adds with no span (a BOS) gets (0, 0). For the DSL's cache report:
        offsets[k][0] is where a prompt whose first k tokens were cached left the cache."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a string, got {type(text).__name__}")
        check_text(text, "text")
        if not getattr(self.tokenizer, "is_fast", False):
            raise ValueError("this model's tokenizer is not a fast one, so it gives no character offsets")
        encoded = self.tokenizer(text, return_offsets_mapping=True)
        spans = [(int(s), int(e)) if s is not None else (0, 0) for s, e in encoded["offset_mapping"]]
        return {"input_ids": list(encoded.input_ids), "offsets": spans}

    # ------------------------------------------------------------------ requests
    async def generate(
        self, req: PreparedRequest, stream: bool = False, rid: str | None = None
    ) -> AsyncIterator[dict]:
        """Run a prepared request. Streaming yields deltas
        `{"index", "text", "output_ids", "meta_info", "finished"}`; otherwise one final
        `{"index", "text", "output_ids", "meta_info"}` per sample (n of them), in index order."""
        self._check_alive()
        rid = rid or uuid.uuid4().hex
        params = req.params
        seed = params.seed if params.seed is not None else self._rng.getrandbits(62)
        n = params.n
        if n > 1:
            # compute the shared prompt once, so the n samples hit the cache instead of racing
            warm = SamplingParams.from_any({"max_new_tokens": 0})
            async for _ in self._run_one(
                f"{rid}-warm", 0, req.input_ids, warm, seed, req, False, logprobs=False
            ):
                pass
        rids = [rid] if n == 1 else [f"{rid}-{k}" for k in range(n)]
        iters = [
            self._run_one(r, k, req.input_ids, params, seed + k, req, stream) for k, r in enumerate(rids)
        ]
        if len(iters) == 1:
            async for item in iters[0]:
                yield item
            return
        async for item in _merge(iters):
            yield item

    async def _run_one(
        self,
        rid: str,
        index: int,
        ids: list[int],
        params: SamplingParams,
        seed: int,
        req: PreparedRequest,
        stream: bool,
        logprobs: bool = True,
    ) -> AsyncIterator[dict]:
        if rid in self.states:
            raise ValueError(f"duplicate request id {rid!r}")
        # checked again here: the samples of an n > 1 request start after their warm-up, by
        # when the runtime may have died (and _fail_all no longer sees new states)
        self._check_alive()
        state = ReqState(rid=rid, index=index, stream=stream)
        self.states[rid] = state
        msg = GenerateReq(
            rid=rid,
            input_ids=ids,
            sampling_params=params,
            return_logprob=req.return_logprob and logprobs,
            logprob_start_len=req.logprob_start_len,
            top_logprobs_num=req.top_logprobs_num,
            stream=stream,
            seed=seed,
        )
        try:
            await self._send(msg)
            while True:
                item = await state.queue.get()
                if isinstance(item, Exception):
                    raise item
                if stream:
                    yield item
                    if item["finished"]:
                        return
                elif item["finished"]:
                    yield {
                        "index": index,
                        "text": state.text,
                        "output_ids": state.output_ids,
                        "meta_info": state.meta_info,
                    }
                    return
        finally:
            if not state.finished and self.dead is None:
                # the consumer went away (client disconnect, cancellation): free its KV
                with contextlib.suppress(RuntimeDiedError):  # died meanwhile: nothing left to free
                    await self._send(AbortReq(rid=rid, message="client disconnected"))
            self.states.pop(rid, None)

    async def abort(self, rid: str) -> None:
        targets = [r for r in self.states if r == rid or r.startswith(f"{rid}-")]
        for r in targets:
            await self._send(AbortReq(rid=r, message="aborted by user"))

    async def control(self, op: str, timeout: float = 30.0, args: dict | None = None) -> ControlReply:
        self._check_alive()
        rid = uuid.uuid4().hex
        fut = asyncio.get_running_loop().create_future()
        self.pending_control[rid] = fut
        try:
            await self._send(ControlReq(rid=rid, op=op, args=args or {}))
            return await asyncio.wait_for(fut, timeout)
        finally:
            self.pending_control.pop(rid, None)

    async def cache_snapshot(self, args: dict[str, int | str]) -> dict[str, Any]:
        """Every replica's radix-tree snapshot within `args`' limits, decoded here (off the event
        loop: a few hundred short texts), so the scheduler only walks the tree. A refusal (bad
        limits) is a ValueError naming it. What `Engine.cache_snapshot` and `/cache.json` answer."""
        reply = await self.control("cache_snapshot", args=args)
        if not reply.ok:
            raise ValueError(f"cache snapshot refused: {reply.error}")
        return await asyncio.to_thread(decode_snapshot, reply.data, self.tokenizer)

    # ------------------------------------------------------------------ internals
    def _check_alive(self) -> None:
        if self.dead is not None:
            raise RuntimeDiedError(self.dead)

    async def _send(self, msg: Any) -> None:
        sending = self.to_scheduler.send(self.enc.encode(msg))
        if not sending.done():
            # a PUSH socket whose only peer died blocks until a peer connects, which never
            # happens: give up when the watchdog declares the runtime dead, or the request
            # sent in that window would hang instead of failing with the others
            try:
                await asyncio.wait({sending, self._died}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                sending.cancel()  # a no-op once sent; withdraws it when dead or when we are cancelled
            if sending.cancelled():
                raise RuntimeDiedError(self.dead or "runtime shut down")
        sending.result()

    def _set_died(self) -> None:
        if self._died is not None and not self._died.done():
            self._died.set_result(None)

    async def _recv_loop(self) -> None:
        while True:
            frame = await self.from_runtime.recv()
            try:
                msg = self.dec.decode(frame)
            except DECODE_ERRORS as exc:
                logger.warning("dropped a message that failed to decode: %s", exc)
                continue
            try:
                self._dispatch(msg)
            except Exception:
                logger.exception("error dispatching %s", type(msg).__name__)

    def _dispatch(self, msg: Any) -> None:
        if isinstance(msg, TextOutputBatch):
            now = time.perf_counter()
            for out in msg.outputs:
                state = self.states.get(out.rid)
                if state is not None:
                    state.apply(out, now, self.metrics)
        elif isinstance(msg, ControlReply):
            fut = self.pending_control.get(msg.rid)
            if fut is not None and not fut.done():
                fut.set_result(msg)
        elif isinstance(msg, ShutdownAck):
            self._acks.add(msg.process)

    def _fail_all(self, exc: Exception) -> None:
        for state in list(self.states.values()):
            state.finished = True
            state.queue.put_nowait(exc)
        for fut in self.pending_control.values():
            if not fut.done():
                fut.set_exception(exc)

    async def _watchdog(self) -> None:
        while self.dead is None:
            await asyncio.sleep(WATCHDOG_INTERVAL_S)
            for name, proc in self.processes.items():
                if not proc.is_alive():
                    self.dead = f"the {name} process (pid {proc.pid}) died with exit code {proc.exitcode}"
                    logger.error("%s; failing %d pending requests", self.dead, len(self.states))
                    self._fail_all(RuntimeDiedError(self.dead))
                    self._set_died()
                    for callback in self.on_death:
                        callback(self.dead)
                    return


async def _merge(iters: list[AsyncIterator[dict]]) -> AsyncIterator[dict]:
    """Interleave several async iterators; non-streaming results come back in index order."""
    queue: asyncio.Queue = asyncio.Queue()
    done = object()

    async def pump(it: AsyncIterator[dict]) -> None:
        try:
            async for item in it:
                await queue.put(item)
        except Exception as exc:
            await queue.put(exc)
        finally:
            await queue.put(done)

    tasks = [asyncio.create_task(pump(it)) for it in iters]
    remaining = len(tasks)
    try:
        while remaining:
            item = await queue.get()
            if item is done:
                remaining -= 1
            elif isinstance(item, Exception):
                raise item
            else:
                yield item
    finally:
        for task in tasks:
            task.cancel()


def check_prompt_text(prompt: Any) -> None:
    if not isinstance(prompt, str):
        raise TypeError(f"prompt must be a string, got {type(prompt).__name__}")
    if not prompt:
        raise ValueError("prompt is empty")
    check_text(prompt)
