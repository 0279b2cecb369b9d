"""Offline batch generation with the Engine: a shared system prompt, many questions.

    python examples/offline_batch.py                 # the trained demo model
    python examples/offline_batch.py --model PATH    # any local Llama/Mistral/Qwen2/Qwen3 folder

Every prompt is a chat rendered by the model's own chat template
(`engine.tokenizer.apply_chat_template`), the way an OpenAI-style server renders a request,
and all of them go to the Engine in one `generate` call. The questions are the tasks the demo
model was trained on: sums, a review's sentiment, extraction as JSON, and a calculator call
(the template lists the tools passed as `tools=` in the system turn). Greedy (temperature=0),
so both rounds give the same answers; the second round finds every prompt in the radix cache:
watch `cached_tokens` and the cache hit rate.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from radixlm import Engine
from radixlm.demo_model import demo_model_path
from radixlm.demo_model.tasks import CALCULATOR_TOOL

SYSTEM = "You are a helpful assistant."
# (question, tools offered): each prompt is the system turn, then the question
QUESTIONS = [
    ("What is 23 + 58?", None),
    ("What is 91 - 36?", None),
    ("What is 7 - 45?", None),
    (
        "Is this review positive or negative? The blender is sturdy and reliable. I use it every single day.",
        None,
    ),
    ("Is this review positive or negative? The hotel room was dirty and the staff were rude.", None),
    ("Extract name, age and city as JSON: Lena is 34 years old and lives in Hamburg.", None),
    ("Who are you?", None),
    ("Use the calculator: what is 1234 * 5678?", [CALCULATOR_TOOL]),
]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default=None, help="local model folder (default: the trained demo model)")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()

    model = args.model or demo_model_path()
    start = time.perf_counter()
    with Engine(model, device=args.device) as engine:
        chat = engine.tokenizer.apply_chat_template
        prompts = [
            chat(
                [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}],
                tools=tools,
                tokenize=False,
                add_generation_prompt=True,
            )
            for question, tools in QUESTIONS
        ]
        params = {"max_new_tokens": args.max_new_tokens, "temperature": 0}
        for round_no in (1, 2):
            t0 = time.perf_counter()
            outputs = engine.generate(prompts, params)
            elapsed = time.perf_counter() - t0
            tokens = sum(o["meta_info"]["completion_tokens"] for o in outputs)
            print(f"--- round {round_no}: {len(prompts)} requests, {tokens} tokens in {elapsed:.2f}s")
            for (question, _), out in zip(QUESTIONS, outputs):
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
