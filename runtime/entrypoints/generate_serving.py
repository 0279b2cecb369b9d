"""The native /generate serving (SGLang's request and response shapes), as a plain function
of a TokenizerManager and a parsed GenerateRequest.

One prompt answers one result object; a batch of prompts (a list of texts or of token-id
lists) answers a list with one result per prompt and sample. A streamed answer carries the
text and output ids so far in every chunk, not just the new part, as SGLang's does. What is
SGLang's dialect rather than radixlm's (its other fields, its sampling parameter names, its
meta_info shape) is translated by sglang_compat.

/tokenize (also here) answers a text's token ids as /generate counts a text prompt's, with
each token's character span: what the DSL's cache report needs to say where a prompt left the
cached prefix.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from radixlm.runtime.entrypoints import sglang_compat
from radixlm.runtime.entrypoints.http_errors import HTTPError, as_http_errors
from radixlm.runtime.entrypoints.openai_protocol import GenerateRequest, TokenizeRequest
from radixlm.runtime.entrypoints.serving_common import IsDisconnected, collect, prepare, run_watching, stream
from radixlm.runtime.managers.tokenizer_manager import PreparedRequest, TokenizerManager

# options that take one value for every prompt, or a list with one value per prompt
PER_PROMPT_OPTIONS = ("sampling_params", "return_logprob", "logprob_start_len", "top_logprobs_num")


async def generate(
    tm: TokenizerManager, body: GenerateRequest, is_disconnected: IsDisconnected | None = None
) -> dict | list[dict] | AsyncIterator[dict]:
    """The /generate answer: a result, a list of results, or (stream) the chunks to send."""
    sglang_compat.check_extra_fields(body.model_extra)
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
    rids = _rids(body.rid, len(inputs), single)
    options["sampling_params"] = [
        sglang_compat.sampling_params(p, tm.context_len) for p in options["sampling_params"]
    ]
    reqs = [
        prepare(tm, t, ids, params, return_logprob=want_lp, logprob_start_len=start, top_logprobs_num=top)
        for (t, ids), params, want_lp, start, top in zip(inputs, *options.values())
    ]
    if body.stream:
        if len(reqs) != 1 or reqs[0].params.n != 1:
            raise HTTPError(400, "stream takes one prompt with n == 1")
        return _stream_cumulative(tm, reqs[0], rids[0], _formatter(tm, reqs[0], body))
    groups = await run_watching(
        asyncio.gather(*(collect(tm, r, rid) for r, rid in zip(reqs, rids))), is_disconnected
    )
    outs = [
        {
            "text": o["text"],
            "output_ids": o["output_ids"],
            "meta_info": _formatter(tm, req, body)(o["meta_info"]),
        }
        for req, group in zip(reqs, groups)
        for o in group
    ]
    return outs[0] if single and len(outs) == 1 else outs


def _rids(rid: str | list[str] | None, count: int, single: bool) -> list[str | None]:
    if rid is None:
        return [None] * count
    if isinstance(rid, str):
        if not single:
            raise HTTPError(400, f"rid must be a list of {count} ids for a batch of {count} prompts")
        return [rid]
    if single or len(rid) != count:
        where = "is one prompt" if single else f"are {count} prompts"
        raise HTTPError(400, f"rid is a list of {len(rid)} but there {where}")
    if len(set(rid)) != len(rid):
        raise HTTPError(400, "rid has the same id twice")
    return list(rid)


def _formatter(
    tm: TokenizerManager, req: PreparedRequest, body: GenerateRequest
) -> sglang_compat.MetaFormatter:
    return sglang_compat.MetaFormatter(
        tm.tokenizer, req.return_logprob, req.top_logprobs_num, body.return_text_in_logprobs
    )


async def _stream_cumulative(
    tm: TokenizerManager, req: PreparedRequest, rid: str | None, meta: sglang_compat.MetaFormatter
) -> AsyncIterator[dict]:
    # every chunk shares the one `ids` list: the SSE writer sends each chunk before the next
    # is made, and copying it per chunk would cost time quadratic in the output length
    text, ids = "", []
    async for item in stream(tm, req, rid):
        text += item["text"]
        ids += item["output_ids"]
        yield {"text": text, "output_ids": ids, "meta_info": meta(item["meta_info"])}


def tokenize(tm: TokenizerManager, body: TokenizeRequest) -> dict:
    """The /tokenize answer: {"tokens": ids, "count": n, "offsets": [[start, end], ...]}, the ids
    exactly those /generate counts as the prompt's (TokenizerManager.tokenize)."""
    if (body.text is None) == (body.prompt is None):
        raise HTTPError(400, "give exactly one of text or prompt (the text to tokenise)")
    with as_http_errors():
        out = tm.tokenize(body.text if body.text is not None else body.prompt)
    return {
        "tokens": out["input_ids"],
        "count": len(out["input_ids"]),
        "offsets": [list(span) for span in out["offsets"]],
    }
