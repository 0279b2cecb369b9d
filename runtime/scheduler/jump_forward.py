"""Jump-forward: text a grammar forces is fed as drafted decode rows, not decoded token by token.

Where a request's grammar allows exactly one continuation (the `{"name": "` of a JSON object,
say), its tokens are known before the model runs. A decode step then feeds them along with the
request's last token: each fed token is its own decode row (same request row, its own position,
attending to everything before it), so the step stays one batched decode. Every row samples as
if the drafted tokens before it were already output (same mask, seed and step as decoding one
at a time), and a drafted token is kept only while it equals the sample of the row before it;
the first that differs is replaced by that sample. Outputs are therefore identical with
jump-forward on or off, and each kept draft token saves a decode step.
"""

from __future__ import annotations

import torch

from radixlm.runtime.scheduler.batch_builder import SampleView, build_decode_batch
from radixlm.runtime.scheduler.request import Req

MAX_DRAFT_TOKENS = 32  # most drafted tokens one request feeds in one step


class JumpForward:
    """The Scheduler's drafted decode steps. Uses the Scheduler's `cfg`, `runner`, `cache`,
    `running`, `stats`, `_append_token`, `_wait` and `_decay_token_ratio`."""

    def _drafts(self, reqs: list[Req]) -> list[list[int]] | None:
        """Per request, the tokens its grammar forces next, or None when no request has any or
        there is no room for them."""
        if self.cfg.disable_jump_forward or not any(r.grammar is not None for r in reqs):
            return None
        drafts = []
        for req in reqs:
            draft: list[int] = []
            if req.grammar is not None:
                left = min(
                    req.sampling_params.max_new_tokens - len(req.output_ids),
                    self.runner.context_len - len(req.fill_ids),
                )
                # one of the step's tokens is always sampled, so at most left - 1 drafts
                draft = req.grammar.draft()[: max(min(left - 1, req.draft_budget), 0)]
            drafts.append(draft)
        extra = sum(len(d) for d in drafts)
        if extra == 0:
            return None
        if self.cache.reclaimable < len(reqs) + extra:
            return None  # decode one token each this step; drafting can wait for memory
        return drafts

    def _run_decode_with_drafts(self, reqs: list[Req], drafts: list[list[int]]) -> list[Req]:
        fed = [[req.fill_ids[-1]] + draft for req, draft in zip(reqs, drafts)]
        slots = self.cache.alloc_slots(sum(len(f) for f in fed))
        assert slots is not None, "room for the drafts was checked"
        rows: list[Req] = []
        views: list[SampleView] = []
        input_ids: list[int] = []
        positions: list[int] = []
        start = 0
        for req, draft, tokens in zip(reqs, drafts, fed):
            n = len(tokens)
            self.cache.row(req)[req.kv_len : req.kv_len + n] = slots[start : start + n].to(torch.int32)
            start += n
            rows += [req] * n
            views += _sample_views(req, draft)
            input_ids += tokens
            positions += range(req.kv_len, req.kv_len + n)
        batch, lp = build_decode_batch(
            rows=rows,
            input_ids=input_ids,
            positions=positions,
            slots=slots,
            vocab_size=self.runner.vocab_size,
            device=self.device,
            views=views,
        )
        result = self._wait(self.runner.launch(batch))
        self.stats.decode_steps += 1
        self._decay_token_ratio()
        lp_of = dict(zip(lp, zip(result.token_logprobs, result.top_logprobs)))
        row = 0
        for req, draft, tokens in zip(reqs, drafts, fed):
            sampled = result.next_token_ids[row : row + len(tokens)]
            self._keep_accepted(
                req, draft, sampled, {k: lp_of[row + k] for k in range(len(tokens)) if row + k in lp_of}
            )
            row += len(tokens)
        return reqs

    def _keep_accepted(
        self, req: Req, draft: list[int], sampled: list[int], logprobs: dict[int, tuple]
    ) -> None:
        """Append the drafts that held and the sample after them; free the K/V of the rest."""
        accepted = 0
        while accepted < len(draft) and sampled[accepted] == draft[accepted]:
            accepted += 1
        if draft:  # rejected rows are wasted work: draft longer only while drafts hold
            req.draft_budget = (
                min(2 * req.draft_budget, MAX_DRAFT_TOKENS) if accepted == len(draft) else max(1, accepted)
            )
        appended = 0
        for k, token in enumerate(sampled[: accepted + 1]):  # the kept drafts, then a sample
            if req.return_logprob:
                value, top = logprobs[k]
                req.output_token_logprobs.append((value, token))
                req.output_top_logprobs.append(top)
            req.kv_len += 1  # the token fed at this row now has its K/V
            self._append_token(req, token)
            appended += 1
            if k < accepted:
                req.jump_forward_tokens += 1
                self.stats.jump_forward_tokens += 1
            if req.finished:
                break
        self.cache.release_unkept(req, 1 + len(draft) - appended)
        if req.finished:
            self.running.remove(req)
            self.cache.cache_req(req, finished=True)


def _sample_views(req: Req, draft: list[int]) -> list[SampleView]:
    """What each of the request's fed rows samples with: row j as if draft[:j] were output,
    with the grammar's mask after those tokens."""
    if req.grammar is None:
        return [(req.output_ids + draft[:j], None) for j in range(len(draft) + 1)]
    masks = req.grammar.views(draft)
    return [(req.output_ids + draft[:j], masks[j]) for j in range(len(draft) + 1)]
