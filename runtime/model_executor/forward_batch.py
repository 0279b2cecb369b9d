"""The contract between scheduler and model runner: one batch in, one result out.

The scheduler decides who runs and where their KV lives (`ForwardBatch`); the runner
queues the work and hands back a `ForwardHandle` at once, whose `result()` waits for the
sampled tokens and requested logprobs (`ForwardResult`). Between the two the host is
free: the overlap scheduler prepares and queues the next step there, feeding it the
sampled ids that are still on the device (`ForwardHandle.sampled`). The model's layers read
their attention metadata from the same `ForwardBatch`, so nothing about batching
leaks into layer signatures.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from radixlm.runtime.layers.attention import AttentionBackend
    from radixlm.runtime.layers.sampling import SamplingBatch
    from radixlm.runtime.model_executor.device_copy import HostCopy


class ForwardMode(enum.Enum):
    EXTEND = "extend"  # new tokens over a cached prefix (prefill, chunk, jump-forward)
    DECODE = "decode"  # exactly one new token per request


@dataclass
class ForwardBatch:
    mode: ForwardMode
    input_ids: torch.Tensor  # [T] new tokens, request-major
    positions: torch.Tensor  # [T] absolute position of each new token
    out_cache_loc: torch.Tensor  # [T] KV slot each new token's K/V is written to
    req_pool_indices: torch.Tensor  # [B] row of req_to_token per request
    seq_lens: torch.Tensor  # [B] prefix + new tokens
    prefix_lens: torch.Tensor  # [B] tokens already in the KV cache
    extend_lens: torch.Tensor  # [B] new tokens (1 per request in decode)
    # the same two on the host: kernel grids and kernel choices are made without a device sync
    prefix_lens_cpu: list[int]
    extend_lens_cpu: list[int]
    # Which rows of the new tokens need logits, and which of those are sampled from:
    # `logits_indices` selects hidden states; `sample_rows[i]` is the row of request i's
    # last token inside that selection, or -1 for a request that samples nothing.
    logits_indices: torch.Tensor
    sample_rows: list[int]
    sampling: SamplingBatch | None = None
    # Logprob requests, one entry per logits row that wants them: the row (into the
    # selection), the token whose logprob is wanted (-1: the token sampled from that row),
    # and how many top alternatives to return.
    logprob_rows: list[int] = field(default_factory=list)
    logprob_targets: list[int] = field(default_factory=list)
    logprob_top_k: list[int] = field(default_factory=list)
    attn_backend: AttentionBackend | None = None
    attn_metadata: Any = None  # the backend's per-batch data (split buffers, offsets)

    @property
    def batch_size(self) -> int:
        return int(self.req_pool_indices.numel())

    @property
    def num_tokens(self) -> int:
        return int(self.input_ids.numel())


@dataclass
class ForwardResult:
    next_token_ids: list[int]  # one per request; -1 where nothing was sampled
    # Per logprob request, in order: the target token's logprob and its top alternatives
    # as (token_id, logprob) pairs. Logprobs are the model's log-softmax, before
    # temperature, penalties and filtering.
    token_logprobs: list[float] = field(default_factory=list)
    top_logprobs: list[list[tuple[int, float]]] = field(default_factory=list)


@dataclass
class ForwardHandle:
    """A forward queued on the device. `sampled[j]` is the token of the j-th sampling
    request (`sample_reqs[j]` is its index in the batch); it stays valid after the step, so
    a following decode step can take its input ids from it without a round trip."""

    batch_size: int
    sample_reqs: list[int]
    sampled: torch.Tensor | None
    copies: HostCopy  # sampled ids (empty if none), then if asked: logprobs, top-k values, top-k ids
    top_k: list[int] = field(default_factory=list)
    has_logprobs: bool = False
    # CUDA events around the step's device work (None on CPU): busy time and the gaps between steps
    start_event: Any = None
    end_event: Any = None
    _result: ForwardResult | None = None

    def result(self) -> ForwardResult:
        if self._result is not None:
            return self._result
        host = self.copies.get()
        next_ids = [-1] * self.batch_size
        if self.sample_reqs:
            for i, tok in zip(self.sample_reqs, host[0].tolist()):
                next_ids[i] = tok
        result = ForwardResult(next_token_ids=next_ids)
        if self.has_logprobs:
            result.token_logprobs = host[1].tolist()
            result.top_logprobs = [[] for _ in self.top_k]
            if len(host) > 2:
                vals, ids = host[2].tolist(), host[3].tolist()
                result.top_logprobs = [list(zip(ids[i][:n], vals[i][:n])) for i, n in enumerate(self.top_k)]
        self._result = result
        return result
