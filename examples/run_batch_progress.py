"""`run_batch` over many inputs with a progress bar: throughput and prefix reuse.

    python examples/run_batch_progress.py                    # launches the trained demo model
    python examples/run_batch_progress.py --num 128 --num-threads 32
    python examples/run_batch_progress.py --model PATH       # any local Llama/Mistral/Qwen2/Qwen3 folder
    python examples/run_batch_progress.py --endpoint tcp://127.0.0.1:30001
                                                             # a running `radixlm serve --zmq-port 30001`

Each program asks one sum or difference of two numbers from 0 to 99 ("What is A + B?", the
phrasing the demo model was trained on), and Python checks every answer. Each program runs on
its own thread; the runtime batches their requests together. The program's constant prefix
(the system prompt) is prefilled once before the batch starts, so every request after it finds
that prefix in the radix cache. States come back in input order; the progress bar (tqdm, on
stderr) counts finished programs. Greedy (temperature=0).
"""

from __future__ import annotations

import random
import re
import time

from _backend import backend_from_args, make_parser, print_cache_hit_rate

import radixlm as rl

ANSWER = re.compile(r"^(\d+) ([-+]) (\d+) = (-?\d+)\.$")  # how the demo model answers: "17 + 25 = 42."


@rl.function
def arithmetic(s, a: int, op: str, b: int):
    s += rl.system("You are a concise assistant.")
    s += rl.user(f"What is {a} {op} {b}?")
    s += rl.assistant(rl.gen("answer"))


def is_right(item: dict, answer: str) -> bool:
    """The answer restates the problem and gives its result, as Python computes it."""
    match = ANSWER.match(answer.strip())
    if not match:
        return False
    a, op, b, result = int(match.group(1)), match.group(2), int(match.group(3)), int(match.group(4))
    expected = item["a"] + item["b"] if item["op"] == "+" else item["a"] - item["b"]
    return (a, op, b) == (item["a"], item["op"], item["b"]) and result == expected


def main() -> None:
    parser = make_parser(__doc__, max_tokens=24)
    parser.add_argument("--num", type=int, default=32, help="number of programs in the batch")
    parser.add_argument("--num-threads", default="auto", help="concurrent programs ('auto' or a number)")
    args = parser.parse_args()
    num_threads = args.num_threads if args.num_threads == "auto" else int(args.num_threads)
    rng = random.Random(0)  # the same problems every run
    batch = [
        {"a": rng.randint(0, 99), "op": rng.choice("+-"), "b": rng.randint(0, 99)} for _ in range(args.num)
    ]

    with backend_from_args(args) as backend:
        start = time.perf_counter()
        # keywords after the batch are run-level defaults for every gen (here: greedy, short)
        states = arithmetic.run_batch(
            batch, progress_bar=True, num_threads=num_threads, max_new_tokens=args.max_tokens, temperature=0
        )
        elapsed = time.perf_counter() - start
        for item, state in list(zip(batch, states))[:4]:
            question = f"{item['a']} {item['op']} {item['b']}"
            print(f"{question:>8}: {state['answer']!r}")
        if len(states) > 4:
            print(f"{'...':>8}  ({len(states) - 4} more)")
        done = [(item, state) for item, state in zip(batch, states) if state.error() is None]
        failed = len(states) - len(done)
        tokens = sum(state.get_meta_info("answer")["completion_tokens"] for _, state in done)
        right = sum(is_right(item, state["answer"]) for item, state in done)
        print(
            f"{len(states)} programs ({failed} failed), {tokens} tokens in {elapsed:.2f}s: "
            f"{len(states) / elapsed:.1f} programs/s, {tokens / elapsed:.1f} tokens/s"
        )
        print(f"{right} of {len(states)} answers right")
        print_cache_hit_rate(backend)


if __name__ == "__main__":
    main()
