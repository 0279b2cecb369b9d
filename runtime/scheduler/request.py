"""A request as the scheduler sees it: tokens, KV bookkeeping, stop rules and results.

KV invariant: the first `kv_len` tokens of `fill_ids` have K/V in the pool (or being
written by a step already queued on the device, which every later reader follows), at
slots `req_to_token[req_pool_idx, :kv_len]`; the first `cache_protected_len` of those
belong to the radix tree (locked through `last_node`), the rest belong to this request.
While an overlapped decode step is in flight, `kv_len` is one past `len(fill_ids)`: the
step writes the K/V of a token the host has not received yet.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from radixlm.runtime.constrained.backend import GrammarMatcher
from radixlm.runtime.layers.sampling import SamplingParams
from radixlm.runtime.radix.tree_node import TreeNode


@dataclass(eq=False)
class Req:
    rid: str
    origin_input_ids: list[int]
    sampling_params: SamplingParams
    seed: int
    eos_ids: frozenset[int]  # model EOS ids (ignored with ignore_eos)
    return_logprob: bool = False
    logprob_start_len: int = -1  # first prompt position with a reported logprob; -1: none
    top_logprobs_num: int = 0
    output_ids: list[int] = field(default_factory=list)
    stream: bool = False

    # ---- KV state
    req_pool_idx: int | None = None
    kv_len: int = 0
    cache_protected_len: int = 0
    last_node: TreeNode | None = None
    extend_target: int = 0  # kv_len after the extend in flight
    is_chunked: bool = False
    host_load: Any = None  # a HostLoad bringing its prefix back from the host tier, until admitted
    host_loaded_tokens: int = 0  # prompt tokens such loads brought back (for the hit statistics)

    # ---- status and results
    finished_reason: dict[str, Any] | None = None
    to_abort: str | None = None  # abort message, applied at the next step
    cached_tokens: int = -1  # prefix hit reported to the user (first admission only)
    retraction_count: int = 0
    passed_over: int = 0  # admission rounds that admitted others while this one waited (aging)
    input_logprob_next: int = 0  # next prompt position p whose token p+1 still needs a logprob
    input_token_logprobs: list[tuple[float | None, int]] = field(default_factory=list)
    input_top_logprobs: list[list[tuple[int, float]] | None] = field(default_factory=list)
    output_token_logprobs: list[tuple[float, int]] = field(default_factory=list)
    output_top_logprobs: list[list[tuple[int, float]]] = field(default_factory=list)
    stop_str_hit: str | None = None
    # ---- constrained decoding: the automaton's state follows output_ids
    grammar: GrammarMatcher | None = None
    jump_forward_tokens: int = 0  # output tokens appended by jump-forward, not sampled
    draft_budget: int = 4  # jump-forward: most draft tokens to feed next step (adapts to acceptance)
    # ---- speculative decoding (grammar-free requests): drafts from a proposer, verified alike
    draft_kind: str | None = None  # what the step in flight fed: "grammar" | "spec" | None
    spec_budget: int = 2  # most speculative drafts next step (adapts to acceptance)
    spec_misses: int = 0  # consecutive steps whose drafts were all rejected
    spec_backoff: int = 0  # decode steps to go without proposing (grows with the misses)
    spec_proposed: int = 0
    spec_accepted: int = 0
    ngram_index: Any = None  # the n-gram proposer's index over this request's tokens
    # ---- what has been reported to the client already (the process boundary sends deltas)
    sent_output_len: int = 0
    sent_input_logprobs: int = 0
    sent_output_logprobs: int = 0

    def __post_init__(self) -> None:
        # logprob_start_len -1 (the default) asks for output logprobs only
        start = self.logprob_start_len
        if self.return_logprob and start >= 0:
            if start == 0:  # the first prompt token has no logprob
                self.input_token_logprobs.append((None, self.origin_input_ids[0]))
                self.input_top_logprobs.append(None)
            self.input_logprob_next = max(start, 1) - 1
        else:
            self.input_logprob_next = len(self.origin_input_ids)

    @property
    def fill_ids(self) -> list[int]:
        return self.origin_input_ids + self.output_ids

    @property
    def seq_len(self) -> int:  # len(fill_ids) without building it (decode asks every step)
        return len(self.origin_input_ids) + len(self.output_ids)

    @property
    def last_token_id(self) -> int:
        return self.output_ids[-1] if self.output_ids else self.origin_input_ids[-1]

    @property
    def prompt_len(self) -> int:
        return len(self.origin_input_ids)

    @property
    def finished(self) -> bool:
        return self.finished_reason is not None

    @property
    def needs_input_logprobs(self) -> bool:
        return self.input_logprob_next < self.prompt_len - 1

    @property
    def stop_token_ids(self) -> frozenset[int]:
        """Ids that end generation (and are masked before min_new_tokens)."""
        extra = frozenset(self.sampling_params.stop_token_ids or ())
        return extra if self.sampling_params.ignore_eos else extra | self.eos_ids

    @property
    def owned_kv_len(self) -> int:
        return self.kv_len - self.cache_protected_len


def check_request(
    ids: list[int],
    params: SamplingParams,
    vocab_size: int,
    context_len: int,
    logprob_start_len: int,
    top_logprobs_num: int,
    grammar_backend: str = "auto",
    whitespace_pattern: str | None = None,
) -> None:
    """Validate a tokenised request, raising ValueError naming the problem, and clamp its
    token budget to the context. The tokenizer manager runs this before queueing; the
    scheduler runs it again on what arrives over its socket."""
    params.validate(vocab_size, grammar_backend, whitespace_pattern)
    if not ids:
        raise ValueError("prompt is empty (no tokens)")
    # C-level passes over the list (a generator per token cost ~1 ms a 100-token request),
    # then a look at each distinct type: ints and their subclasses, bool excepted, as before
    not_ints = any(not issubclass(k, int) or issubclass(k, bool) for k in set(map(type, ids)))
    if not_ints or min(ids) < 0 or max(ids) >= vocab_size:
        raise ValueError(f"input_ids must be integers in [0, {vocab_size})")
    if len(ids) + (1 if params.max_new_tokens > 0 else 0) > context_len:
        raise ValueError(f"prompt is too long: {len(ids)} tokens, context length is {context_len}")
    # the upper bound is msgpack's: a bigger int cannot cross to the scheduler
    if (
        not isinstance(top_logprobs_num, int)
        or isinstance(top_logprobs_num, bool)
        or not 0 <= top_logprobs_num < 1 << 64
    ):
        raise ValueError(f"top_logprobs_num must be an integer in [0, 2**64), got {top_logprobs_num!r}")
    if not isinstance(logprob_start_len, int) or not -1 <= logprob_start_len < len(ids):
        raise ValueError(f"logprob_start_len must be in [-1, {len(ids)}), got {logprob_start_len!r}")
    params.max_new_tokens = min(params.max_new_tokens, context_len - len(ids))
    params.min_new_tokens = min(params.min_new_tokens, params.max_new_tokens)


def check_text(text: str, what: str = "prompt") -> None:
    """Raise ValueError unless `text` can be encoded as UTF-8: a lone surrogate (which JSON's
    \\ud800 escapes and Python strings allow) would otherwise fail deep in the tokenizer with
    an error that does not say what is wrong."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(
            f"{what} is not valid Unicode: lone surrogate {text[exc.start]!r} at index {exc.start}"
        ) from None
