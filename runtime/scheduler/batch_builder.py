"""Turning scheduled requests into a `ForwardBatch` (the scheduler -> model runner contract).

The scheduler decides who runs and where their KV lives; this module lays that out as the
columns the runner reads: token ids, positions, the KV slot each new token writes, per
request prefix/extend lengths, which logits rows to sample and which to score for logprobs,
and the sampling state (penalties, seeds, grammar masks) of each sampled row.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch

from radixlm.runtime.constrained.backend import MaskView
from radixlm.runtime.constrained.grammar import build_vocab_mask
from radixlm.runtime.layers.sampling import SamplingBatch
from radixlm.runtime.model_executor.device_copy import to_device
from radixlm.runtime.model_executor.forward_batch import ForwardBatch, ForwardMode
from radixlm.runtime.scheduler.request import Req

# a logprob row's owner: the request and whether the row scores a prompt ("input") or a
# sampled ("output") token
LogprobOwner = tuple[Req, str]
# what one decode row samples with: the output ids so far and the grammar state (jump-forward
# rows sample as if the drafted tokens before them were already output)
SampleView = tuple[list[int], MaskView | None]


def build_forward_batch(
    *,
    mode: ForwardMode,
    reqs: Sequence[Req],
    input_ids: Sequence[int] | None,
    positions: Sequence[int],
    out_loc: torch.Tensor,
    prefix_lens: Sequence[int],
    extend_lens: Sequence[int],
    logit_tokens: Sequence[int],
    sample_rows: Sequence[int],
    logprob_rows: Sequence[int],
    logprob_targets: Sequence[int],
    logprob_top_k: Sequence[int],
    vocab_size: int,
    device: torch.device,
    views: Sequence[SampleView] | None = None,
    prev: tuple[torch.Tensor, list[int]] | None = None,
) -> ForwardBatch:
    """One batch. `reqs[i]` owns row i (a request may own several rows: jump-forward).
    `sample_rows[i]`: the logits row request row i samples from, or -1. `views[i]`: what row
    i samples with (default: the request's own outputs and grammar). `prev`: (sampled ids
    of the decode step in flight, each request's row in it): the input ids are taken from
    there on the device (`input_ids` is None), one token per request."""
    picked = [i for i, row in enumerate(sample_rows) if row >= 0]
    sampling = None
    if picked:
        sampled = [reqs[i] for i in picked]
        outs = [views[i][0] if views else reqs[i].output_ids for i in picked]
        grammars = [views[i][1] if views else reqs[i].grammar for i in picked]
        stop_ids = [sorted(r.stop_token_ids) for r in sampled]
        sampling = SamplingBatch.build(
            [r.sampling_params for r in sampled],
            [r.seed for r in sampled],
            [r.origin_input_ids for r in sampled],
            outs,
            stop_ids,
            vocab_size,
            device,
            pending=[1] * len(sampled) if prev else None,
        )
        # stop tokens are masked out until a request has min_new_tokens outputs
        allowed_stops = [
            ids if len(out) >= r.sampling_params.min_new_tokens else []
            for r, out, ids in zip(sampled, outs, stop_ids)
        ]
        if any(g is not None for g in grammars):
            # built by the sampler, after the forward is queued: the grammar work runs on the
            # host while the device computes the logits (the step is launched at once, and a
            # grammar moves only when the step's tokens are back)
            sampling.mask_builder = functools.partial(
                build_vocab_mask, grammars, allowed_stops, vocab_size, device
            )
    # every integer column in one host-to-device copy, then views of it
    t, b = len(positions), len(reqs)
    first = list(input_ids) if prev is None else prev[1]
    packed = to_device(
        first
        + list(positions)
        + [r.req_pool_idx for r in reqs]
        + list(prefix_lens)
        + list(extend_lens)
        + list(logit_tokens),
        torch.int64,
        device,
    )
    input_t, pos_t, rows_t, prefix, extend, logits_t = packed.split([t, t, b, b, b, len(logit_tokens)])
    if prev is not None:
        input_t = prev[0][input_t]
    return ForwardBatch(
        mode=mode,
        input_ids=input_t,
        positions=pos_t,
        out_cache_loc=out_loc.to(device, torch.int64),
        req_pool_indices=rows_t,
        seq_lens=prefix + extend,
        prefix_lens=prefix,
        extend_lens=extend,
        prefix_lens_cpu=list(prefix_lens),
        extend_lens_cpu=list(extend_lens),
        logits_indices=logits_t,
        sample_rows=list(sample_rows),
        sampling=sampling,
        logprob_rows=list(logprob_rows),
        logprob_targets=list(logprob_targets),
        logprob_top_k=list(logprob_top_k),
    )


def wants_sample(req: Req) -> bool:
    """Does this extend end in a sampled token? (Not for a chunk short of the prompt's end,
    nor for a request that may generate nothing more.)"""
    return not req.is_chunked and len(req.output_ids) < req.sampling_params.max_new_tokens


def build_extend_batch(
    *, reqs: Sequence[Req], out_loc: torch.Tensor, vocab_size: int, device: torch.device
) -> tuple[ForwardBatch, list[LogprobOwner]]:
    """A prefill batch: each request extends from kv_len to extend_target (its KV slots
    already allocated, `out_loc` in request order). Prompt positions from the request's
    input_logprob_next on are scored for input logprobs; the last position samples."""
    input_ids: list[int] = []
    positions: list[int] = []
    logit_tokens: list[int] = []  # batch token index of each logits row
    sample_rows: list[int] = []
    lp_rows: list[int] = []
    lp_targets: list[int] = []
    lp_topk: list[int] = []
    owners: list[LogprobOwner] = []
    offset = 0
    for req in reqs:
        a, b = req.kv_len, req.extend_target
        fill = req.fill_ids
        input_ids += fill[a:b]
        positions += range(a, b)
        for p in range(max(a, req.input_logprob_next), min(b, req.prompt_len - 1)):
            lp_rows.append(len(logit_tokens))
            logit_tokens.append(offset + p - a)
            lp_targets.append(fill[p + 1])
            lp_topk.append(req.top_logprobs_num)
            owners.append((req, "input"))
        if wants_sample(req):
            sample_rows.append(len(logit_tokens))
            if req.return_logprob:
                lp_rows.append(len(logit_tokens))
                lp_targets.append(-1)  # the sampled token, known only after sampling
                lp_topk.append(req.top_logprobs_num)
                owners.append((req, "output"))
            logit_tokens.append(offset + b - a - 1)
        else:
            sample_rows.append(-1)
        offset += b - a
    batch = build_forward_batch(
        mode=ForwardMode.EXTEND,
        reqs=reqs,
        input_ids=input_ids,
        positions=positions,
        out_loc=out_loc,
        prefix_lens=[r.kv_len for r in reqs],
        extend_lens=[r.extend_target - r.kv_len for r in reqs],
        logit_tokens=logit_tokens,
        sample_rows=sample_rows,
        logprob_rows=lp_rows,
        logprob_targets=lp_targets,
        logprob_top_k=lp_topk,
        vocab_size=vocab_size,
        device=device,
    )
    return batch, owners


def build_decode_batch(
    *,
    rows: Sequence[Req],
    input_ids: Sequence[int] | None,
    positions: Sequence[int],
    slots: torch.Tensor,
    vocab_size: int,
    device: torch.device,
    views: Sequence[SampleView] | None = None,
    prev: tuple[torch.Tensor, list[int]] | None = None,
) -> tuple[ForwardBatch, list[int]]:
    """A decode batch: one token per row at `positions` (= the tokens already cached before
    it), every row sampled. Returns the batch and the rows that also report a logprob."""
    lp = [i for i, r in enumerate(rows) if r.return_logprob]
    everything = list(range(len(rows)))
    batch = build_forward_batch(
        mode=ForwardMode.DECODE,
        reqs=rows,
        input_ids=input_ids,
        positions=positions,
        out_loc=slots,
        prefix_lens=positions,
        extend_lens=[1] * len(rows),
        logit_tokens=everything,
        sample_rows=everything,
        logprob_rows=lp,
        logprob_targets=[-1] * len(lp),
        logprob_top_k=[rows[i].top_logprobs_num for i in lp],
        vocab_size=vocab_size,
        device=device,
        views=views,
        prev=prev,
    )
    return batch, lp
