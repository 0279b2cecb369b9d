"""`radixlm demo`: a tour of the DSL on the trained demo model (or `--model` / `--endpoint`).

Runs a multi-turn chat that remembers a name, a `select` that judges reviews, a 3-way fork
that shares one conversation's prefix, a JSON extraction under a schema, an agent loop that
calls a calculator tool and uses its result, and a Python completion, printing each
program's output and, at the end, the runtime's cache hit rate. The demo model
(radixlm/demo_model, 11.7 M parameters, trained here) does exactly these kinds of tasks;
every rule of the language (roles, stops, choices, forks, schemas, caching) is the real one
on any model.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import time
from collections.abc import Iterator
from typing import Annotated, Any

from pydantic import Field

import radixlm as rl
from radixlm.demo_model import evaluate, tasks

SYSTEM = "You are a concise assistant."
REVIEWS = [
    "The battery lasts for days and the screen is gorgeous. I would happily buy it again.",
    "The pizza arrived cold and soggy, and the driver was rude. I want my money back.",
    "What a delightful little hotel! The staff were friendly and the room was spotless.",
]
FOLLOW_UPS = ["What is my name?", "What is 58 + 37?", "What is 40 - 73?"]
PERSON = "Meet Amara, a 29-year-old from Nairobi."
PYTHON_START = "class Queue:"  # no trailing newline: the model writes the "\n    " itself


@rl.function
def chat(s, questions: list[str], max_tokens: int):
    s += rl.system(SYSTEM)
    for i, question in enumerate(questions):
        s += rl.user(question)
        s += rl.assistant(rl.gen(f"answer_{i}", max_tokens=max_tokens))


SENTIMENT_QUESTION = "Is this review positive or negative? "


@rl.function
def classify(s, review: str):
    s += rl.user(SENTIMENT_QUESTION + review)
    s += rl.assistant(rl.select("sentiment", choices=["positive", "negative"]))


@rl.function
def three_questions(s, max_tokens: int):
    """One conversation, three follow-ups: the branches share its prefix in the radix cache."""
    s += rl.system(SYSTEM)
    s += rl.user("My name is Amara.")
    s += rl.assistant(rl.gen("greeting", max_tokens=max_tokens))
    forks = s.fork(3)
    for fork, question in zip(forks, FOLLOW_UPS):
        fork += rl.user(question)
        fork += rl.assistant(rl.gen("answer", max_tokens=max_tokens))
    forks.join()


@rl.function
def extract(s, sentence: str):
    s += rl.user("Extract name, age and city as JSON: " + sentence)
    s += rl.assistant(rl.gen("person", max_tokens=64, json_schema=tasks.EXTRACTION_SCHEMA))


def calculator(expression: Annotated[str, Field(description="for example 12 * 34")]) -> str:
    """Evaluate an arithmetic expression and return the result."""
    return evaluate.calculator(expression)  # `A op B`; anything else is an error text


@rl.function
def calculator_agent(s, question: str, max_steps: int = 3):
    """The agent loop: while the model calls a tool, run it and hand back its result."""
    tools = [calculator]  # its schema comes from the signature, worded as in the training data
    s += rl.system(rl.tools_prompt(tools))
    s += rl.user(question)
    for step in range(max_steps):
        s += rl.assistant(rl.gen(f"turn_{step}", tools=tools, max_tokens=64))
        calls = s.tool_calls(f"turn_{step}")
        if not calls:  # an answer, not a call: the loop is done
            s.set_var("answer", s[f"turn_{step}"])
            return
        result = rl.run_tool_call(calls[0], tools)
        s.set_var(f"result_{step}", result)
        s += rl.tool_response(result)


@rl.function
def complete_python(s, start: str, max_tokens: int):
    s += start
    s += rl.gen("code", max_tokens=max_tokens, stop="\n\n\n")


@contextlib.contextmanager
def open_backend(model: str | None, endpoint: str | None) -> Iterator[Any]:
    if endpoint:
        backend = rl.RuntimeEndpoint(endpoint)
    else:
        backend = rl.Runtime(model or rl.demo_model_path())
    try:
        yield backend
    finally:
        backend.shutdown()


def _section(title: str) -> None:
    print(f"\n=== {title} " + "=" * max(0, 60 - len(title)), flush=True)


def run_demo(backend: Any, max_tokens: int) -> None:
    rl.set_default_backend(backend)

    _section("multi-turn chat")
    questions = ["My name is Ada.", "What is 27 + 15?", "What is my name?"]
    state = chat.run(questions=questions, max_tokens=max_tokens, temperature=0)
    for message in state.messages()[1:]:
        print(f"[{message['role']}] {message['content']!r}")

    _section("select")
    states = classify.run_batch([{"review": review} for review in REVIEWS], temperature=0)
    for review, state in zip(REVIEWS, states):
        scores = state.get_meta_info("sentiment")["normalized_prompt_logprobs"]
        detail = ", ".join(f"{c}: {v:.2f}" for c, v in zip(["positive", "negative"], scores))
        print(f"{state['sentiment']:<8} (mean logprob {detail})  {review!r}")

    _section("3-way fork and join")
    state = three_questions.run(max_tokens=max_tokens, temperature=0)
    print(f"[assistant] {state['greeting']!r}")
    for question, answer in zip(FOLLOW_UPS, state["answer"]):
        print(f"fork: {question!r} -> {answer!r}")

    _section("JSON-schema gen")
    if backend.get_server_info().get("constrained_decoding"):
        state = extract.run(sentence=PERSON, temperature=0)
        meta = state.get_meta_info("person")
        person = json.dumps(json.loads(state["person"]))
        forced = meta.get("jump_forward_tokens", 0)
        print(f"{PERSON!r}\n-> {person}  ({meta['completion_tokens']} tokens, {forced} of them jump-forward)")
    else:
        print("skipped: this runtime has no constrained decoding yet")

    _section("agent loop with a calculator tool")
    question = "Use the calculator: what is 482 * 37?"
    state = calculator_agent.run(question=question, temperature=0)
    print(f"[user] {question!r}")
    step = 0
    while f"result_{step}" in state:
        print(f"[assistant] {state[f'turn_{step}']!r}\n[tool] {state[f'result_{step}']!r}")
        step += 1
    print(f"[assistant] {state['answer']!r}")

    _section("Python completion")
    state = complete_python.run(start=PYTHON_START, max_tokens=4 * max_tokens, temperature=0)
    print(PYTHON_START + state["code"])

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
        "--model", default=None, help="local HF model folder (default: the trained demo model)"
    )
    parser.add_argument("--endpoint", default=None, help="ZeroMQ address of `radixlm serve --zmq-port`")
    parser.add_argument("--max-tokens", type=int, default=24, help="token limit of each chat answer")
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
