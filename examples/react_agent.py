"""A ReAct agent: the model alternates Thought and Action lines, Python runs the action's
tool and appends the Observation, for a bounded number of steps.

    python examples/react_agent.py                           # launches the offline tiny model
    python examples/react_agent.py --question "What is 17 * 23?" --max-steps 6
    python examples/react_agent.py --model PATH              # any local Llama/Mistral/Qwen2/Qwen3 folder
    python examples/react_agent.py --endpoint tcp://127.0.0.1:30001
                                                             # a running `radixlm serve --zmq-port 30001`

Tools: calculator[expression] (arithmetic parsed with `ast`, never `eval`), lookup[word] (a
small glossary) and finish[answer]. Stop strings end each generation at the end of its
line, and the program reads the action as soon as it is generated to decide what to append
next. A model that writes no valid action (the random-weight tiny model never does) gets an
observation saying so, and the loop goes on until --max-steps.
"""

from __future__ import annotations

import ast
import math
import operator
import re

from _backend import backend_from_args, make_parser, print_cache_hit_rate

import radixlm as rl

QUESTION = "What is the area of a circle with a radius of 3 metres?"
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
GLOSSARY = {
    "pi": "pi is the ratio of a circle's circumference to its diameter, about 3.14159",
    "area": "the area of a circle is pi times the radius squared",
    "radix": "a radix tree is a trie that merges chains of single-child nodes",
    "metre": "the metre is the SI unit of length",
}


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


def lookup(word: str) -> str:
    entry = GLOSSARY.get(word.strip().lower())
    return entry if entry else f"no glossary entry for {word.strip()[:40]!r}"


TOOLS = {"calculator": calculator, "lookup": lookup}
ACTION = re.compile(r"^\s*(\w+)\[(.*)\]\s*\.?\s*$")


def parse_action(text: str) -> tuple[str, str] | None:
    """`calculator[2+3]` -> ("calculator", "2+3"); None for anything that is not such a call."""
    match = ACTION.match(text)
    return (match.group(1).lower(), match.group(2)) if match else None


def observe(action: str) -> str:
    parsed = parse_action(action)
    if parsed is None or parsed[0] not in TOOLS:
        return (
            f"invalid action {action.strip()[:60]!r}; write calculator[expression], lookup[word] "
            f"or finish[answer]"
        )
    name, argument = parsed
    try:
        return TOOLS[name](argument)
    except ValueError as exc:
        return f"{name} error: {exc}"


# ---------------------------------------------------------------------------------------- program
def few_shot() -> str:
    steps = [
        ("I need the glossary definition first.", "lookup[radix]"),
        ("A day has 24 hours of 3600 seconds each.", "calculator[24 * 3600]"),
        ("I have the answer.", "finish[86400]"),
    ]
    text = (
        "Answer the question with Thought, Action and Observation lines. Actions: calculator[expression], "
        "lookup[word], finish[answer].\n\nQuestion: How many seconds are there in a day?\n"
    )
    for thought, action in steps:
        text += f"Thought: {thought}\nAction: {action}\n"
        if not action.startswith("finish["):
            text += f"Observation: {observe(action)}\n"
    return text + "\n"


@rl.function
def react(s, question: str, max_steps: int, max_tokens: int):
    s += few_shot() + f"Question: {question}\n"
    with s.var_scope("trace"):
        for step in range(max_steps):
            s += "Thought:" + rl.gen(f"thought_{step}", max_tokens=max_tokens, stop="\n") + "\n"
            s += "Action:" + rl.gen(f"action_{step}", max_tokens=max_tokens, stop="\n") + "\n"
            action = s[f"action_{step}"]  # waits for this generation: the program branches on it
            parsed = parse_action(action)
            if parsed is not None and parsed[0] == "finish":
                return parsed[1].strip()
            s += f"Observation: {observe(action)}\n"
    return None


def main() -> None:
    parser = make_parser(__doc__)
    parser.add_argument("--question", default=QUESTION)
    parser.add_argument("--max-steps", type=int, default=3)
    args = parser.parse_args()
    with backend_from_args(args) as backend:
        state = react.run(
            question=args.question, max_steps=args.max_steps, max_tokens=args.max_tokens, temperature=0
        )
        print(f"Question: {args.question}")
        print(state["trace"], end="")
        answer = state.ret_value
        print(f"answer: {answer!r}" if answer is not None else f"no answer after {args.max_steps} steps")
        print_cache_hit_rate(backend)


if __name__ == "__main__":
    main()
