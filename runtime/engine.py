"""`Engine`: the programmatic entry to the runtime.

    with Engine(model_path) as engine:
        out = engine.generate("Hello", {"max_new_tokens": 16, "temperature": 0})
        out["text"], out["output_ids"], out["meta_info"]["cached_tokens"]

Requests are validated here, before anything is queued, so a bad request raises a
`ValueError` naming the problem and never disturbs the others.
"""

from __future__ import annotations

import itertools
import logging
import random
import uuid
from typing import Any, Sequence

from radixlm.runtime.config import EngineConfig, ModelConfig
from radixlm.runtime.model_runner import ModelRunner
from radixlm.runtime.request import Req
from radixlm.runtime.sampling import SamplingParams
from radixlm.runtime.scheduler import Scheduler
from radixlm.runtime.tokenizer import load_tokenizer

logger = logging.getLogger(__name__)

PromptInput = str | Sequence[str] | None
IdsInput = Sequence[int] | Sequence[Sequence[int]] | None


class Engine:
    def __init__(self, model_path: str, **options: Any) -> None:
        self.config = EngineConfig.from_kwargs(model_path, **options)
        logging.getLogger("radixlm").setLevel(self.config.log_level.upper())
        self.model_config = ModelConfig.from_path(model_path)
        self.tokenizer = load_tokenizer(self.config.tokenizer_path or model_path)
        self.runner = ModelRunner(self.config, self.model_config)
        self.scheduler = Scheduler(self.config, self.runner, self._decode_raw)
        self.context_len = self.runner.context_len
        self.vocab_size = self.model_config.vocab_size
        eos = set(self.model_config.eos_token_ids)
        if self.tokenizer.eos_token_id is not None:
            eos.add(self.tokenizer.eos_token_id)
        self.eos_ids = frozenset(eos)
        self._rng = random.Random(self.config.random_seed)
        self._counter = itertools.count()
        self._closed = False

    # ------------------------------------------------------------------ API
    def generate(
        self,
        prompt: PromptInput = None,
        sampling_params: dict | SamplingParams | Sequence[dict | SamplingParams] | None = None,
        input_ids: IdsInput = None,
        return_logprob: bool | Sequence[bool] = False,
        logprob_start_len: int | Sequence[int] | None = None,
        top_logprobs_num: int | Sequence[int] = 0,
    ) -> dict | list[dict]:
        """Generate for one prompt (returns a dict) or a batch (returns a list of dicts, in order;
        a prompt with n > 1 contributes n consecutive entries)."""
        self._check_open()
        prompts, single = self._normalise_inputs(prompt, input_ids)
        count = len(prompts)
        params = _broadcast(sampling_params, count, "sampling_params")
        want_lp = _broadcast(return_logprob, count, "return_logprob")
        starts = _broadcast(logprob_start_len, count, "logprob_start_len")
        top_nums = _broadcast(top_logprobs_num, count, "top_logprobs_num")

        reqs: list[Req] = []
        for i in range(count):  # validate everything before queueing anything
            where = f"request {i}: " if not single else ""
            try:
                reqs += self._make_reqs(prompts[i], params[i], want_lp[i], starts[i], top_nums[i])
            except (ValueError, TypeError) as exc:
                raise type(exc)(f"{where}{exc}") from None
        for req in reqs:
            self.scheduler.add_request(req)
        self._run_until_done(reqs)
        outputs = [self._output(r) for r in reqs]
        if single and len(outputs) == 1:
            return outputs[0]
        return outputs

    def abort(self, rid: str) -> bool:
        return self.scheduler.abort_request(rid)

    def flush_cache(self) -> bool:
        return self.scheduler.flush_cache()

    def check_accounting(self) -> None:
        self.scheduler.check_accounting()

    def get_server_info(self) -> dict:
        stats = self.scheduler.stats
        return {
            "model_path": self.config.model_path,
            "architecture": self.model_config.architecture,
            "device": str(self.runner.device),
            "dtype": str(self.runner.dtype).removeprefix("torch."),
            "context_length": self.context_len,
            "max_total_tokens": self.runner.max_total_tokens,
            "cache_hit_rate": stats.cache_hit_rate,
            "prompt_tokens": stats.prompt_tokens,
            "cached_tokens": stats.cached_tokens,
            "generated_tokens": stats.generated_tokens,
            "decode_steps": stats.decode_steps,
            "prefill_batches": stats.prefill_batches,
            "retractions": stats.retractions,
            **self.scheduler.usage(),
        }

    def shutdown(self) -> None:
        self._closed = True

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    # ------------------------------------------------------------------ internals
    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("engine has been shut down")

    def _normalise_inputs(self, prompt: PromptInput, input_ids: IdsInput) -> tuple[list, bool]:
        if (prompt is None) == (input_ids is None):
            raise ValueError("give exactly one of prompt or input_ids")
        if prompt is not None:
            if isinstance(prompt, str):
                return [prompt], True
            if not isinstance(prompt, (list, tuple)) or not all(isinstance(p, str) for p in prompt):
                raise TypeError("prompt must be a string or a list of strings")
            if not prompt:
                raise ValueError("prompt list is empty")
            return list(prompt), False
        if not isinstance(input_ids, (list, tuple)):
            raise TypeError("input_ids must be a list of token ids or a list of such lists")
        if input_ids and all(isinstance(x, (list, tuple)) for x in input_ids):
            return [list(x) for x in input_ids], False
        return [list(input_ids)], True

    def _make_reqs(self, prompt: str | list[int], params_in: Any, return_logprob: bool,
                   logprob_start_len: int | None, top_logprobs_num: int) -> list[Req]:
        params = SamplingParams.from_any(params_in)
        params.validate(self.vocab_size)
        if isinstance(prompt, str):
            if not prompt:
                raise ValueError("prompt is empty")
            ids = self.tokenizer(prompt).input_ids
        else:
            ids = prompt
            if not all(isinstance(t, int) and not isinstance(t, bool) and 0 <= t < self.vocab_size for t in ids):
                raise ValueError(f"input_ids must be integers in [0, {self.vocab_size})")
        if not ids:
            raise ValueError("prompt is empty (no tokens)")
        need = len(ids) + (1 if params.max_new_tokens > 0 else 0)
        if need > self.context_len:
            raise ValueError(
                f"prompt is too long: {len(ids)} tokens, context length is {self.context_len}"
            )
        params.max_new_tokens = min(params.max_new_tokens, self.context_len - len(ids))
        params.min_new_tokens = min(params.min_new_tokens, params.max_new_tokens)
        if not isinstance(top_logprobs_num, int) or top_logprobs_num < 0:
            raise ValueError(f"top_logprobs_num must be an integer >= 0, got {top_logprobs_num!r}")
        if logprob_start_len is None:
            logprob_start_len = -1
        if not -1 <= logprob_start_len < len(ids):
            raise ValueError(f"logprob_start_len must be in [-1, {len(ids)}), got {logprob_start_len}")
        base_seed = params.seed if params.seed is not None else self._rng.getrandbits(63)
        group = uuid.uuid4().hex[:12]
        return [
            Req(
                rid=f"{group}-{next(self._counter)}",
                origin_input_ids=list(ids),
                sampling_params=params,
                seed=base_seed + k,  # n > 1: distinct but reproducible samples
                eos_ids=self.eos_ids,
                return_logprob=bool(return_logprob),
                logprob_start_len=logprob_start_len if return_logprob else -1,
                top_logprobs_num=top_logprobs_num if return_logprob else 0,
            )
            for k in range(params.n)
        ]

    def _run_until_done(self, reqs: list[Req]) -> None:
        pending = {id(r) for r in reqs}
        while pending:
            for req in self.scheduler.step():
                if req.finished:
                    pending.discard(id(req))
            if pending and not self.scheduler.has_work:
                raise RuntimeError("scheduler went idle with requests still pending")

    def _decode_raw(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=False)

    def _output(self, req: Req) -> dict:
        params = req.sampling_params
        ids = req.output_ids
        reason = req.finished_reason or {}
        text_ids = ids
        if reason.get("type") == "stop" and isinstance(reason.get("matched"), int) and not params.no_stop_trim:
            text_ids = ids[:-1]
        text = self.tokenizer.decode(text_ids, skip_special_tokens=params.skip_special_tokens)
        if reason.get("type") == "stop" and isinstance(reason.get("matched"), str) and not params.no_stop_trim:
            cut = text.find(reason["matched"])
            if cut >= 0:
                text = text[:cut]
        return {"text": text, "output_ids": list(ids), "meta_info": req.meta_info()}


def _broadcast(value: Any, count: int, name: str) -> list:
    """One value per request: a scalar/None applies to all; a list must have one per request."""
    if isinstance(value, (list, tuple)):
        if len(value) != count:
            raise ValueError(f"{name} has {len(value)} entries for {count} prompts")
        return list(value)
    return [value] * count
