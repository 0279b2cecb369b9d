"""Tool calls out of a streamed model output, as OpenAI-style deltas.

`ToolCallStream` wraps a family parser (parsers.py) and runs the same scan as its `parse` on a
growing buffer, so the events it emits reassemble to exactly `parse(whole text)`:

- content is emitted as soon as it cannot be part of a call: a partial marker at the buffer's
  end (`<tool_`, `[TOOL_CALLS`) and the whitespace before it are held back, because a valid
  call drops that whitespace and must never leak its marker;
- a call is held whole until its body can be judged (`match_body` answers PENDING until
  then), then comes out as one event with index, a fresh id and the name, followed by its
  arguments JSON in one or more fragments; a body that turns out not to be a call is emitted
  as content, marker included, and the scan resumes right after the marker.

Holding a call costs latency only inside tool calls; the bytes a client sees are those the
non-streamed response would carry.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from radixlm.runtime.function_call.parsers import PENDING, WHITESPACE, ParsedCall, ToolCallParser


def new_call_id() -> str:
    """An OpenAI-style tool call id: `call_` and 24 random hex digits."""
    return "call_" + secrets.token_hex(12)


@dataclass(frozen=True)
class ContentDelta:
    """Plain assistant text."""

    text: str


@dataclass(frozen=True)
class ToolCallDelta:
    """One piece of tool call `index`: its first delta carries id and name (arguments ""),
    the later ones argument fragments only."""

    index: int
    arguments: str
    id: str | None = None
    name: str | None = None

    def to_openai(self) -> dict[str, Any]:
        """The entry of a chat.completion.chunk's `delta.tool_calls`."""
        out: dict[str, Any] = {"index": self.index}
        function: dict[str, Any] = {"arguments": self.arguments}
        if self.id is not None:
            out["id"], out["type"] = self.id, "function"
        if self.name is not None:
            function = {"name": self.name, "arguments": self.arguments}
        out["function"] = function
        return out


StreamEvent = ContentDelta | ToolCallDelta


def _held_tail(buf: str, markers: tuple[str, ...]) -> int:
    """How many trailing characters must wait: a proper prefix of a marker at the end, and
    the whitespace before it (dropped if a valid call follows)."""
    keep = 0
    for k in range(min(len(buf), max(map(len, markers), default=1) - 1), 0, -1):
        if any(m.startswith(buf[-k:]) for m in markers):
            keep = k
            break
    i = len(buf) - keep
    while i > 0 and buf[i - 1] in WHITESPACE:
        i -= 1
    return len(buf) - i


class ToolCallStream:
    """Incremental `parser.parse`: `feed` each decoded text delta, then `finish` once."""

    def __init__(
        self,
        parser: ToolCallParser,
        id_factory: Callable[[], str] = new_call_id,
        max_fragment_chars: int | None = None,
    ) -> None:
        if max_fragment_chars is not None and max_fragment_chars < 1:
            raise ValueError(f"max_fragment_chars must be >= 1, got {max_fragment_chars}")
        self.parser = parser
        self._id_factory = id_factory
        self._max_fragment = max_fragment_chars
        self._buf = ""  # text neither emitted nor dropped yet; the scan position is its start
        self._bare_json = parser.json_at_start
        self._after_call = False
        self._next_index = 0
        self._finished = False

    @property
    def calls_emitted(self) -> int:
        return self._next_index

    def feed(self, delta: str) -> list[StreamEvent]:
        if self._finished:
            raise RuntimeError("feed() after finish()")
        self._buf += delta
        return self._advance(final=False)

    def finish(self) -> list[StreamEvent]:
        """Everything still held, judged as the end of the output."""
        if self._finished:
            return []
        self._finished = True
        return self._advance(final=True)

    def _advance(self, final: bool) -> list[StreamEvent]:
        out: list[StreamEvent] = []
        parser = self.parser
        while True:
            if self._after_call:
                drop = parser.after_call.match(self._buf).end()
                if drop == len(self._buf) and not final:
                    break  # the separator may go on
                self._buf = self._buf[drop:]
                self._after_call = False
                self._bare_json = parser.json_at_start
            buf = self._buf
            if self._bare_json and not final and not buf.strip(WHITESPACE):
                break  # a "{" may still open the output (or follow the last call)
            hit = parser.find_marker(buf, 0, self._bare_json)
            if hit is None:
                self._bare_json = False
                cut = len(buf) - (0 if final else _held_tail(buf, parser.markers))
                self._content(out, buf[:cut])
                self._buf = buf[cut:]
                break
            mstart, bstart = hit
            if mstart != bstart:  # a literal marker came first: a bare "{" can no longer open
                self._bare_json = False
            body = parser.match_body(buf, bstart, final)
            if body is PENDING:
                head = buf[:mstart].rstrip(WHITESPACE)  # content whatever the body turns out to be
                self._content(out, head)
                self._buf = buf[len(head) :]
                break
            self._bare_json = False
            if not isinstance(body, tuple):  # not a call: its marker is content, scan on after it
                self._content(out, buf[:bstart])
                self._buf = buf[bstart:]
                continue
            calls, end = body
            self._content(out, buf[:mstart].rstrip(WHITESPACE))
            for call in calls:
                out.extend(self._call_events(call))
            self._buf = buf[end:]
            self._after_call = True
        return out

    @staticmethod
    def _content(out: list[StreamEvent], text: str) -> None:
        if not text:
            return
        if out and isinstance(out[-1], ContentDelta):  # one delta per run of content
            out[-1] = ContentDelta(out[-1].text + text)
        else:
            out.append(ContentDelta(text))

    def _call_events(self, call: ParsedCall) -> Iterator[ToolCallDelta]:
        index = self._next_index
        self._next_index += 1
        yield ToolCallDelta(index, "", id=self._id_factory(), name=call.name)
        step = self._max_fragment or len(call.arguments)
        for k in range(0, len(call.arguments), step):
            yield ToolCallDelta(index, call.arguments[k : k + step])


def reassemble(events: Iterable[StreamEvent]) -> tuple[str, list[ParsedCall]]:
    """(content, calls) from a stream's events, as a client would rebuild them."""
    content: list[str] = []
    names: dict[int, str] = {}
    arguments: dict[int, list[str]] = {}
    for event in events:
        if isinstance(event, ContentDelta):
            content.append(event.text)
            continue
        if event.name is not None:
            if event.index in names:
                raise ValueError(f"tool call {event.index} was named twice")
            names[event.index] = event.name
        elif event.index not in names:
            raise ValueError(f"arguments for tool call {event.index} before its name")
        arguments.setdefault(event.index, []).append(event.arguments)
    if sorted(names) != list(range(len(names))):
        raise ValueError(f"tool call indexes are not 0..n-1: {sorted(names)}")
    return "".join(content), [ParsedCall(names[i], "".join(arguments[i])) for i in range(len(names))]
