"""Per-call prefix reuse of a program: `state.cache_report()`.

Every `gen` and `select` a state runs leaves a `CallRecord` (interpreter.py): where its prompt
ends in the state's text, and the call's meta_info, whose `prompt_tokens` and `cached_tokens`
the runtime reports for each request. Only when the report is built does it ask the backend
to tokenise each prompt that was not a full hit (`backend.tokenize`: the server's own
tokenisation, with each token's character span), to say in characters where the prompt left
the longest cached prefix: the start of its first uncached token.

* Full hit: the runtime always computes a prompt's last token (its logits start the output), so
  a call with `cached_tokens >= prompt_tokens - 1` reused all it could. Its row has no
  divergence point and an empty context. (A prompt that differs from a cached one only in its
  last token looks the same.)
* `select` scores every choice in one batch: its prompt_tokens are the shared prompt's, its
  cached_tokens the fewest any choice's scoring request found cached. The scheduler may prefill
  the shared prompt for one choice and hand it to the others from the cache, so the fewest is
  what the select found from before it ran (RuntimeEndpoint.choice_logprobs_and_usage).
* `gen(n=k)` with k > 1: the runtime prefills the prompt once, then runs the k samples over it,
  so the samples' counts (the fewest is reported) include that prefill of the call's own.
* Forks: a child's report holds its own calls only (it does not inherit the parent's earlier
  ones). `join` appends each child's calls to the parent's report once, labelled with the
  child's index (`answer (fork 1)`; nested forks `(fork 1.0)`), so a program's top-level
  state reports everything it ran, and nothing twice. A child never joined is in its own
  report only.
* A backend that cannot tokenise as its server does (the OpenAI backend) gets the token counts
  where its server reports them (`usage.prompt_tokens_details.cached_tokens`) and no
  divergence point: `diverged_at_char` and `context` are None. A count the backend does not
  report is None too, as is the hit rate computed from it.
* A call that failed has no row.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

MARK = "⟂"  # where the prompt left the cached prefix, in a row's context
CONTEXT_CHARS = 24  # of the prompt on each side of the mark


@dataclass(frozen=True)
class CallRecord:
    """One gen/select a state ran. The prompt is kept as a length into its state's text, which
    only ever grows by appending, so recording a call copies no text (nor keeps an old one)."""

    kind: Literal["gen", "select"]
    name: str | None
    source: Any  # the StateExecutor whose text_ starts with the prompt
    prompt_len: int
    meta: Any  # the call's meta_info (a list of them for gen(n > 1))
    fork: tuple[int, ...] = ()  # child indices from the reporting state to the one that ran it

    @property
    def prompt(self) -> str:
        return self.source.text_[: self.prompt_len]

    def in_fork(self, index: int) -> CallRecord:
        """This record as the parent sees it after `join`: run by its child number `index`."""
        return replace(self, fork=(index, *self.fork))


@dataclass(frozen=True)
class CacheReportRow:
    """One gen/select call of a program and how much of its prompt came from the radix cache.

    `diverged_at_char` is the character of the prompt where its first uncached token starts,
    and `context` a snippet of the prompt around it with MARK (⟂) at that point. A full hit has
    `diverged_at_char=None` and `context=""`; where the point cannot be known (the backend
    cannot tokenise, or reports no cached count) both are None."""

    call: str  # the variable name (an unnamed call: "<gen #3>", its place in the report)
    kind: Literal["gen", "select"]
    prompt_tokens: int | None
    cached_tokens: int | None
    hit_rate: float | None  # cached_tokens / prompt_tokens
    diverged_at_char: int | None
    context: str | None
    fork: tuple[int, ...] = ()  # () for the state's own calls; (i,) for its child i's, joined

    @property
    def label(self) -> str:
        """The call as the table names it: `answer`, or `answer (fork 1)` for a joined child's."""
        return self.call + (f" (fork {'.'.join(map(str, self.fork))})" if self.fork else "")


def cache_report(
    records: Sequence[CallRecord], backend: Any, print_table: bool = True
) -> list[CacheReportRow]:
    """The rows of `records` (a state's calls, in the order they ran), printed as a table
    unless `print_table` is False."""
    rows = build_rows(records, backend)
    if print_table:
        print(format_table(rows))
    return rows


def build_rows(records: Sequence[CallRecord], backend: Any) -> list[CacheReportRow]:
    """One row per record; `backend.tokenize` is called once per distinct prompt that was
    neither a full hit nor without a cached count."""
    tokenized: dict[str, list[tuple[int, int]] | None] = {}  # prompt -> offsets; one call per prompt
    rows = []
    for i, rec in enumerate(records):
        prompt_tokens, cached = _counts(rec.meta)
        hit_rate = cached / prompt_tokens if prompt_tokens and cached is not None else None
        at: int | None = None
        context: str | None = None
        if prompt_tokens is not None and cached is not None and cached >= prompt_tokens - 1:
            context = ""  # a full hit: nothing left to reuse
        elif cached is not None:
            prompt = rec.prompt
            if prompt not in tokenized:
                tokenized[prompt] = _offsets(backend, prompt)
            offsets = tokenized[prompt]
            if offsets is not None:
                at = divergence_char(offsets, cached)
                context = "" if at is None else snippet(prompt, at)
        rows.append(
            CacheReportRow(
                call=rec.name if rec.name is not None else f"<{rec.kind} #{i + 1}>",
                kind=rec.kind,
                prompt_tokens=prompt_tokens,
                cached_tokens=cached,
                hit_rate=hit_rate,
                diverged_at_char=at,
                context=context,
                fork=rec.fork,
            )
        )
    return rows


def divergence_char(offsets: Sequence[tuple[int, int]], cached: int) -> int | None:
    """Where a prompt whose first `cached` tokens came from the cache left it: the start of
    token `cached` (None when every token was cached). A token with no span of its own (the
    (0, 0) of a token the tokenizer adds) starts where the token before it ended."""
    if cached >= len(offsets):
        return None
    start, end = offsets[cached]
    if (start, end) == (0, 0) and cached > 0:
        return offsets[cached - 1][1]
    return start


def snippet(prompt: str, at: int, width: int = CONTEXT_CHARS) -> str:
    """The prompt around character `at`, with MARK there."""
    return prompt[max(0, at - width) : at] + MARK + prompt[at : at + width]


def format_table(rows: Sequence[CacheReportRow]) -> str:
    """The rows as a text table, one line per call (newlines in contexts shown as \\n), under a
    line with the totals."""
    header = ("call", "kind", "prompt", "cached", "hit", "diverged at", "context")
    lines = [tuple(_cells(row)) for row in rows]
    widths = [max(len(h), *(len(line[c]) for line in lines)) for c, h in enumerate(header)]
    right = {2, 3, 4, 5}  # numbers line up on the right

    def fmt(cells: Sequence[str]) -> str:
        out = [
            cell.rjust(w) if c in right else cell.ljust(w) for c, (cell, w) in enumerate(zip(cells, widths))
        ]
        return "  ".join(out[:-1]) + "  " + cells[-1]  # the context is last: no padding after it

    known = [r for r in rows if r.prompt_tokens is not None and r.cached_tokens is not None]
    prompt_total = sum(r.prompt_tokens for r in known)
    cached_total = sum(r.cached_tokens for r in known)
    rate = f" ({cached_total / prompt_total:.1%})" if prompt_total else ""
    title = (
        f"cache report: {len(rows)} call{'s' if len(rows) != 1 else ''}, "
        f"{prompt_total} prompt tokens, {cached_total} cached{rate}"
    )
    return "\n".join([title, fmt(header), *(fmt(line) for line in lines)])


def _cells(row: CacheReportRow) -> list[str]:
    def num(value: int | None) -> str:
        return "?" if value is None else str(value)

    if row.context == "":
        at, context = "-", "(full hit)"
    elif row.context is None:
        at, context = "?", ""
    else:
        at = num(row.diverged_at_char)
        before, _, after = row.context.partition(MARK)
        context = _visible(before) + MARK + _visible(after)
    hit = "?" if row.hit_rate is None else f"{row.hit_rate:.1%}"
    return [row.label, row.kind, num(row.prompt_tokens), num(row.cached_tokens), hit, at, context]


def _visible(text: str) -> str:
    return text.replace("\r", "\\r").replace("\n", "\\n").replace("\t", "\\t")


def _counts(meta: Any) -> tuple[int | None, int | None]:
    """(prompt_tokens, cached_tokens) of a call's meta_info; gen(n > 1) has one meta per
    sample, all over the same prompt: the fewest cached of them."""
    metas = [m for m in (meta if isinstance(meta, list) else [meta]) if isinstance(m, dict)]
    prompts = [m["prompt_tokens"] for m in metas if isinstance(m.get("prompt_tokens"), int)]
    cached = [m["cached_tokens"] for m in metas if isinstance(m.get("cached_tokens"), int)]
    return (prompts[0] if prompts else None), (min(cached) if cached and len(cached) == len(metas) else None)


def _offsets(backend: Any, prompt: str) -> list[tuple[int, int]] | None:
    """The character span of each of the prompt's tokens, as the backend's server tokenises it;
    None where the backend cannot tokenise."""
    try:
        out = backend.tokenize(prompt)
    except NotImplementedError:
        return None
    return [tuple(span) for span in out["offsets"]]


__all__ = [
    "CacheReportRow",
    "CallRecord",
    "MARK",
    "build_rows",
    "cache_report",
    "divergence_char",
    "format_table",
]
