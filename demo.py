"""`radixlm demo`: a tour of the DSL on the offline tiny model (or `--model` / `--endpoint`).

Runs a multi-turn chat, a select, a 3-way fork with join and (where the runtime has
constrained decoding) a JSON-schema gen, printing each program's output and, at the end,
the runtime's cache hit rate. The tiny model has random weights: its words are noise, but
every rule of the language (roles, stops, choices, forks, caching) is the real one.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import time
from collections.abc import Iterator
from typing import Any

import radixlm as rl

DOCS = (
    "radixlm keeps every prompt prefix it has computed in a radix tree, so programs that "
    "share a beginning (a system prompt, few-shot examples, the text before a fork) pay for "
    "it once. "
) * 3
# bounded fields: a random-weight model would otherwise happily write digits forever
PERSON_SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 16},
        "age": {"type": "integer", "maxDigits": 2},
        "language": {"enum": ["python", "rust", "go"]},
    },
    "required": ["name", "age", "language"],
}


@rl.function
def chat(s, questions: list[str], max_tokens: int):
    s += rl.system("You are a concise assistant.")
    for i, question in enumerate(questions):
        s += rl.user(question)
        s += rl.assistant(rl.gen(f"answer_{i}", max_tokens=max_tokens))


@rl.function
def classify(s, review: str):
    s += "Review: " + review + "\nSentiment:"
    s += rl.select("sentiment", choices=[" positive", " negative", " neutral"])


@rl.function
def brainstorm(s, max_tokens: int):
    s += DOCS + "\nThree ways to use this:\n"
    forks = s.fork(3)
    forks += lambda i: f"Idea {i + 1}:"
    forks += rl.gen("idea", max_tokens=max_tokens, stop="\n")
    forks.join()


@rl.function
def extract(s, max_tokens: int):
    s += "Describe a person as JSON.\n"
    s += rl.gen("person", max_tokens=max_tokens, json_schema=PERSON_SCHEMA)


@contextlib.contextmanager
def open_backend(model: str | None, endpoint: str | None) -> Iterator[Any]:
    if endpoint:
        backend = rl.RuntimeEndpoint(endpoint)
    else:
        from radixlm.testing import default_model_path

        backend = rl.Runtime(model or str(default_model_path()))
    try:
        yield backend
    finally:
        backend.shutdown()


def _section(title: str) -> None:
    print(f"\n=== {title} " + "=" * max(0, 60 - len(title)), flush=True)


def run_demo(backend: Any, max_tokens: int) -> None:
    rl.set_default_backend(backend)

    _section("multi-turn chat")
    state = chat.run(
        questions=["What is a radix tree?", "And why does it help a cache?"],
        max_tokens=max_tokens,
        temperature=0,
    )
    for message in state.messages():
        print(f"[{message['role']}] {message['content']!r}")

    _section("select")
    state = classify.run(review="The batching made our agent twice as fast.")
    meta = state.get_meta_info("sentiment")
    scores = ", ".join(
        f"{c!r}: {v:.3f}"
        for c, v in zip([" positive", " negative", " neutral"], meta["normalized_prompt_logprobs"])
    )
    print(f"chose {state['sentiment']!r} (mean token logprob {scores})")

    _section("3-way fork and join")
    state = brainstorm.run(max_tokens=max_tokens, temperature=0.8)
    for i, idea in enumerate(state["idea"]):
        print(f"idea {i + 1}: {idea!r}")

    _section("JSON-schema gen")
    if backend.get_server_info().get("constrained_decoding"):
        state = extract.run(max_tokens=64, temperature=0)
        meta = state.get_meta_info("person")
        print(
            f"{json.dumps(json.loads(state['person']))}  ({meta['completion_tokens']} tokens, "
            f"{meta.get('jump_forward_tokens', 0)} of them jump-forward)"
        )
    else:
        print("skipped: this runtime has no constrained decoding yet")

    info = backend.get_server_info()
    print(
        f"\ncache hit rate: {100 * info['cache_hit_rate']:.1f}% "
        f"({info['cached_tokens']} of {info['prompt_tokens']} prompt tokens came from the radix cache)"
    )


def main(argv: list[str] | None = None) -> int:
    parser = build_parser(
        argparse.ArgumentParser(
            prog="radixlm demo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
        )
    )
    return run(parser.parse_args(argv))


def build_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument(
        "--model", default=None, help="local HF model folder (default: the offline tiny model)"
    )
    parser.add_argument("--endpoint", default=None, help="ZeroMQ address of `radixlm serve --zmq-port`")
    parser.add_argument("--max-tokens", type=int, default=12)
    return parser


def run(args: argparse.Namespace) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with open_backend(args.model, args.endpoint) as backend:
        run_demo(backend, args.max_tokens)
    print(f"done in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
