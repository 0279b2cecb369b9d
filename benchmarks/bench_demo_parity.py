"""How far radixlm's prompt logprobs are from transformers' on trained vs random weights (fp32,
CPU): the README's "Parity on trained weights" figures.

    python benchmarks/bench_demo_parity.py                # the shipped demo model and the tiny random llama

On the texts tests/demo_model/test_parity.py checks (two held-out chats per family and three
Python starts), for every prompt token after the first: the gap between the top two logprobs
(transformers'), the smallest logprob of the actual token, and the largest difference between
radixlm's logprob of the token and transformers'. The random model gets the same texts (its own
tokenizer)."""

from __future__ import annotations

import argparse
import json
import statistics

import torch

from radixlm import Engine
from radixlm.demo_model import chat_format as fmt
from radixlm.demo_model import demo_model_path, tasks
from radixlm.runtime.tokenizer import load_tokenizer
from radixlm.testing import build_tiny_model

PYTHON_STARTS = ["class Stack:", "def heappush(heap, item):", "import os\n\n\ndef walk(top):"]


@torch.inference_mode()
def measure(model_path: str, texts: list[str]) -> dict:
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()
    tokenizer = load_tokenizer(model_path)
    gaps, token_logprobs, diffs = [], [], []
    with Engine(model_path) as engine:
        for text in texts:
            ids = tokenizer(text).input_ids
            out = engine.generate(
                input_ids=ids,
                sampling_params={"temperature": 0, "max_new_tokens": 1},
                return_logprob=True,
                logprob_start_len=0,
            )
            ref = torch.log_softmax(hf(torch.tensor([ids])).logits[0].float(), dim=-1)
            for (value, token), row in zip(out["meta_info"]["input_token_logprobs"][1:], ref):
                top2 = row.topk(2).values
                gaps.append(float(top2[0] - top2[1]))
                token_logprobs.append(float(row[token]))
                diffs.append(abs(value - float(row[token])))
    return {
        "model": model_path,
        "prompt_tokens": len(diffs),
        "median_top2_gap_nats": statistics.median(gaps),
        "min_token_logprob": min(token_logprobs),
        "max_abs_logprob_diff": max(diffs),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default=None, help="write the figures here as JSON")
    args = parser.parse_args()
    examples = [ex for family in tasks.EVALUATED for ex in tasks.heldout_examples(family, 2)]
    texts = [fmt.render_chat(ex.messages, ex.tools)[0] for ex in examples] + PYTHON_STARTS
    results = [measure(str(demo_model_path()), texts), measure(str(build_tiny_model("llama")), texts)]
    for r in results:
        print(json.dumps(r))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
