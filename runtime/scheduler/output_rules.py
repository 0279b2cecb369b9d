"""What a new token does to its request: output ids, logprobs, grammar state, and whether the
request is now finished (and why).

Finish reasons, in the order they are checked for each token:
  grammar:  a token the grammar rejects (cannot happen under the mask: a bug, reported as an
            abort), or the grammar is complete (no further token is allowed) -> stop;
  stop:     a stop token id, or a stop string ending in this token's text, once the request
            has min_new_tokens outputs;
  length:   max_new_tokens outputs, or the context is full.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from radixlm.runtime.model_executor.forward_batch import ForwardResult
from radixlm.runtime.scheduler.batch_builder import LogprobOwner
from radixlm.runtime.scheduler.request import Req

FinishReason = dict


class OutputRules:
    def __init__(self, decode_tokens: Callable[[list[int]], str], context_len: int) -> None:
        self.decode_tokens = decode_tokens
        self.context_len = context_len

    def append_token(self, req: Req, token: int) -> FinishReason | None:
        """Append a sampled token to the request; the reason it finished, if it did."""
        req.output_ids.append(token)
        if req.return_logprob and req.output_token_logprobs and req.output_token_logprobs[-1][1] is None:
            req.output_token_logprobs[-1] = (req.output_token_logprobs[-1][0], token)
        params = req.sampling_params
        n_out = len(req.output_ids)
        grammar = req.grammar
        if grammar is not None and not (token in req.stop_token_ids and grammar.is_final):
            if not grammar.advance(token):
                return {"type": "abort", "message": grammar.error or f"token {token} breaks the grammar"}
            if grammar.error:  # the constraint's parser gave up (a limit): nothing valid can follow
                return {"type": "abort", "message": f"the constraint failed: {grammar.error}"}
            if grammar.is_complete:
                return {"type": "stop", "matched": None}
        if token in req.stop_token_ids and n_out >= params.min_new_tokens:
            return {"type": "stop", "matched": token}
        if params.stop and n_out >= params.min_new_tokens and self._hit_stop_str(req):
            return {"type": "stop", "matched": req.stop_str_hit}
        if n_out >= params.max_new_tokens or req.seq_len >= self.context_len:
            return {"type": "length", "length": n_out}
        return None

    def _hit_stop_str(self, req: Req) -> bool:
        """Does the decoded tail hold a stop string that ends in the text of token
        min_new_tokens or later? (Earlier occurrences were generated before stops counted.)"""
        stops = req.sampling_params.stop_strs
        ids = req.output_ids
        # a token is at least one byte, and a character at most four
        start = max(len(ids) - (4 * max(len(s) for s in stops) + 4), 0)
        tail = self.decode_tokens(ids[start:])
        first_stop_token = req.sampling_params.min_new_tokens - 1
        floor = len(self.decode_tokens(ids[start:first_stop_token])) if first_stop_token > start else 0
        for s in stops:
            if tail.find(s, max(0, floor - len(s) + 1)) >= 0:
                req.stop_str_hit = s
                return True
        return False


def store_logprobs(result: ForwardResult, owners: Sequence[LogprobOwner]) -> None:
    """File each scored row's logprob with its request: a prompt token's right away, a
    sampled token's with its id left None until append_token fills it in."""
    for (req, kind), lp, top in zip(owners, result.token_logprobs, result.top_logprobs):
        if req.finished:  # finished while an overlapped step that fed it was in flight
            continue
        if kind == "input":
            token = req.origin_input_ids[req.input_logprob_next + 1]
            req.input_token_logprobs.append((lp, token))
            req.input_top_logprobs.append(top if req.top_logprobs_num else None)
            req.input_logprob_next += 1
        else:
            req.output_token_logprobs.append((lp, None))
            req.output_top_logprobs.append(top)
