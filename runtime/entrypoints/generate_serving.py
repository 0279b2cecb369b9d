"""The native /generate serving (SGLang's request and response shapes), as a plain function
of a TokenizerManager and a parsed GenerateRequest.

One prompt answers one result object; a batch of prompts (a list of texts or of token-id
lists) answers a list with one result per prompt and sample. A streamed answer carries the
text and output ids so far in every chunk, not just the new part, as SGLang's does.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from radixlm.runtime.entrypoints.http_errors import HTTPError
from radixlm.runtime.entrypoints.openai_protocol import GenerateRequest
from radixlm.runtime.entrypoints.serving_common import IsDisconnected, collect, prepare, run_watching, stream
from radixlm.runtime.managers.tokenizer_manager import PreparedRequest, TokenizerManager

# options that take one value for every prompt, or a list with one value per prompt
PER_PROMPT_OPTIONS = ("sampling_params", "return_logprob", "logprob_start_len", "top_logprobs_num")


async def generate(
    tm: TokenizerManager, body: GenerateRequest, is_disconnected: IsDisconnected | None = None
) -> dict | list[dict] | AsyncIterator[dict]:
    """The /generate answer: a result, a list of results, or (stream) the chunks to send."""
    if (body.text is None) == (body.input_ids is None):
        raise HTTPError(400, "give exactly one of text or input_ids")
    if body.text is not None:
        inputs = [(t, None) for t in ([body.text] if isinstance(body.text, str) else body.text)]
        single = isinstance(body.text, str)
    else:
        nested = bool(body.input_ids) and isinstance(body.input_ids[0], list)
        inputs = [(None, ids) for ids in (body.input_ids if nested else [body.input_ids])]
        single = not nested
    if not inputs:
        raise HTTPError(400, "no prompts given")
    options = {}
    for field in PER_PROMPT_OPTIONS:
        value = getattr(body, field)
        if isinstance(value, list):
            if single or len(value) != len(inputs):
                raise HTTPError(
                    400,
                    f"{field} is a list of {len(value)} but there "
                    f"{'is one prompt' if single else f'are {len(inputs)} prompts'}",
                )
            options[field] = value
        else:
            options[field] = [value] * len(inputs)
    reqs = [
        prepare(tm, t, ids, params, return_logprob=want_lp, logprob_start_len=start, top_logprobs_num=top)
        for (t, ids), params, want_lp, start, top in zip(inputs, *options.values())
    ]
    if body.stream:
        if len(reqs) != 1 or reqs[0].params.n != 1:
            raise HTTPError(400, "stream takes one prompt with n == 1")
        return _stream_cumulative(tm, reqs[0], body.rid)
    groups = await run_watching(asyncio.gather(*(collect(tm, r) for r in reqs)), is_disconnected)
    outs = [
        {"text": o["text"], "output_ids": o["output_ids"], "meta_info": o["meta_info"]}
        for group in groups
        for o in group
    ]
    return outs[0] if single and len(outs) == 1 else outs


async def _stream_cumulative(
    tm: TokenizerManager, req: PreparedRequest, rid: str | None
) -> AsyncIterator[dict]:
    # every chunk shares the one `ids` list: the SSE writer sends each chunk before the next
    # is made, and copying it per chunk would cost time quadratic in the output length
    text, ids = "", []
    async for item in stream(tm, req, rid):
        text += item["text"]
        ids += item["output_ids"]
        yield {"text": text, "output_ids": ids, "meta_info": item["meta_info"]}
