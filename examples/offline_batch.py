"""Offline batch generation with the Engine: a shared system prompt, many questions.

    python examples/offline_batch.py                 # the offline tiny model (built on first use)
    python examples/offline_batch.py --model PATH    # any local Llama/Mistral/Qwen2/Qwen3 folder

The second round of questions reuses the system prompt from the radix cache: watch
`cached_tokens` and the cache hit rate.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from radixlm import Engine
from radixlm.testing import default_model_path

SYSTEM = (
    "You are a careful assistant for Python programmers. Answer briefly, show code when it "
    "helps, and say so when you are not sure. "
)
QUESTIONS = [
    "How do I reverse a list?",
    "What does the with statement do?",
    "Explain list comprehensions.",
    "How are exceptions raised?",
    "What is a generator?",
    "How do I read a file line by line?",
    "What does the global statement do?",
    "When should I use a tuple instead of a list?",
]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default=None, help="local model folder (default: the offline tiny model)")
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()

    model = args.model or default_model_path()
    start = time.perf_counter()
    with Engine(model, device=args.device) as engine:
        chat = engine.tokenizer.apply_chat_template
        prompts = [
            chat(
                [{"role": "system", "content": SYSTEM}, {"role": "user", "content": q}],
                tokenize=False,
                add_generation_prompt=True,
            )
            for q in QUESTIONS
        ]
        params = {"max_new_tokens": args.max_new_tokens, "temperature": 0.7, "top_p": 0.9}
        for round_no in (1, 2):
            t0 = time.perf_counter()
            outputs = engine.generate(prompts, params)
            elapsed = time.perf_counter() - t0
            tokens = sum(o["meta_info"]["completion_tokens"] for o in outputs)
            print(f"--- round {round_no}: {len(prompts)} requests, {tokens} tokens in {elapsed:.2f}s")
            for question, out in zip(QUESTIONS, outputs):
                meta = out["meta_info"]
                print(
                    f"[{meta['prompt_tokens']} prompt / {meta['cached_tokens']} cached] "
                    f"{question}\n    -> {out['text']!r}"
                )
        info = engine.get_server_info()
        print(
            f"cache hit rate {info['cache_hit_rate']:.1%}; {info['generated_tokens']} tokens generated; "
            f"total {time.perf_counter() - start:.1f}s on {info['device']}"
        )
        engine.check_accounting()


if __name__ == "__main__":
    main()
