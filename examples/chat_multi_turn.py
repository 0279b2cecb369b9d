"""Multi-turn chat: system, user and assistant roles, one `gen` per assistant turn.

    python examples/chat_multi_turn.py                       # launches the trained demo model
    python examples/chat_multi_turn.py --model PATH          # any local Llama/Mistral/Qwen2/Qwen3 folder
    python examples/chat_multi_turn.py --endpoint tcp://127.0.0.1:30001
                                                             # a running `radixlm serve --zmq-port 30001`

The user introduces themselves, asks a sum, then asks for their name back: the last answer
is right only if the model reads the whole conversation, which every turn's request carries.
Roles render through the model's chat template. Each request starts with the conversation
so far, which the runtime finds in its radix cache: the hit rate climbs with each turn.
Generation is greedy (temperature=0), so the run is repeatable.
"""

from __future__ import annotations

from _backend import backend_from_args, make_parser, print_cache_hit_rate

import radixlm as rl

NAME = "Grace Hopper"
QUESTIONS = [
    f"My name is {NAME}.",  # the demo model was trained on these phrasings
    "What is 48 + 37?",
    "What is my name?",
]


@rl.function
def chat(s, questions: list[str], max_tokens: int):
    s += rl.system("You are a helpful assistant.")
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
