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
MAX_SPEC_BACKOFF = 64  # most decode steps a request whose drafts keep failing goes without one


class JumpForward:
    """The Scheduler's drafted decode steps: jump-forward (a grammar's forced text) and
    speculative decoding (a proposer's guess, draft_proposers.py), verified the same way.
    Uses the Scheduler's `cfg`, `runner`, `cache`, `running`, `stats`, `proposer`,
    `_append_token`, `_wait` and `_decay_token_ratio`."""

    def _speculating(self) -> bool:
        """Whether this decode step may carry speculative drafts: a proposer is on, the batch
        is small enough for extra rows to be nearly free, and some request is not backing
        off. Counts down the back-offs (once per decode step)."""
        if self.proposer is None or len(self.running) > self.cfg.speculative_max_batch:
            return False
        ready = False
        for req in self.running:
            if req.spec_backoff:
                req.spec_backoff -= 1
            elif req.grammar is None:
                ready = True
        return ready

    def _drafts(self, reqs: list[Req], speculate: bool = False) -> list[list[int]] | None:
        """Per request, the tokens its grammar forces next (jump-forward) or, with `speculate`,
        a proposer's guess for a grammar-free request; None when no request has any or there
        is no room for them."""
        jump = not self.cfg.disable_jump_forward and any(r.grammar is not None for r in reqs)
        if not jump and not speculate:
            return None
        drafts = []
        for req in reqs:
            left = min(
                req.sampling_params.max_new_tokens - len(req.output_ids),
                self.runner.context_len - req.seq_len,
            )
            cap = max(left - 1, 0)  # one of the step's tokens is always sampled
            draft: list[int] = []
            req.draft_kind = None
            if req.grammar is not None and jump:
                draft = req.grammar.draft()[: min(cap, req.draft_budget)]
                req.draft_kind = "grammar"
            elif req.grammar is None and speculate and not req.spec_backoff:
                draft = self.proposer.propose(req, min(cap, req.spec_budget))
                req.draft_kind = "spec"
                if not draft and cap and self.overlap:
                    # nothing to guess from: a drafting step gives up overlap, so back off as
                    # after a miss (without overlap an empty guess costs only the lookup)
                    self._adapt_speculation(req, 0, 0)
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
        speculative = req.draft_kind == "spec"
        if draft and speculative:
            self._adapt_speculation(req, len(draft), accepted)
        elif draft:  # rejected rows are wasted work: draft longer only while drafts hold
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
            if k < accepted and not speculative:
                req.jump_forward_tokens += 1
                self.stats.jump_forward_tokens += 1
            if req.finished:
                break
        self.cache.release_unkept(req, 1 + len(draft) - appended)
        if req.finished:
            self.running.remove(req)
            self.cache.cache_req(req, finished=True)

    def _adapt_speculation(self, req: Req, proposed: int, accepted: int) -> None:
        """Count a request's speculation and size its next draft: longer while drafts hold,
        shorter to what held, and after all-rejected steps a back-off that doubles each time
        (so a request whose text never repeats soon costs nothing)."""
        req.spec_proposed += proposed
        req.spec_accepted += accepted
        self.stats.spec_proposed_tokens += proposed
        self.stats.spec_accepted_tokens += accepted
        limit = self.cfg.speculative_num_draft_tokens
        if proposed:
            req.spec_budget = min(2 * req.spec_budget, limit) if accepted == proposed else max(1, accepted)
        if accepted:
            req.spec_misses = 0
        else:
            req.spec_misses += 1
            req.spec_backoff = min(2 ** (req.spec_misses - 1), MAX_SPEC_BACKOFF) - 1


def _sample_views(req: Req, draft: list[int]) -> list[SampleView]:
    """What each of the request's fed rows samples with: row j as if draft[:j] were output,
    with the grammar's mask after those tokens."""
    if req.grammar is None:
        return [(req.output_ids + draft[:j], None) for j in range(len(draft) + 1)]
    masks = req.grammar.views(draft)
    return [(req.output_ids + draft[:j], masks[j]) for j in range(len(draft) + 1)]
