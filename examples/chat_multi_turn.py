"""Multi-turn chat: system, user and assistant roles, one `gen` per assistant turn.

    python examples/chat_multi_turn.py                       # launches the offline tiny model
    python examples/chat_multi_turn.py --model PATH          # any local Llama/Mistral/Qwen2/Qwen3 folder
    python examples/chat_multi_turn.py --endpoint tcp://127.0.0.1:30001
                                                             # a running `radixlm serve --zmq-port 30001`

Roles render through the model's chat template. Every turn's request starts with the whole
conversation so far, which the runtime finds in its radix cache: the hit rate climbs with
each turn. (The tiny model has random weights, so its replies are gibberish.)
"""

from __future__ import annotations

from _backend import backend_from_args, make_parser, print_cache_hit_rate

import radixlm as rl

QUESTIONS = [
    "What is a radix tree?",
    "How does it help an LLM server reuse work?",
    "Summarise that in one sentence.",
]


@rl.function
def chat(s, questions: list[str], max_tokens: int):
    s += rl.system("You are a concise assistant who explains data structures.")
    for i, question in enumerate(questions):
        s += rl.user(question)
        s += rl.assistant(rl.gen(f"answer_{i}", max_tokens=max_tokens))


def main() -> None:
    args = make_parser(__doc__, max_tokens=24).parse_args()
    with backend_from_args(args) as backend:
        state = chat.run(questions=QUESTIONS, max_tokens=args.max_tokens, temperature=0)
        for message in state.messages():
            print(f"{message['role']:>9}: {message['content']!r}")
        print(f"turns: {len(QUESTIONS)}; last answer: {state[f'answer_{len(QUESTIONS) - 1}']!r}")
        print_cache_hit_rate(backend)


if __name__ == "__main__":
    main()
