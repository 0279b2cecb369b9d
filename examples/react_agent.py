"""A tool-calling agent loop: the model is offered tools, writes a call, Python runs the tool
and appends its result, and the model goes on until it answers, for a bounded number of steps.

    python examples/react_agent.py                           # launches the trained demo model
    python examples/react_agent.py --question "Use the calculator: what is 4321 * 987?" --max-steps 4
    python examples/react_agent.py --model PATH              # any local Llama/Mistral/Qwen2/Qwen3 folder
    python examples/react_agent.py --endpoint tcp://127.0.0.1:30001
                                                             # a running `radixlm serve --zmq-port 30001`

The conversation follows the demo model's chat format (ChatML with tools, the Qwen2.5 / Hermes
convention): the system turn lists the tools as JSON (`tools_system_prompt`), the model calls
one by writing `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` as its whole
assistant turn, and the result comes back as a `tool` turn (`tool_response_turn`: the DSL has
no tool role, so the program appends the turn's text as the chat template renders it). The
program reads each reply as soon as it is generated to decide what to append next; a reply
with no tool call is the answer. Greedy (temperature=0).

Tools: calculator(expression), arithmetic parsed with `ast` and evaluated node by node, never
with `eval`; and get_weather(city), which returns one fixed, made-up report for every city
(this example never goes online). A bad call gets an error text back as its result.
"""

from __future__ import annotations

import ast
import json
import math
import operator
import re

from _backend import backend_from_args, make_parser, print_cache_hit_rate

import radixlm as rl
from radixlm.demo_model.chat_format import tool_response_turn, tools_system_prompt
from radixlm.demo_model.tasks import CALCULATOR_TOOL, WEATHER_TOOL

# the demo model's trained phrasings: a calculator question, a weather question
QUESTIONS = ["Use the calculator: what is 1234 * 5678?", "What is the weather in Lisbon?"]
TOOL_SPECS = [CALCULATOR_TOOL, WEATHER_TOOL]  # what the system turn offers (OpenAI-style function specs)
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
def calculator(expression: str) -> str:
    """Evaluate +, -, *, /, //, %, ** over numbers, pi and e; anything else is refused."""
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


def get_weather(city: str) -> str:
    """A stand-in for a weather service: the same made-up report for every city, as the JSON
    the demo model was trained to read."""
    return json.dumps({"city": city.strip()[:40], "temperature": 21, "condition": "sunny"})


TOOLS = {"calculator": (calculator, "expression"), "get_weather": (get_weather, "city")}  # name -> (fn, arg)
TOOL_CALL = re.compile(r"<tool_call>(.*?)</tool_call>", re.S)


def parse_tool_call(text: str) -> tuple[str, dict] | None:
    """(name, arguments) of the first well-formed <tool_call> in text; None when there is none."""
    match = TOOL_CALL.search(text)
    if not match:
        return None
    try:
        call = json.loads(match.group(1))
    except ValueError:
        return None
    if not isinstance(call, dict) or not isinstance(call.get("name"), str):
        return None
    arguments = call.get("arguments")
    return call["name"], arguments if isinstance(arguments, dict) else {}


def run_tool(name: str, arguments: dict) -> str:
    """The tool's result as text. A bad call gets an error text, which the model reads as the
    result, instead of an exception that would end the program."""
    if name not in TOOLS:
        return f"error: no tool named {name[:40]!r}; the tools are {', '.join(TOOLS)}"
    tool, parameter = TOOLS[name]
    argument = arguments.get(parameter)
    if not isinstance(argument, str):
        return f"error: {name} takes one string argument, {parameter!r}"
    try:
        return tool(argument)
    except ValueError as exc:
        return f"error: {exc}"


# ---------------------------------------------------------------------------------------- program
@rl.function
def agent(s, question: str, max_steps: int, max_tokens: int):
    """Returns (the final answer or None, the transcript as (role, text) pairs)."""
    s += rl.system(tools_system_prompt(TOOL_SPECS))
    s += rl.user(question)
    transcript = [("user", question)]
    for step in range(max_steps):
        s += rl.assistant(rl.gen(f"reply_{step}", max_tokens=max_tokens))
        reply = s[f"reply_{step}"]  # waits for this generation: the program branches on it
        transcript.append(("assistant", reply))
        call = parse_tool_call(reply)
        if call is None:
            return reply, transcript  # no tool call: the reply is the answer
        result = run_tool(*call)
        transcript.append(("tool", result))
        s += tool_response_turn(result)
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
