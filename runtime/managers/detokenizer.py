"""Incremental detokenisation, and the detokenizer process that runs it.

Text is produced as deltas whose concatenation equals `decode(all output ids)`:
  * each delta is `decode(ids[prefix:]) - decode(ids[prefix:read])` - both decodes start at
    the same token, so tokenizers that treat the first token specially agree with themselves;
  * a delta that ends in U+FFFD (an incomplete multi-byte character) is held back until
    the following tokens complete it;
  * while a request runs, text that could be the start of one of its stop strings is held
    back, so a client never sees text that the stop rule later trims; on finish the
    matched stop string (and anything after it) is cut unless `no_stop_trim`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from radixlm.runtime.managers.ipc import IpcAddresses

logger = logging.getLogger(__name__)

REPLACEMENT_CHAR = "\ufffd"


@dataclass
class DecodeState:
    ids: list[int] = field(default_factory=list)
    prefix_offset: int = 0
    read_offset: int = 0
    text: str = ""  # committed text (complete characters)
    sent: int = 0  # characters of the visible text already handed out
    # characters of text before the first token allowed to complete a stop string
    # (min_new_tokens); None until that many tokens have arrived
    stop_floor: int | None = None


class IncrementalDetokenizer:
    def __init__(self, decode: Callable[[list[int], bool], str]) -> None:
        """decode(ids, skip_special_tokens) -> str"""
        self.decode = decode

    def update(
        self,
        state: DecodeState,
        new_ids: list[int],
        skip_special: bool,
        finished: bool,
        stop_strs: list[str],
        matched_stop: str | None,
        no_stop_trim: bool,
        min_new_tokens: int = 0,
    ) -> str:
        """Add tokens; return the text that became visible."""
        state.ids.extend(new_ids)
        if len(state.ids) > state.read_offset:
            before = self.decode(state.ids[state.prefix_offset : state.read_offset], skip_special)
            after = self.decode(state.ids[state.prefix_offset :], skip_special)
            if len(after) > len(before) and (finished or not after.endswith(REPLACEMENT_CHAR)):
                state.text += after[len(before) :]
                state.prefix_offset = state.read_offset
                state.read_offset = len(state.ids)
        visible = state.text
        # a stop string only counts if it ends in text of token min_new_tokens or later
        first_stop_token = min_new_tokens - 1
        if first_stop_token <= 0:
            state.stop_floor = 0
        elif state.stop_floor is None and len(state.ids) >= first_stop_token:
            state.stop_floor = len(self.decode(state.ids[:first_stop_token], skip_special))
        floor = state.stop_floor if state.stop_floor is not None else len(visible)
        if finished:
            if matched_stop and not no_stop_trim:
                cut = visible.find(matched_stop, max(0, floor - len(matched_stop) + 1))
                if cut >= 0:
                    visible = visible[:cut]
        elif stop_strs:
            visible = visible[: len(visible) - _held_back(visible, stop_strs, floor)]
        delta = visible[state.sent :] if len(visible) > state.sent else ""
        state.sent = max(state.sent, len(visible))
        return delta


def _held_back(text: str, stop_strs: list[str], floor: int = 0) -> int:
    """Length of the longest suffix of text that is a proper prefix of a stop string, or that
    holds a whole stop string ending after `floor` (which the scheduler is about to report)."""
    hold = 0
    for stop in stop_strs:
        at = text.find(stop, max(0, floor - len(stop) + 1))
        if at >= 0:
            hold = max(hold, len(text) - at)
            continue
        for k in range(min(len(stop) - 1, len(text)), 0, -1):
            if text.endswith(stop[:k]):
                hold = max(hold, k)
                break
    return hold


# ---------------------------------------------------------------------- the process
MAX_STATES = 65536  # bound on tracked requests; the oldest are dropped past it


def run_detokenizer_process(tokenizer_path: str, addrs: IpcAddresses, log_level: str = "warning") -> None:
    import collections

    import zmq

    from radixlm.runtime.managers.child_process import (
        decode_or_drop,
        linger_after_shutdown,
        parent_alive,
        start_child_process,
    )
    from radixlm.runtime.managers.ipc import make_socket
    from radixlm.runtime.managers.messages import (
        ControlReq,
        ShutdownAck,
        TextOutput,
        TextOutputBatch,
        TokenOutputBatch,
        decoder,
        encoder,
    )
    from radixlm.runtime.tokenizer import load_tokenizer

    start_child_process("radixlm::detok", log_level)
    tokenizer = load_tokenizer(tokenizer_path)

    def decode(ids: list[int], skip_special: bool) -> str:
        return tokenizer.decode(ids, skip_special_tokens=skip_special, clean_up_tokenization_spaces=False)

    detok = IncrementalDetokenizer(decode)
    ctx = zmq.Context()
    recv = make_socket(ctx, zmq.PULL, addrs.detokenizer_input, bind=True)
    send = make_socket(ctx, zmq.PUSH, addrs.tokenizer_input, bind=False)
    enc, dec = encoder(), decoder(TokenOutputBatch | ControlReq)
    states: collections.OrderedDict[str, DecodeState] = collections.OrderedDict()
    while True:
        if not recv.poll(1000):
            if not parent_alive():
                return
            continue
        msg = decode_or_drop(dec, recv.recv())
        if msg is None:
            continue
        if isinstance(msg, ControlReq):
            if msg.op == "shutdown":
                send.send(enc.encode(ShutdownAck(process="detokenizer")))
                linger_after_shutdown()
                return
            continue
        results = []
        for out in msg.outputs:
            state = states.get(out.rid)
            if state is None:
                state = states[out.rid] = DecodeState()
                if len(states) > MAX_STATES:
                    states.popitem(last=False)
            reason = out.finished_reason
            finished = reason is not None
            matched = reason.get("matched") if finished and reason.get("type") == "stop" else None
            new_ids = out.new_ids
            if isinstance(matched, int) and not out.no_stop_trim and new_ids:
                new_ids = new_ids[:-1]  # the stop token itself is not part of the text
            try:
                delta = detok.update(
                    state,
                    new_ids,
                    out.skip_special_tokens,
                    finished,
                    out.stop_strs,
                    matched if isinstance(matched, str) else None,
                    out.no_stop_trim,
                    out.min_new_tokens,
                )
            except Exception as exc:  # a tokenizer failure must not lose the request
                logger.exception("detokenization failed for %s", out.rid)
                delta = ""
                if not finished:
                    out.finished_reason = {"type": "abort", "message": f"detokenization failed: {exc}"}
                    finished = True
            if finished:
                states.pop(out.rid, None)
            results.append(TextOutput(rid=out.rid, text_delta=delta, token=out))
        send.send(enc.encode(TextOutputBatch(results)))
