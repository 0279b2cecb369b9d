"""radixlm equals Hugging Face transformers on the trained demo model (fp32, CPU), as it does
on the random tiny models: greedy tokens of held-out chats and of Python text, one request at
a time and batched, and every prompt token's logprob and top-5.

Trained weights make peaked distributions: most tokens of a chat have probability ~1 and the
alternatives sit 15-40 nats below, so greedy ties never decide a test, and the logprobs span a
much wider range than a random model's. The tolerance stays the random models' 1e-4."""

from __future__ import annotations

import pytest
import torch

from radixlm import Engine
from radixlm.demo_model import chat_format as fmt
from radixlm.demo_model import demo_model_path, grading, tasks
from radixlm.runtime.tokenizer import load_tokenizer

TOL = 1e-4
PYTHON_STARTS = ["class Stack:", "def heappush(heap, item):", "import os\n\n\ndef walk(top):"]


@pytest.fixture(scope="module")
def engine():
    with Engine(demo_model_path()) as engine:
        yield engine
        engine.check_accounting()


@pytest.fixture(scope="module")
def hf():
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(demo_model_path(), dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(demo_model_path())


def _chat_prompts() -> list[str]:
    prompts = []
    for family in tasks.EVALUATED:
        for ex in tasks.heldout_examples(family, 4):
            for stage in grading.stages(ex):
                prompts.append(fmt.render_chat(stage.messages, stage.tools, add_generation_prompt=True)[0])
    return prompts


@torch.inference_mode()
def _hf_greedy(hf, ids: list[int], new_tokens: int) -> list[int]:
    out = hf.generate(torch.tensor([ids]), max_new_tokens=new_tokens, do_sample=False, eos_token_id=None)
    return out[0, len(ids) :].tolist()


def test_greedy_tokens_equal_transformers_one_by_one_and_batched(engine, hf, tokenizer):
    prompts = _chat_prompts() + PYTHON_STARTS
    params = {"temperature": 0, "max_new_tokens": 24, "ignore_eos": True}
    batched = engine.generate(prompt=prompts, sampling_params=params)
    for prompt, out in zip(prompts, batched):
        ids = tokenizer(prompt).input_ids
        expected = _hf_greedy(hf, ids, 24)
        assert out["output_ids"] == expected, prompt
        assert engine.generate(prompt=prompt, sampling_params=params)["output_ids"] == expected


@torch.inference_mode()
def test_prompt_logprobs_equal_transformers(engine, hf, tokenizer):
    examples = [ex for family in tasks.EVALUATED for ex in tasks.heldout_examples(family, 2)]
    texts = [fmt.render_chat(ex.messages, ex.tools)[0] for ex in examples]
    worst = 0.0
    for text in texts + PYTHON_STARTS:
        ids = tokenizer(text).input_ids
        out = engine.generate(
            input_ids=ids,
            sampling_params={"temperature": 0, "max_new_tokens": 1},
            return_logprob=True,
            logprob_start_len=0,
            top_logprobs_num=5,
        )
        ref = torch.log_softmax(hf(torch.tensor([ids])).logits[0].float(), dim=-1)
        entries = out["meta_info"]["input_token_logprobs"]
        assert entries[0] == (None, ids[0]) and [t for _, t in entries[1:]] == ids[1:]
        for (value, token), row in zip(entries[1:], ref):
            worst = max(worst, abs(value - float(row[token])))
        for top, row in zip(out["meta_info"]["input_top_logprobs"][1:], ref):
            hf_top = row.topk(5)
            assert [t for t, _ in top] == hf_top.indices.tolist()
            for (_, v), hv in zip(top, hf_top.values.tolist()):
                assert v == pytest.approx(hv, abs=TOL)
    assert worst <= TOL
