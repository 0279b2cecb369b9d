"""A tool-calling agent loop: the model is offered Python functions as tools, writes a call,
the program runs it and appends its result, and the model goes on until it answers, for a
bounded number of steps.

    python examples/react_agent.py                           # launches the trained demo model
    python examples/react_agent.py --question "Use the calculator: what is 4321 * 987?" --max-steps 4
    python examples/react_agent.py --model PATH              # any local Llama/Mistral/Qwen2/Qwen3 folder
    python examples/react_agent.py --endpoint tcp://127.0.0.1:30001
                                                             # a running `radixlm serve --zmq-port 30001`

The DSL's tools (lang/tools.py) do the plumbing: `rl.tools_prompt(TOOLS)` lists the functions'
schemas (from their signatures, type hints and docstrings) in the system turn,
`rl.gen(..., tools=TOOLS)` reads the calls out of the reply (`s.tool_calls(name)`),
`rl.run_tool_call` checks a call's arguments and runs the function, and `rl.tool_response`
appends the result as the chat template's tool turn. The program reads each reply as soon as
it is generated to decide what to append next; a reply with no tool call is the answer.
Greedy (temperature=0).

Tools: calculator(expression), arithmetic parsed with `ast` and evaluated node by node, never
with `eval`; and get_weather(city), which returns one fixed, made-up report for every city
(this example never goes online). A bad call gets an error text back as its result.
"""

from __future__ import annotations

import ast
import json
import math
import operator
from typing import Annotated

from _backend import backend_from_args, make_parser, print_cache_hit_rate
from pydantic import Field

import radixlm as rl

# the demo model's trained phrasings: a calculator question, a weather question
QUESTIONS = ["Use the calculator: what is 1234 * 5678?", "What is the weather in Lisbon?"]
MAX_EXPRESSION_CHARS = 200
MAX_MAGNITUDE = 10**100
OPERATORS = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
    ast.USub: operator.neg,
    ast.UAdd: operator.pos,
}
CONSTANTS = {"pi": math.pi, "e": math.e}


# ---------------------------------------------------------------------------------------- tools
# The docstrings' first lines and the parameter descriptions are what the system turn shows the
# model: they are worded as in the demo model's training data (demo_model/tasks.py).
def calculator(expression: Annotated[str, Field(description="for example 12 * 34")]) -> str:
    """Evaluate an arithmetic expression and return the result.

    +, -, *, /, //, %, ** over numbers, pi and e; anything else is refused (ValueError)."""
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise ValueError(f"expression longer than {MAX_EXPRESSION_CHARS} characters")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except (SyntaxError, ValueError) as exc:  # ValueError: e.g. a null byte in the source
        raise ValueError(
            f"not an arithmetic expression: {exc.msg if isinstance(exc, SyntaxError) else exc}"
        ) from exc

    def value(node: ast.AST) -> float | int:
        if isinstance(node, ast.Constant) and type(node.value) in (int, float):
            if not abs(node.value) <= MAX_MAGNITUDE:  # also refuses inf and nan
                raise ValueError("number too large")
            return node.value
        if isinstance(node, ast.Name) and node.id in CONSTANTS:
            return CONSTANTS[node.id]
        if isinstance(node, ast.UnaryOp) and type(node.op) in OPERATORS:
            return OPERATORS[type(node.op)](value(node.operand))
        if isinstance(node, ast.BinOp) and type(node.op) in OPERATORS:
            left, right = value(node.left), value(node.right)
            if isinstance(node.op, ast.Pow) and abs(left) > 1 and abs(right) * math.log10(abs(left)) > 100:
                raise ValueError("result too large")
            result = OPERATORS[type(node.op)](left, right)
            if isinstance(result, complex) or abs(result) > MAX_MAGNITUDE:
                raise ValueError("result too large or not real")
            return result
        raise ValueError(f"unsupported syntax: {type(node).__name__}")

    try:
        result = value(tree.body)
    except ZeroDivisionError:
        raise ValueError("division by zero") from None
    except OverflowError:
        raise ValueError("result too large") from None
    return f"{result:.10g}" if isinstance(result, float) else str(result)


def get_weather(city: Annotated[str, Field(description="the city's name")]) -> str:
    """Get the current weather in a city.

    A stand-in for a weather service: the same made-up report for every city, as the JSON the
    demo model was trained to read."""
    return json.dumps({"city": city.strip()[:40], "temperature": 21, "condition": "sunny"})


TOOLS = [calculator, get_weather]


# ---------------------------------------------------------------------------------------- program
@rl.function
def agent(s, question: str, max_steps: int, max_tokens: int):
    """Returns (the final answer or None, the transcript as (role, text) pairs)."""
    s += rl.system(rl.tools_prompt(TOOLS))
    s += rl.user(question)
    transcript = [("user", question)]
    for step in range(max_steps):
        s += rl.assistant(rl.gen(f"reply_{step}", tools=TOOLS, max_tokens=max_tokens))
        calls = s.tool_calls(f"reply_{step}")  # waits for this generation: the program branches on it
        if not calls:
            answer = s[f"reply_{step}"]
            transcript.append(("assistant", answer))
            return answer, transcript  # no tool call: the reply is the answer
        for call in calls:
            transcript.append(("call", f"{call.name}({call.arguments_json})"))
            result = rl.run_tool_call(call, TOOLS)
            transcript.append(("tool", result))
            s += rl.tool_response(result)
    return None, transcript


def main() -> None:
    parser = make_parser(__doc__, max_tokens=64)  # a call with two 4-digit numbers is about 40 tokens
    parser.add_argument("--question", action="append", help="a question to ask (repeatable)")
    parser.add_argument("--max-steps", type=int, default=3, help="assistant turns per question, at most")
    args = parser.parse_args()
    questions = args.question or QUESTIONS
    with backend_from_args(args) as backend:
        states = agent.run_batch(
            [{"question": q, "max_steps": args.max_steps, "max_tokens": args.max_tokens} for q in questions],
            temperature=0,
        )
        for state in states:
            answer, transcript = state.ret_value
            for role, text in transcript:
                print(f"{role:>9}: {text}")
            print(f"answer: {answer!r}" if answer is not None else f"no answer after {args.max_steps} steps")
            print()
        print_cache_hit_rate(backend)


if __name__ == "__main__":
    main()
