"""Test helpers: cached engines per tiny model and the Hugging Face oracle."""

from __future__ import annotations

import os

import torch

from radixlm.testing import MOE_TINY_MODELS, TINY_MODELS, build_tiny_model

# the dense architectures every parity test runs over; the mixture-of-experts ones have their own
# parity tests (tests/runtime/models/test_moe_models.py), at a size CI's time budget allows
ARCHES = [name for name in TINY_MODELS if name not in MOE_TINY_MODELS]
_ENGINES: dict[tuple, object] = {}
_HF: dict[str, object] = {}

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


MAX_LIVE_ENGINES = 6  # each Engine holds two processes with torch loaded


def get_engine(name: str = "llama", **options):
    """A cached Engine per (model, options), least recently used ones shut down."""
    from radixlm import Engine

    key = (name, tuple(sorted(options.items())))
    engine = _ENGINES.pop(key, None)
    if engine is None:
        while len(_ENGINES) >= MAX_LIVE_ENGINES:
            oldest = next(iter(_ENGINES))
            _ENGINES.pop(oldest).shutdown()
        engine = Engine(str(build_tiny_model(name)), **options)
    _ENGINES[key] = engine  # most recently used last
    return engine


class LocalRuntime:
    """ModelRunner + Scheduler in this process, for tests that drive scheduling step by step."""

    def __init__(self, name: str = "llama", **options) -> None:
        from radixlm.runtime.config import EngineConfig, ModelConfig
        from radixlm.runtime.model_executor.model_runner import ModelRunner
        from radixlm.runtime.scheduler.scheduler import Scheduler
        from radixlm.runtime.tokenizer import load_tokenizer

        path = str(build_tiny_model(name))
        self.name = name
        self.config = EngineConfig.from_kwargs(path, **options)
        model_cfg = ModelConfig.from_path(path)
        self.tokenizer = load_tokenizer(path)
        from radixlm.runtime.constrained.grammar_cache import GrammarCache
        from radixlm.runtime.constrained.vocabulary import TokenizerVocab

        self.runner = ModelRunner(self.config, model_cfg)
        self.eos_ids = frozenset(model_cfg.eos_token_ids) | {self.tokenizer.eos_token_id}
        self.grammars = GrammarCache(
            TokenizerVocab(self.tokenizer, self.runner.vocab_size, sorted(self.eos_ids)),
            whitespace_pattern=self.config.constrained_json_whitespace_pattern,
            backend=self.config.grammar_backend,
        )
        self.scheduler = Scheduler(
            self.config,
            self.runner,
            lambda ids: self.tokenizer.decode(ids, skip_special_tokens=False),
            self.grammars,
        )
        self._count = 0
        _LOCAL.append(self)

    def fresh_scheduler(self) -> None:
        """A new Scheduler over the same model and its drained pools: nothing adaptive carries over
        from earlier work (new_token_ratio decays each decode step and jumps on retraction, and it
        decides admission), so the same requests schedule the same way every time."""
        from radixlm.runtime.scheduler.scheduler import Scheduler

        assert self.scheduler.flush_cache(), "fresh_scheduler needs a drained runtime"
        self.scheduler = Scheduler(
            self.config, self.runner, self.scheduler.rules.decode_tokens, self.grammars
        )

    def submit(
        self,
        ids: list[int],
        params: dict,
        return_logprob: bool = False,
        logprob_start_len: int = -1,
        top_logprobs_num: int = 0,
        seed: int = 0,
    ):
        from radixlm.runtime.layers.sampling import SamplingParams
        from radixlm.runtime.scheduler.request import Req

        sp = SamplingParams.from_any(params)
        sp.validate(self.runner.vocab_size)
        sp.max_new_tokens = min(sp.max_new_tokens, self.runner.context_len - len(ids))
        self._count += 1
        req = Req(
            rid=f"r{self._count}",
            origin_input_ids=list(ids),
            sampling_params=sp,
            seed=seed,
            eos_ids=self.eos_ids,
            return_logprob=return_logprob,
            logprob_start_len=logprob_start_len,
            top_logprobs_num=top_logprobs_num,
        )
        self.scheduler.add_request(req)
        return req

    def run_all(self, limit: int = 100_000) -> None:
        for _ in range(limit):
            if not self.scheduler.has_work:
                return
            self.scheduler.step()
            self.scheduler.check_accounting()
        raise AssertionError("scheduler did not drain")

    def generate(self, prompts: list[list[int]], params: dict) -> list:
        reqs = [self.submit(p, params) for p in prompts]
        self.run_all()
        return reqs

    def check_accounting(self) -> dict:
        self.scheduler.check_accounting()
        return self.scheduler.usage()

    def flush_cache(self) -> bool:
        return self.scheduler.flush_cache()


_LOCAL: list[LocalRuntime] = []


def get_hf(name: str):
    from transformers import AutoModelForCausalLM

    if name not in _HF:
        _HF[name] = AutoModelForCausalLM.from_pretrained(
            str(build_tiny_model(name)), dtype=torch.float32
        ).eval()
    return _HF[name]


@torch.inference_mode()
def hf_greedy(name: str, ids: list[int], max_new_tokens: int, stop_at_eos: bool = False) -> list[int]:
    """Hugging Face greedy continuation of one prompt (no padding: one request at a time)."""
    model = get_hf(name)
    kw = {} if stop_at_eos else {"eos_token_id": None}
    out = model.generate(
        torch.tensor([ids]),
        max_new_tokens=max_new_tokens,
        do_sample=False,
        pad_token_id=model.config.pad_token_id,
        **kw,
    )
    return out[0, len(ids) :].tolist()


@torch.inference_mode()
def hf_logprobs(name: str, ids: list[int]) -> torch.Tensor:
    """[len(ids), vocab] log-softmax of the HF model's logits for each prefix."""
    logits = get_hf(name)(torch.tensor([ids])).logits[0].float()
    return torch.log_softmax(logits, dim=-1)


# Random-weight models put two tokens within float rounding of each other now and then
# (seed 251 of the mistral batch test: a gap of 5e-7 nats). Greedy then picks either,
# depending on summation order; past such a tie the two continuations are unrelated.
TIE_GAP = 1e-4


def assert_greedy_matches_hf(name: str, ids: list[int], output_ids: list[int]) -> None:
    """Our greedy output equals HF's token for token, except that it may leave HF's path at
    an exact tie (HF's top two log-probabilities within TIE_GAP, ours being one of them);
    everything before that point must match and any other difference fails."""
    expected = hf_greedy(name, ids, len(output_ids))
    if output_ids == expected:
        return
    at = next((i for i, (a, b) in enumerate(zip(output_ids, expected)) if a != b), None)
    assert at is not None, f"lengths differ: {len(output_ids)} vs HF {len(expected)}"
    top = hf_logprobs(name, ids + expected[:at])[-1].topk(2)
    gap = float(top.values[0] - top.values[1])
    tied = gap < TIE_GAP and output_ids[at] in top.indices.tolist()
    assert tied, (
        f"differs from HF at output token {at}: {output_ids[at]} vs {expected[at]} "
        f"(HF's top-2 gap {gap:.2e} is not a tie)\nours {output_ids}\nHF   {expected}"
    )


def assert_serves_as_before(engine, prompt: str, params: dict, expected_ids: list[int]) -> None:
    """Nothing is left queued or running, and a good greedy request answers exactly as it did
    before (for tests where something was refused in between)."""
    usage = engine.check_accounting()
    assert usage["waiting"] == 0 and usage["running"] == 0, f"work left behind: {usage}"
    out = engine.generate(prompt, params)
    assert out["output_ids"] == expected_ids
    assert out["meta_info"]["finish_reason"] == {"type": "length", "length": params["max_new_tokens"]}
