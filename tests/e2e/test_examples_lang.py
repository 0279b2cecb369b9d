"""The DSL examples in examples/ run end to end as scripts on the trained demo model, against a
runtime they launch and against a running `radixlm serve --zmq-port`, and their answers are
right; the agent's tools are described as the demo model was trained, its calculator refuses
anything but arithmetic, and a bad tool call gets an error text back."""

from __future__ import annotations

import ast
import importlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from server_process import ServerProcess

import radixlm as rl
from radixlm.demo_model import demo_model_path
from radixlm.demo_model.tasks import CALCULATOR_TOOL, WEATHER_TOOL

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
RUN_TIMEOUT_S = 240
HIT_RATE = re.compile(r"^cache hit rate: (\d+(?:\.\d+)?)%", re.M)
ENV = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")


def run_example(script: str, *args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / script), *args],
        cwd=ROOT,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
    )
    assert proc.returncode == 0, (
        f"{script} exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    )
    rates = HIT_RATE.findall(proc.stdout)
    assert len(rates) == 1, proc.stdout
    # every example shares a prefix between its requests, so something must come from the cache
    assert 0 < float(rates[0]) <= 100, proc.stdout
    return proc


# ---------------------------------------------------------------------------------------- what each shows
# The examples run the trained demo model greedily, in the phrasings it was trained on, so
# their answers are checked for being right, not only for their shape.
def printed_messages(out: str) -> list[tuple[str, str]]:
    return [(role, ast.literal_eval(text)) for role, text in re.findall(r"^\s*(\w+): ('.*')$", out, re.M)]


def check_chat(out: str) -> None:
    messages = printed_messages(out)
    assert [role for role, _ in messages] == ["system"] + ["user", "assistant"] * 3, out
    replies = [text for role, text in messages if role == "assistant"]
    # the name comes back in the last turn: the model read the whole conversation
    assert replies == ["Nice to meet you, Grace Hopper!", "48 + 37 = 85.", "Your name is Grace Hopper."], out
    assert "turns: 3; last answer: 'Your name is Grace Hopper.'" in out


def check_select(out: str) -> None:
    labels = ["positive", "negative"]
    choices = ast.literal_eval(re.search(r"^choices made: (\[.*\])$", out, re.M).group(1))
    # the example's six reviews alternate, starting with a positive one
    assert choices == ["positive", "negative"] * 3, out
    assert "6 of 6 right" in out
    scores = re.findall(r"scores: positive=(-?\d+\.\d+), negative=(-?\d+\.\d+)$", out, re.M)
    assert len(scores) == 6, out
    for choice, row in zip(choices, scores):  # greedy select: the chosen label has the best score
        values = [float(v) for v in row]
        assert values[labels.index(choice)] == max(values), (choice, row)


def check_tree(out: str, branches: int = 3, reviewers: int = 2) -> None:
    thoughts = re.findall(r"── branch \d+(?: \(chosen\))?: ('.*')$", out, re.M)
    # greedy (--temperature 0): each branch's first step of 47 + 38 - 29 is right
    steps = ["47 + 38 = 85.", "47 - 29 = 18.", "38 - 29 = 9."][:branches]
    assert [ast.literal_eval(t) for t in thoughts] == steps, out
    assert out.count("(chosen)") == 1, out
    verdicts = re.findall(r"reviewer \d+: '.*' -> (\w+)$", out, re.M)
    assert verdicts == ["confirms"] * (branches * reviewers), out  # every check works the step backwards
    assert re.search(r"^answer: '\d+ [-+] \d+ = 56\.' \(right\)$", out, re.M), out


def check_react(out: str, max_steps: int) -> None:
    assert 2 <= max_steps  # a call, then the answer
    lines = [(role, text) for role, text in re.findall(r"^\s*(user|assistant|call|tool): (.*)$", out, re.M)]
    assert lines == [
        ("user", "Use the calculator: what is 1234 * 5678?"),
        ("call", 'calculator({"expression": "1234 * 5678"})'),  # the reply, read as a call by the DSL
        ("tool", "7006652"),  # the example's ast calculator ran the call
        ("assistant", "1234 * 5678 = 7006652."),
        ("user", "What is the weather in Lisbon?"),
        ("call", 'get_weather({"city": "Lisbon"})'),
        ("tool", '{"city": "Lisbon", "temperature": 21, "condition": "sunny"}'),  # the fixed, fake report
        ("assistant", "It is 21 degrees and sunny in Lisbon."),
    ], out
    answers = re.findall(r"^answer: (.*)$", out, re.M)
    assert answers == ["'1234 * 5678 = 7006652.'", "'It is 21 degrees and sunny in Lisbon.'"], out


def check_batch(out: str, err: str, num: int) -> None:
    match = re.search(
        r"^(\d+) programs \((\d+) failed\), (\d+) tokens in [\d.]+s: [\d.]+ programs/s, "
        r"[\d.]+ tokens/s$",
        out,
        re.M,
    )
    assert match, out
    assert int(match.group(1)) == num and int(match.group(2)) == 0 and int(match.group(3)) > 0, out
    assert f"{num} of {num} answers right" in out  # every sum and difference, checked by Python
    assert f"{num}/{num}" in err, err[-2000:]  # the tqdm progress bar, on stderr


def check_streaming(out: str) -> None:
    sync = re.search(r"^\[sync: (\d+) chunks; answer has (\d+) characters\]$", out, re.M)
    assert sync and int(sync.group(1)) >= 1, out
    assert "<|im_start|>assistant" in out  # text_iter() streams the whole text, role markers included
    assert (
        "<|im_start|>assistant\nI can do small sums, judge reviews, extract facts as JSON and use tools."
        in out
    )
    counts = ast.literal_eval(re.search(r"^\[async: (\{.*\}) chunks per stream\]$", out, re.M).group(1))
    assert set(counts) == {"sum", "intro"} and all(n >= 1 for n in counts.values()), counts
    for name in counts:
        assert len(re.findall(rf"^\[{name}\] ", out, re.M)) == counts[name], out
    answers = ast.literal_eval(re.search(r"^answers: (\{.*\})$", out, re.M).group(1))
    assert answers == {
        "sum": "64 + 29 = 93.",
        "intro": "I am a small assistant model trained for the radixlm demo.",
    }, answers
    for name, answer in answers.items():  # the chunks streamed add up to the answer
        chunks = [ast.literal_eval(c) for c in re.findall(rf"^\[{name}\] (.*)$", out, re.M)]
        assert "".join(chunks) == answer, (name, chunks)


# ---------------------------------------------------------------------------------------- launched runtime
def test_chat_multi_turn():
    check_chat(run_example("chat_multi_turn.py").stdout)


def test_few_shot_select():
    check_select(run_example("few_shot_select.py").stdout)


def test_tree_of_thought():
    check_tree(run_example("tree_of_thought.py", "--temperature", "0").stdout)


def test_tree_of_thought_samples():
    """Its default samples the branches' steps: sensible steps still, and a finished answer."""
    out = run_example("tree_of_thought.py", "--branches", "2", "--reviewers", "3").stdout
    assert len(re.findall(r"── branch \d+", out)) == 2 and out.count("(chosen)") == 1, out
    assert len(re.findall(r"reviewer \d+: '.*' -> (?:confirms|disagrees)$", out, re.M)) == 6, out
    assert re.search(r"^answer: ", out, re.M), out


def test_react_agent():
    check_react(run_example("react_agent.py", "--max-steps", "2").stdout, 2)


def test_run_batch_progress():
    proc = run_example("run_batch_progress.py", "--num", "32")
    check_batch(proc.stdout, proc.stderr, 32)


def test_streaming():
    check_streaming(run_example("streaming.py").stdout)


# ---------------------------------------------------------------------------------------- --endpoint
def test_examples_against_a_running_server():
    """Examples connect to one `radixlm serve` (ZeroMQ, and HTTP with the openai client); it
    outlives them and still stops cleanly."""
    server = ServerProcess(demo_model_path()).start()
    address = f"tcp://127.0.0.1:{server.zmq_port}"
    try:
        check_react(run_example("react_agent.py", "--endpoint", address, "--max-steps", "2").stdout, 2)
        check_streaming(run_example("streaming.py", "--endpoint", address).stdout)
        for extra in ([], ["--stream"]):  # the official openai client's tool calling, whole and streamed
            out = run_example("openai_tools.py", "--base-url", f"{server.url}/v1", *extra).stdout
            assert '[assistant] calls calculator({"expression": "1234 * 5678"})\n[tool] 7006652' in out
            assert "[assistant] 1234 * 5678 = 7006652." in out
            assert '[assistant] calls get_weather({"city": "Lisbon"})' in out
            assert "sunny in Lisbon." in out
        assert server.proc.poll() is None, (
            "an example with --endpoint stopped the server:\n" + server.output()
        )
    finally:
        rc = server.stop()
    assert rc == 0, server.output()


# ---------------------------------------------------------------------------------------- the ReAct tools
@pytest.fixture(scope="module")
def react_agent():
    sys.path.insert(0, str(EXAMPLES))  # the examples import their helper as a sibling module
    try:
        yield importlib.import_module("react_agent")
    finally:
        sys.path.remove(str(EXAMPLES))


@pytest.mark.parametrize(
    "expression, value",
    [
        ("2+3", "5"),
        ("2 * (3 + 4) - 1", "13"),
        ("7 // 2", "3"),
        ("7 % 4", "3"),
        ("2 ** 10", "1024"),
        ("-3 + +1", "-2"),
        ("1 / 4", "0.25"),
        ("pi * 3 ** 2", "28.27433388"),
        ("1_000 * 2", "2000"),
    ],
)
def test_calculator_does_arithmetic(react_agent, expression, value):
    assert react_agent.calculator(expression) == value


@pytest.mark.parametrize(
    "expression",
    [
        "__import__('os').system('true')",
        "open('/etc/passwd')",
        "(1).__class__",
        "x",
        "[1, 2]",
        "True + 1",
        "'a' * 3",
        "lambda: 1",
        "1 if 1 else 2",
        "2 < 3",
        "1 << 1000",
        "1 / 0",
        "5 % 0",
        "0 ** -1",
        "9 ** 9 ** 9",
        "10 ** 101",
        "10.0 ** 400",
        "1e999",
        "(-1) ** 0.5",
        "(" * 150 + "1" + ")" * 150,
        "1 +",
        "",
        "\x00",
    ],
)
def test_calculator_refuses_everything_else(react_agent, expression):
    with pytest.raises(ValueError):  # refused, not computed: "9 ** 9 ** 9" would never return
        react_agent.calculator(expression)


def test_agent_tools_are_described_as_the_demo_model_was_trained(react_agent):
    """The functions' signatures, hints and docstrings give exactly the tool text of the
    demo model's training data, key order included."""
    specs = [json.dumps(rl.tool_spec(tool)) for tool in react_agent.TOOLS]
    assert specs == [json.dumps(CALCULATOR_TOOL), json.dumps(WEATHER_TOOL)]


def test_agent_tool_calls_and_their_errors(react_agent):
    def run(name, arguments):
        return rl.run_tool_call(rl.ToolCall(name, arguments, json.dumps(arguments)), react_agent.TOOLS)

    assert run("calculator", {"expression": "6*7"}) == "42"
    weather = json.loads(run("get_weather", {"city": "Lisbon"}))
    assert weather == {"city": "Lisbon", "temperature": 21, "condition": "sunny"}  # fixed and fake
    # what goes wrong comes back as the result, for the model to read
    assert run("calculator", {"expression": "1/0"}) == "error: division by zero"
    assert run("calculator", {"expression": "__import__('os')"}).startswith("error: unsupported syntax")
    assert run("calculator", {"expr": "1"}) == (
        "error: calculator: missing argument 'expression'; unexpected argument 'expr'"
    )
    assert run("calculator", {"expression": 7}).startswith(
        "error: calculator: argument 'expression' is invalid"
    )
    assert run("search", {"q": "x"}) == "error: no tool named 'search'; the tools are calculator, get_weather"
    assert len(run("a" * 10_000, {})) < 200


def test_agent_reads_calls_out_of_a_reply(react_agent):
    """What the demo model writes, read by the DSL as the agent reads it."""
    offered = rl.gen("reply", tools=react_agent.TOOLS).tools
    call = '<tool_call>{"name": "calculator", "arguments": {"expression": "6 * 7"}}</tool_call>'
    reply = offered.reply(call)
    assert reply == call and reply.content == ""
    assert [(c.name, c.arguments) for c in reply.tool_calls] == [("calculator", {"expression": "6 * 7"})]
    assert rl.run_tool_call(reply.tool_calls[0], react_agent.TOOLS) == "42"
    for text in [
        "6 * 7 = 42.",
        "<tool_call>{not json}</tool_call>",
        '<tool_call>["calculator"]</tool_call>',
        "",
    ]:
        assert offered.reply(text).tool_calls == [] and offered.reply(text).content == text, text
