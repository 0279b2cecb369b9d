"""`run_batch` over many inputs with a progress bar: throughput and prefix reuse.

    python examples/run_batch_progress.py                    # launches the offline tiny model
    python examples/run_batch_progress.py --num 128 --num-threads 32
    python examples/run_batch_progress.py --model PATH       # any local Llama/Mistral/Qwen2/Qwen3 folder
    python examples/run_batch_progress.py --endpoint tcp://127.0.0.1:30001
                                                             # a running `radixlm serve --zmq-port 30001`

Each program runs on its own thread; the runtime batches their requests together. The
program's constant prefix (the instructions and the example) is prefilled once before the
batch starts, so every request after it finds that prefix in the radix cache. States come
back in input order; the progress bar (tqdm, on stderr) counts finished programs.
"""

from __future__ import annotations

import time

from _backend import backend_from_args, make_parser, print_cache_hit_rate

import radixlm as rl

TOPICS = [
    "rivers",
    "volcanoes",
    "owls",
    "bridges",
    "tea",
    "glaciers",
    "bees",
    "lighthouses",
    "comets",
    "maps",
    "violins",
    "deserts",
    "clocks",
    "coral",
    "kites",
    "salt",
]


@rl.function
def fact_card(s, topic: str):
    s += (
        "Write one surprising, true fact about the topic, in a single short sentence. "
        "Keep it friendly and avoid jargon.\n\n"
        "Topic: octopuses\nFact: An octopus has three hearts and blue blood.\n\n"
    )
    s += f"Topic: {topic}\nFact:" + rl.gen("fact", stop="\n")


def main() -> None:
    parser = make_parser(__doc__)
    parser.add_argument("--num", type=int, default=32, help="number of programs in the batch")
    parser.add_argument("--num-threads", default="auto", help="concurrent programs ('auto' or a number)")
    args = parser.parse_args()
    num_threads = args.num_threads if args.num_threads == "auto" else int(args.num_threads)
    batch = [{"topic": f"{TOPICS[i % len(TOPICS)]} #{i}"} for i in range(args.num)]

    with backend_from_args(args) as backend:
        start = time.perf_counter()
        # keywords after the batch are run-level defaults for every gen (here: greedy, short)
        states = fact_card.run_batch(
            batch, progress_bar=True, num_threads=num_threads, max_new_tokens=args.max_tokens, temperature=0
        )
        elapsed = time.perf_counter() - start
        for item, state in list(zip(batch, states))[:4]:
            print(f"{item['topic']:>14}: {state['fact']!r}")
        if len(states) > 4:
            print(f"{'...':>14}  ({len(states) - 4} more)")
        failed = sum(state.error() is not None for state in states)
        tokens = sum(
            state.get_meta_info("fact")["completion_tokens"] for state in states if state.error() is None
        )
        print(
            f"{len(states)} programs ({failed} failed), {tokens} tokens in {elapsed:.2f}s: "
            f"{len(states) / elapsed:.1f} programs/s, {tokens / elapsed:.1f} tokens/s"
        )
        print_cache_hit_rate(backend)


if __name__ == "__main__":
    main()
