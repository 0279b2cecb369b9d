"""Streaming: print a program's text as it is generated, synchronously and with asyncio.

    python examples/streaming.py                             # launches the trained demo model
    python examples/streaming.py --max-tokens 8              # cut the answers short
    python examples/streaming.py --model PATH                # any local Llama/Mistral/Qwen2/Qwen3 folder
    python examples/streaming.py --endpoint tcp://127.0.0.1:30001
                                                             # a running `radixlm serve --zmq-port 30001`

`run(stream=True)` returns at once while the program runs in the background.
`s.text_iter()` yields the whole text as it grows (constant text and role markers included);
`s.text_iter("answer")` yields one variable's text. In asyncio, `s.text_async_iter(...)`
does the same without blocking the event loop, so several programs can stream at once.
The questions are ones the demo model was trained on; generation is greedy (temperature=0).
"""

from __future__ import annotations

import asyncio
import sys

from _backend import backend_from_args, make_parser, print_cache_hit_rate

import radixlm as rl


@rl.function
def qa(s, question: str, max_tokens: int):
    s += rl.system("You are a helpful assistant.")
    s += rl.user(question)
    s += rl.assistant(rl.gen("answer", max_tokens=max_tokens))


def stream_sync(max_tokens: int) -> None:
    state = qa.run(question="What can you do?", max_tokens=max_tokens, stream=True, temperature=0)
    chunks = 0
    for chunk in state.text_iter():  # the whole text, as it grows
        sys.stdout.write(chunk)
        sys.stdout.flush()
        chunks += 1
    print(f"\n[sync: {chunks} chunks; answer has {len(state['answer'])} characters]")


async def stream_async(max_tokens: int) -> None:
    questions = {"sum": "What is 64 + 29?", "intro": "Who are you?"}
    states = {
        name: qa.run(question=q, max_tokens=max_tokens, stream=True, temperature=0)
        for name, q in questions.items()
    }

    async def follow(name: str, state: rl.ProgramState) -> int:
        chunks = 0
        async for chunk in state.text_async_iter("answer"):  # only the generated answer
            print(f"[{name}] {chunk!r}", flush=True)
            chunks += 1
        return chunks

    counts = await asyncio.gather(*(follow(name, state) for name, state in states.items()))
    print(f"[async: {dict(zip(states, counts))} chunks per stream]")
    print(f"answers: { {name: state['answer'] for name, state in states.items()} }")


def main() -> None:
    args = make_parser(__doc__, max_tokens=32).parse_args()
    with backend_from_args(args) as backend:
        print("--- text_iter()")
        stream_sync(args.max_tokens)
        print("--- text_async_iter('answer'), two programs at once")
        asyncio.run(stream_async(args.max_tokens))
        print_cache_hit_rate(backend)


if __name__ == "__main__":
    main()
