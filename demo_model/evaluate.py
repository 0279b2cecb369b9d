"""Held-out accuracy of the demo model through radixlm, greedy, two ways:

- **DSL**: the programs a user would write (`gen`, `select` over the two labels, `gen` under
  the extraction JSON schema, an agent loop that runs the calculator the model calls, a chat
  in which the model writes every assistant turn), run in batches on a `Runtime`;
- **Engine**: each graded turn rendered by the folder's chat template (`apply_chat_template`,
  with `tools=`) and generated in one `Engine.generate` batch (the extraction under the schema).

    python -m radixlm.demo_model.evaluate                  # 200 held-out examples per family
    python -m radixlm.demo_model.evaluate --count 50 --json accuracy.json
"""

from __future__ import annotations

import argparse
import json
import re
import time
from typing import Any

import radixlm as rl
from radixlm.demo_model import demo_model_path, grading, tasks

_EXPRESSION = re.compile(r"^\s*(-?\d+)\s*([-+*])\s*(-?\d+)\s*$")


def calculator(expression: str) -> str:
    """The calculator tool: `A op B` with op one of + - * (anything else is an error text)."""
    match = _EXPRESSION.match(expression)
    if not match:
        return "error: cannot evaluate " + json.dumps(expression)
    a, op, b = int(match.group(1)), match.group(2), int(match.group(3))
    return str({"+": a + b, "-": a - b, "*": a * b}[op])


def _system_of(example: tasks.Example) -> str | None:
    first = example.messages[0]
    return first["content"] if first["role"] == "system" else None


@rl.function
def ask(s, question: str, system: str | None = None):
    if system:
        s += rl.system(system)
    s += rl.user(question)
    s += rl.assistant(rl.gen("answer", max_tokens=24))


@rl.function
def classify(s, question: str, system: str | None = None):
    if system:
        s += rl.system(system)
    s += rl.user(question)
    s += rl.assistant(rl.select("label", choices=["positive", "negative"]))


@rl.function
def extract(s, question: str, system: str | None = None):
    if system:
        s += rl.system(system)
    s += rl.user(question)
    s += rl.assistant(rl.gen("json", max_tokens=64, json_schema=tasks.EXTRACTION_SCHEMA))


@rl.function
def agent(s, question: str, tools: list[dict], system: str | None = None):
    """One round of an agent loop: the model calls a tool, we run it, the model answers."""
    s += rl.system(rl.tools_prompt(tools, system))
    s += rl.user(question)
    s += rl.assistant(rl.gen("call", tools=tools, max_tokens=48))
    calls = s.tool_calls("call")  # read as the server's Hermes parser reads them
    expression = calls[0].arguments.get("expression") if calls and calls[0].name == "calculator" else None
    if not isinstance(expression, str):
        s += rl.user("Please call the calculator with an expression.")  # the loop's recovery turn
        result = "error"
    else:
        result = calculator(expression)
    s += rl.tool_response(result)
    s += rl.assistant(rl.gen("answer", max_tokens=32))


@rl.function
def chat(s, questions: list[str], system: str | None = None):
    """Every user turn of a memory conversation; the model writes every assistant turn."""
    if system:
        s += rl.system(system)
    for i, question in enumerate(questions):
        s += rl.user(question)
        s += rl.assistant(rl.gen(f"turn_{i}", max_tokens=32))


def _dsl_answers(family: str, examples: list[tasks.Example]) -> dict[str, list[tuple[bool, str]]]:
    """Per metric, (right?, answer) for each example, through DSL programs."""
    if family == "tool_use":
        states = agent.run_batch(
            [
                {"question": ex.messages[-4]["content"], "tools": ex.tools, "system": _system_of(ex)}
                for ex in examples
            ],
            temperature=0,
        )
        calls = [grading.stages(ex)[0].check(st["call"]) for ex, st in zip(examples, states)]
        answers = [grading.stages(ex)[1].check(st["answer"]) for ex, st in zip(examples, states)]
        return {
            "tool_call": [(ok, st["call"]) for ok, st in zip(calls, states)],
            "tool_answer": [(ok, st["answer"]) for ok, st in zip(answers, states)],
        }
    if family == "memory":
        questions = [[m["content"] for m in ex.messages if m["role"] == "user"] for ex in examples]
        states = chat.run_batch(
            [{"questions": q, "system": _system_of(ex)} for q, ex in zip(questions, examples)], temperature=0
        )
        texts = [st[f"turn_{len(q) - 1}"] for st, q in zip(states, questions)]
    else:
        program, key = {"arithmetic": (ask, "answer"), "sentiment": (classify, "label"),
                        "extraction": (extract, "json")}[family]  # fmt: skip
        states = program.run_batch(
            [{"question": ex.messages[-2]["content"], "system": _system_of(ex)} for ex in examples],
            temperature=0,
        )
        texts = [st[key] for st in states]
    checks = [grading.stages(ex)[-1].check(t) for ex, t in zip(examples, texts)]
    return {family: list(zip(checks, texts))}


def _engine_answers(engine: rl.Engine, tokenizer: Any, examples: list[tasks.Example]) -> dict[str, list]:
    """Per metric, (right?, answer) for each graded turn, teacher-forced, in one Engine batch."""
    stages = [s for ex in examples for s in grading.stages(ex)]
    prompts = [
        tokenizer.apply_chat_template(s.messages, tools=s.tools, tokenize=False, add_generation_prompt=True)
        for s in stages
    ]
    params = [
        {"temperature": 0, "max_new_tokens": 64}
        | ({"json_schema": json.dumps(tasks.EXTRACTION_SCHEMA)} if s.metric == "extraction" else {})
        for s in stages
    ]
    outputs = engine.generate(prompt=prompts, sampling_params=params)
    result: dict[str, list] = {}
    for stage, out in zip(stages, outputs):
        result.setdefault(stage.metric, []).append((stage.check(out["text"]), out["text"]))
    return result


def evaluate(model_path: str, count: int, seed: int = 1234, device: str = "cpu") -> dict[str, Any]:
    """{"dsl": {metric: accuracy}, "engine": {metric: accuracy}, "count": count, "misses": ...}."""
    examples = {family: tasks.heldout_examples(family, count, seed) for family in tasks.EVALUATED}
    report: dict[str, Any] = {"count": count, "seed": seed, "dsl": {}, "engine": {}, "misses": {}}
    runtime = rl.Runtime(model_path, device=device)
    previous = rl.get_default_backend()
    rl.set_default_backend(runtime)
    try:
        for family, exs in examples.items():
            for metric, rows in _dsl_answers(family, exs).items():
                report["dsl"][metric] = sum(ok for ok, _ in rows) / len(rows)
                report["misses"][f"dsl/{metric}"] = [text for ok, text in rows if not ok][:5]
    finally:
        rl.set_default_backend(previous)
        runtime.shutdown()
    with rl.Engine(model_path, device=device) as engine:
        from radixlm.runtime.tokenizer import load_tokenizer

        tokenizer = load_tokenizer(model_path)
        for metric, rows in _engine_answers(
            engine, tokenizer, [e for v in examples.values() for e in v]
        ).items():
            report["engine"][metric] = sum(ok for ok, _ in rows) / len(rows)
            report["misses"][f"engine/{metric}"] = [text for ok, text in rows if not ok][:5]
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default=None, help="model folder (default: the shipped demo model)")
    parser.add_argument("--count", type=int, default=200, help="held-out examples per family")
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", default=None, help="also write the report here")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    report = evaluate(args.model or demo_model_path(), args.count, args.seed, args.device)
    report["seconds"] = round(time.perf_counter() - start, 1)
    print(f"held-out accuracy, {args.count} examples per family (greedy):")
    print(f"| {'metric':<12} | DSL     | Engine  |")
    for metric in grading.METRICS:
        dsl, engine = 100 * report["dsl"][metric], 100 * report["engine"][metric]
        print(f"| {metric:<12} | {dsl:5.1f}%  | {engine:5.1f}%  |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    print(f"({report['seconds']} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
