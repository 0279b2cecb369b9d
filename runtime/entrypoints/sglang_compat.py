"""SGLang's native HTTP API as `radixlm serve` answers it: what SGLang's frontend
(`sgl.RuntimeEndpoint("http://host:port")`) and SGLang's clients send, and the shapes they read.

/generate is one route for both (generate_serving); the differences live here:
* request fields: SGLang's /generate takes many fields radixlm does not act on (images, LoRA,
  sessions, disaggregation, ...). Each passes with its "off" value (SGLang's default, null or
  an empty list) and is refused by name otherwise: an image or adapter quietly ignored would
  be a wrong answer that looks right. A field neither system knows is refused as before.
* sampling_params in SGLang's dialect: null means the default, `sampling_seed` is the seed,
  a null max_new_tokens means "up to the context", and SGLang-only options pass only where
  they change nothing.
* meta_info: logprob entries as SGLang writes them, [logprob, token_id, text or null], top
  logprobs as a list of those per position (null where there are none), plus SGLang's counters.
* the bodies of /get_model_info, /get_server_info, /health_generate and
  /concate_and_append_request.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import uuid
from pathlib import Path
from typing import Any

from radixlm import __version__
from radixlm.runtime.entrypoints.http_errors import HTTPError, json_kind
from radixlm.runtime.entrypoints.openai_protocol import ConcatAndAppendRequest
from radixlm.runtime.entrypoints.serving_common import collect, prepare
from radixlm.runtime.managers.tokenizer_manager import TokenizerManager

# SGLang's /generate fields radixlm does not act on -> the values that mean "off" (null and an
# empty list or object are "off" too; a batch's list is "off" when every item is)
UNSUPPORTED_FIELDS: dict[str, tuple[Any, ...]] = {
    # multimodal input
    **dict.fromkeys(
        (
            "input_embeds",
            "image_data",
            "video_data",
            "audio_data",
            "mm_hashes",
            "mm_content_hashes",
            "video_config",
            "modalities",
            "max_dynamic_patch",
            "min_dynamic_patch",
            "image_max_dynamic_patch",
            "video_max_dynamic_patch",
            "images_config",
            "mm_processor_kwargs",
            "encoder_urls",
            "need_wait_for_mm_inputs",
            "num_items_assigned",
        ),
        (),
    ),
    "use_audio_in_video": (False,),
    # outputs radixlm does not compute
    "token_ids_logprob": (),
    "sampling_logprobs_mode": (),
    "routed_experts_start_len": (0,),
    **dict.fromkeys(
        (
            "return_sampling_mask",
            "return_flat_raw_top_logprobs",
            "return_flat_raw_output_top_logprobs",
            "return_hidden_states",
            "return_routed_experts",
            "return_indexer_topk",
            "return_bytes",
            "return_entropy",
            "return_prompt_token_ids",
        ),
        (False,),
    ),
    # adapters, sessions, custom processing, cache isolation, priorities
    **dict.fromkeys(
        (
            "lora_path",
            "lora_id",
            "session_id",
            "session_params",
            "custom_logit_processor",
            "positional_embed_overrides",
            "watermark",
            "multi_item_delimiter_indices",
            "token_indices_to_pool",
            "extra_key",
            "cache_salt",
            "priority",
            "max_thinking_tokens",
        ),
        (),
    ),
    "background": (False,),
    "require_reasoning": (False,),
    # routing, disaggregation and the server's own bookkeeping
    **dict.fromkeys(
        (
            "bootstrap_host",
            "bootstrap_port",
            "bootstrap_room",
            "bootstrap_pair_key",
            "decode_tp_size",
            "routed_dp_rank",
            "data_parallel_rank",
            "disagg_prefill_dp_rank",
            "routing_key",
            "conversation_id",
            "http_worker_ipc",
            "custom_labels",
            "external_trace_header",
            "received_time",
        ),
        (),
    ),
    "log_metrics": (True,),
    "no_logs": (False,),
}

# SGLang's sampling parameters that radixlm does not act on -> their "off" values
UNSUPPORTED_SAMPLING: dict[str, tuple[Any, ...]] = {
    "stop_regex": (),
    "logit_bias": (),
    "custom_params": (),
    "watermark": (),
    "stream_interval": (),
    "beam_width": (1,),
}

# sampling parameters whose null SGLang reads as "the default" (its SamplingParams fills them in)
NULL_MEANS_DEFAULT = frozenset(
    (
        "temperature",
        "top_p",
        "top_k",
        "min_p",
        "frequency_penalty",
        "presence_penalty",
        "repetition_penalty",
        "min_new_tokens",
        "n",
        "ignore_eos",
        "skip_special_tokens",
        "no_stop_trim",
        "stop",
        "stop_token_ids",
        "regex",
        "json_schema",
        "ebnf",
        "grammar",
        "structural_tag",
        "seed",
        "sampling_seed",
    )
)

TOKEN_KEYS = ("input_token_logprobs", "output_token_logprobs")
TOP_KEYS = ("input_top_logprobs", "output_top_logprobs")
WEIGHT_VERSION = "default"  # SGLang's name for weights never updated in place
HEALTH_GENERATE_TIMEOUT_S = 20.0  # SGLang's own health check waits this long


# ---------------------------------------------------------------------------------- requests
def _is_off(value: Any, offs: tuple[Any, ...]) -> bool:
    if value is None or (isinstance(value, (list, dict, str)) and not value):
        return True
    # type-checked: 1 == True in Python, but `true` is not an "off" 0
    if any(type(value) is type(off) and value == off for off in offs):
        return True
    return isinstance(value, list) and all(_is_off(v, offs) for v in value)


def _refusal(name: str, value: Any, offs: tuple[Any, ...]) -> str:
    allowed = " or ".join(["null", *(json.dumps(off) for off in offs)])
    text = json.dumps(value)  # the value came from JSON; a long one (an image) is named by kind
    shown = text if len(text) <= 60 else json_kind(value)
    return f"{name} is not supported by radixlm: leave it out or send {allowed}, got {shown}"


def check_extra_fields(extra: dict[str, Any] | None) -> None:
    """Refuse, naming them, the /generate fields that neither system knows, and SGLang's
    fields that ask for something radixlm does not do."""
    if not extra:
        return
    unknown = [name for name in extra if name not in UNSUPPORTED_FIELDS]
    if unknown:
        # the words pydantic's extra="forbid" gives through http_errors
        raise HTTPError(400, "invalid request: " + "; ".join(f"{n} is not a known field" for n in unknown))
    for name, value in extra.items():
        if not _is_off(value, UNSUPPORTED_FIELDS[name]):
            raise HTTPError(400, _refusal(name, value, UNSUPPORTED_FIELDS[name]))


def sampling_params(params: dict[str, Any], context_len: int) -> dict[str, Any]:
    """One prompt's sampling_params from SGLang's dialect into radixlm's. Names neither knows
    are left in, for SamplingParams to refuse ("unknown sampling parameter(s): ...")."""
    out: dict[str, Any] = {}
    for key, value in params.items():
        if key in UNSUPPORTED_SAMPLING:
            if not _is_off(value, UNSUPPORTED_SAMPLING[key]):
                raise HTTPError(400, _refusal(f"sampling_params.{key}", value, UNSUPPORTED_SAMPLING[key]))
        elif not (value is None and key in NULL_MEANS_DEFAULT):
            out[key] = value
    if "max_new_tokens" in out and out["max_new_tokens"] is None:
        out["max_new_tokens"] = context_len  # SGLang: no limit but the context (clamped later)
    if "sampling_seed" in out:
        seed = out.pop("sampling_seed")
        if "seed" in out and out["seed"] != seed:
            raise HTTPError(400, f"seed ({out['seed']!r}) and sampling_seed ({seed!r}) differ: give one")
        out["seed"] = seed
    spaces = out.pop("spaces_between_special_tokens", True)
    if spaces is None:
        spaces = True
    if not isinstance(spaces, bool):
        raise HTTPError(400, f"spaces_between_special_tokens must be true or false, got {json_kind(spaces)}")
    if not spaces and out.get("skip_special_tokens", True) is False:
        # false matters only where special tokens stay in the text, and there radixlm decodes
        # them exactly as the tokenizer joins them (what true asks for); skipped, it is moot
        raise HTTPError(
            400,
            "spaces_between_special_tokens=false is not supported by radixlm with "
            "skip_special_tokens=false: special tokens are decoded as the tokenizer joins them",
        )
    return out


# ---------------------------------------------------------------------------------- results
class MetaFormatter:
    """One result's meta_info in SGLang's shape. A stream's meta_info grows chunk by chunk: the
    formatter keeps what it converted and converts only new entries (each chunk then shares
    the converted lists, which the SSE writer sends before the next chunk is made), so a long
    stream does not decode every token's text again per chunk."""

    def __init__(self, tokenizer: Any, return_logprob: bool, top_logprobs_num: int, with_text: bool) -> None:
        self.tokenizer = tokenizer
        self.keys = (TOKEN_KEYS + (TOP_KEYS if top_logprobs_num > 0 else ())) if return_logprob else ()
        self.with_text = with_text
        self.done: dict[str, list] = {key: [] for key in self.keys}

    def __call__(self, meta: dict[str, Any]) -> dict[str, Any]:
        out = {k: v for k, v in meta.items() if k not in TOKEN_KEYS + TOP_KEYS}
        out["num_retractions"] = meta.get("retractions", 0)
        out["weight_version"] = WEIGHT_VERSION
        for key in self.keys:
            done = self.done[key]
            new = (meta.get(key) or [])[len(done) :]
            done.extend(self._tops(new) if key in TOP_KEYS else self._entries(new))
            out[key] = done
        if self.keys:
            out["output_token_logprobs_length"] = len(out["output_token_logprobs"])
        return out

    def _texts(self, ids: list[int]) -> list[str | None]:
        if not self.with_text:
            return [None] * len(ids)
        # one list per id: decoding them together would join them into one string
        return self.tokenizer.batch_decode([[i] for i in ids]) if ids else []

    def _entries(self, entries: list) -> list[list]:
        # ours: (logprob, token_id)
        texts = self._texts([e[1] for e in entries])
        return [[e[0], e[1], t] for e, t in zip(entries, texts)]

    def _tops(self, positions: list) -> list[list[list] | None]:
        # ours: (token_id, logprob) per candidate; SGLang: null for a position without any
        flat = [c for pos in positions if pos for c in pos]
        texts = iter(self._texts([c[0] for c in flat]))
        return [[[c[1], c[0], next(texts)] for c in pos] if pos else None for pos in positions]


# ---------------------------------------------------------------------------------- operations
def model_info(tm: TokenizerManager, model_name: str) -> dict[str, Any]:
    """/get_model_info: what SGLang's RuntimeEndpoint reads (model_path picks its chat
    template), SGLang's other keys, and radixlm's limits."""
    cfg = tm.cfg
    architecture = tm.info.get("architecture")
    return {
        "model_path": cfg.model_path,
        "tokenizer_path": cfg.tokenizer_path or cfg.model_path,
        "served_model_name": model_name,
        "is_generation": True,
        "preferred_sampling_params": None,
        "weight_version": WEIGHT_VERSION,
        "has_image_understanding": False,
        "has_audio_understanding": False,
        "model_type": _model_type(cfg.model_path),
        "architectures": [architecture] if architecture else None,
        "context_length": tm.context_len,
        "vocab_size": tm.vocab_size,
    }


def _model_type(model_path: str) -> str | None:
    try:
        return json.loads((Path(model_path) / "config.json").read_text()).get("model_type")
    except (OSError, ValueError, AttributeError):
        return None


def server_info(tm: TokenizerManager, model_name: str, live: dict[str, Any]) -> dict[str, Any]:
    """/server_info and /get_server_info: SGLang's shape (its server arguments flattened, which
    radixlm's EngineConfig names alike, the scheduler's limits, one internal state per server,
    the version) with radixlm's live fields (`live`, from the scheduler) over it."""
    args = dataclasses.asdict(tm.cfg)
    args.update(
        tokenizer_path=tm.cfg.tokenizer_path or tm.cfg.model_path,
        served_model_name=model_name,
        context_length=tm.context_len,
        skip_tokenizer_init=False,
    )
    total = live.get("max_total_tokens", tm.info.get("max_total_tokens", 0))
    limits = {
        "max_total_num_tokens": total,
        # a prompt needs room for one output token, in the context and in the KV pool
        "max_req_input_len": max(0, min(tm.context_len, total) - 1),
    }
    state = {**args, **limits, "world_size": tm.cfg.tp_size * tm.cfg.dp_size}
    return {**args, **limits, "internal_states": [state], "version": __version__, **live}


async def health_generate(tm: TokenizerManager, timeout: float = HEALTH_GENERATE_TIMEOUT_S) -> None:
    """Generate one token, as SGLang's /health_generate does; raises if the runtime cannot
    (HTTPError, or asyncio.TimeoutError after `timeout` seconds)."""
    req = prepare(tm, None, [0], {"max_new_tokens": 1, "temperature": 0.0})
    await asyncio.wait_for(collect(tm, req, rid=f"health-generate-{uuid.uuid4().hex}"), timeout)


def concat_and_append(body: ConcatAndAppendRequest) -> dict[str, Any]:
    """SGLang's frontend has already appended the forks' text to the destination state's text
    when it calls this; the call asks for the destination's KV to be the forks' KV joined. The
    ids are the frontend's own state ids (no request carries them), so there is nothing to look
    up: the destination's next request builds its KV, its prefix and first fork from the radix
    cache. The other forks' tokens were computed at other positions, so their KV is computed
    again rather than reused shifted, which would change the outputs. The joined state then
    continues exactly as if the text had been appended, which is what this answer promises."""
    return {"success": True, "dst_rid": body.dst_rid, "src_rids": body.src_rids}
