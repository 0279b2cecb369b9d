"""Reasoning out of a `<think>…</think>` model's output, as `--reasoning-parser` does in SGLang
and vLLM: the whole output split into (reasoning_content, content), or the same split done on
streamed text deltas.

Where the output starts decides everything, and the families differ:

- deepseek-r1: its chat template ends the prompt with `<think>`, so the output starts inside
  the reasoning: all text before `</think>` is reasoning, with or without an opening marker
  (one the model writes anyway is dropped); an output that never writes `</think>` was cut
  off while thinking and is all reasoning.
- qwen3: Qwen3 writes `<think>` itself, so the output is reasoning only when it opens with
  `<think>` (after any whitespace); any other output is content as it stands.
- qwen3-thinking: Qwen3 thinking-only models, whose template opens the block in the prompt;
  parsed as deepseek-r1.

What the rendered prompt says wins over the family (`prompt_reasoning`): a prompt that ends
inside an open `<think>` block puts the output in reasoning; one that ends right after
`</think>` (Qwen3 with enable_thinking=False renders an empty block) leaves no reasoning.

The split: reasoning is the text between the markers, surrounding whitespace stripped (None
when nothing is left); content is the text after `</think>`, leading whitespace dropped (the
template's blank line), or the whole output verbatim when it holds no reasoning.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Opening(enum.Enum):
    """How an output starts: inside reasoning, as content, or as the model chooses (reasoning
    only if it opens with the start marker)."""

    REASONING = "reasoning"
    CONTENT = "content"
    MODEL_CHOOSES = "model_chooses"


@dataclass(frozen=True)
class ReasoningParser:
    """One family's markers and where its outputs start when the prompt says nothing."""

    name: str
    starts_in_reasoning: bool
    start: str = "<think>"
    end: str = "</think>"

    def opening(self, prompt_open: bool | None = None) -> Opening:
        """How the output starts, given what the prompt says (see `prompt_reasoning`)."""
        if prompt_open is None:
            return Opening.REASONING if self.starts_in_reasoning else Opening.MODEL_CHOOSES
        return Opening.REASONING if prompt_open else Opening.CONTENT

    def parse(self, text: str, prompt_open: bool | None = None) -> tuple[str | None, str]:
        """(reasoning or None, content) of a finished output."""
        opening = self.opening(prompt_open)
        if opening is Opening.CONTENT:
            return None, text
        head = text.lstrip()
        if head.startswith(self.start):
            body = head[len(self.start) :]
        elif opening is Opening.MODEL_CHOOSES:
            return None, text
        else:
            body = text
        reasoning, found, rest = body.partition(self.end)
        return reasoning.strip() or None, rest.lstrip() if found else ""

    def stream(self, prompt_open: bool | None = None) -> ReasoningStream:
        """An incremental `parse` of one output."""
        return ReasoningStream(self, prompt_open)


REASONING_PARSERS: dict[str, ReasoningParser] = {
    "deepseek-r1": ReasoningParser("deepseek-r1", starts_in_reasoning=True),
    "qwen3": ReasoningParser("qwen3", starts_in_reasoning=False),
    "qwen3-thinking": ReasoningParser("qwen3-thinking", starts_in_reasoning=True),
}


def get_reasoning_parser(name: str) -> ReasoningParser:
    parser = REASONING_PARSERS.get(name)
    if parser is None:
        known = ", ".join(sorted(REASONING_PARSERS))
        raise ValueError(f"unknown reasoning parser {name!r}; known parsers: {known}")
    return parser


def prompt_reasoning(prompt: str, parser: ReasoningParser) -> bool | None:
    """What a rendered prompt says about the output: True when it ends inside an open think
    block (the output starts in reasoning), False when it ends right after a closed one
    (reasoning is off for this turn), None when it says neither (the family decides)."""
    tail = prompt.rstrip()
    if tail.endswith(parser.start):
        return True
    if tail.endswith(parser.end):
        return False
    return None


@dataclass(frozen=True)
class ReasoningDelta:
    """What one piece of streamed text adds: reasoning first, then content (an output's
    reasoning always comes before its content)."""

    reasoning: str = ""
    content: str = ""


class _Phase(enum.Enum):
    OPENING = 0  # before the first non-whitespace text: is it the start marker?
    REASONING = 1
    CONTENT = 2


def _held_tail(buf: str, marker: str) -> int:
    """How many trailing characters reasoning must hold back: a proper prefix of the end
    marker at the end of the buffer, and the whitespace before it (stripped if the marker
    completes, or if the output ends here)."""
    keep = 0
    for k in range(min(len(buf), len(marker) - 1), 0, -1):
        if marker.startswith(buf[-k:]):
            keep = k
            break
    i = len(buf) - keep
    while i > 0 and buf[i - 1].isspace():  # str.strip's notion of whitespace
        i -= 1
    return len(buf) - i


class ReasoningStream:
    """Incremental `ReasoningParser.parse`: `feed` each text delta, then `finish` once. The
    deltas join to exactly the whole parse, and neither part ever holds a piece of a marker."""

    def __init__(self, parser: ReasoningParser, prompt_open: bool | None = None) -> None:
        self.parser = parser
        self._opening = parser.opening(prompt_open)
        self._phase = _Phase.CONTENT if self._opening is Opening.CONTENT else _Phase.OPENING
        self._buf = ""  # text not emitted yet
        self._reasoning_started = False  # leading whitespace of the reasoning is dropped
        self._after_end = False  # content right after `</think>`: leading whitespace is dropped
        self._finished = False

    def feed(self, delta: str) -> ReasoningDelta:
        if self._finished:
            raise RuntimeError("feed() after finish()")
        self._buf += delta
        return self._advance(final=False)

    def finish(self) -> ReasoningDelta:
        """Everything still held, judged as the end of the output."""
        if self._finished:
            return ReasoningDelta()
        self._finished = True
        return self._advance(final=True)

    def _advance(self, final: bool) -> ReasoningDelta:
        p = self.parser
        reasoning = ""
        if self._phase is _Phase.OPENING:
            head = self._buf.lstrip()
            if head.startswith(p.start):
                self._buf, self._phase = head[len(p.start) :], _Phase.REASONING
            elif not final and p.start.startswith(head):  # "" or a piece of the marker: wait
                return ReasoningDelta()
            elif self._opening is Opening.MODEL_CHOOSES:
                self._phase = _Phase.CONTENT  # verbatim, leading whitespace included
            else:
                self._phase = _Phase.REASONING
        if self._phase is _Phase.REASONING:
            if not self._reasoning_started:
                self._buf = self._buf.lstrip()
                self._reasoning_started = bool(self._buf)
            at = self._buf.find(p.end)
            if at >= 0:
                # what was emitted ends in non-whitespace, so this completes the strip
                reasoning = self._buf[:at].rstrip()
                self._buf = self._buf[at + len(p.end) :]
                self._phase, self._after_end = _Phase.CONTENT, True
            else:
                cut = len(self._buf.rstrip()) if final else len(self._buf) - _held_tail(self._buf, p.end)
                reasoning, self._buf = self._buf[:cut], ("" if final else self._buf[cut:])
                return ReasoningDelta(reasoning=reasoning)
        if self._after_end:
            self._buf = self._buf.lstrip()
            self._after_end = not self._buf
        content, self._buf = self._buf, ""
        return ReasoningDelta(reasoning, content)
