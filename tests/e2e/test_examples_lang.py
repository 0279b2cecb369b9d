"""The DSL examples in examples/ run end to end as scripts, against a runtime they launch and
against a running `radixlm serve --zmq-port`; the ReAct agent's calculator refuses anything
but arithmetic."""

from __future__ import annotations

import ast
import importlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from server_process import ServerProcess

from radixlm.testing import default_model_path

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
def check_chat(out: str) -> None:
    roles = re.findall(r"^\s*(system|user|assistant): ", out, re.M)
    assert roles == ["system"] + ["user", "assistant"] * 3, out
    assert "turns: 3; last answer:" in out


def check_select(out: str) -> None:
    labels = ["positive", "negative", "neutral"]
    choices = ast.literal_eval(re.search(r"^choices made: (\[.*\])$", out, re.M).group(1))
    assert len(choices) == 6 and set(choices) <= set(labels), choices
    scores = re.findall(
        r"scores: positive=(-?\d+\.\d+), negative=(-?\d+\.\d+), neutral=(-?\d+\.\d+)$", out, re.M
    )
    assert len(scores) == 6, out
    for choice, row in zip(choices, scores):  # greedy select: the chosen label has the best score
        values = [float(v) for v in row]
        assert values[labels.index(choice)] == max(values), (choice, row)


def check_tree(out: str, branches: int = 3, reviewers: int = 2) -> None:
    assert len(re.findall(r"── branch \d+", out)) == branches, out
    assert out.count("(chosen)") == 1, out
    verdicts = re.findall(r"reviewer \d+: (\w+)$", out, re.M)
    assert len(verdicts) == branches * reviewers and set(verdicts) <= {"promising", "flawed"}, out
    assert re.search(r"^plan: ", out, re.M), out


def check_react(out: str, max_steps: int) -> None:
    thoughts = re.findall(r"^Thought:", out, re.M)
    actions = re.findall(r"^Action:", out, re.M)
    observations = re.findall(r"^Observation: ", out, re.M)
    assert 1 <= len(thoughts) == len(actions) <= max_steps, out
    assert len(observations) >= len(actions) - 1, out  # a finish action is the only one without one
    assert observations, out
    assert re.search(r"^(answer: |no answer after \d+ steps$)", out, re.M), out


def check_batch(out: str, err: str, num: int) -> None:
    match = re.search(
        r"^(\d+) programs \((\d+) failed\), (\d+) tokens in [\d.]+s: [\d.]+ programs/s, "
        r"[\d.]+ tokens/s$",
        out,
        re.M,
    )
    assert match, out
    assert int(match.group(1)) == num and int(match.group(2)) == 0 and int(match.group(3)) > 0, out
    assert f"{num}/{num}" in err, err[-2000:]  # the tqdm progress bar, on stderr


def check_streaming(out: str) -> None:
    sync = re.search(r"^\[sync: (\d+) chunks; answer has (\d+) characters\]$", out, re.M)
    assert sync and int(sync.group(1)) >= 1, out
    assert "<|im_start|>assistant" in out  # text_iter() streams the whole text, role markers included
    counts = ast.literal_eval(re.search(r"^\[async: (\{.*\}) chunks per stream\]$", out, re.M).group(1))
    assert set(counts) == {"tides", "bread"} and all(n >= 1 for n in counts.values()), counts
    for name in counts:
        assert len(re.findall(rf"^\[{name}\] ", out, re.M)) == counts[name], out


# ---------------------------------------------------------------------------------------- launched runtime
def test_chat_multi_turn():
    check_chat(run_example("chat_multi_turn.py", "--max-tokens", "12").stdout)


def test_few_shot_select():
    check_select(run_example("few_shot_select.py").stdout)


def test_tree_of_thought():
    check_tree(run_example("tree_of_thought.py", "--max-tokens", "8").stdout)


def test_react_agent():
    check_react(run_example("react_agent.py", "--max-steps", "2", "--max-tokens", "12").stdout, 2)


def test_run_batch_progress():
    proc = run_example("run_batch_progress.py", "--num", "32", "--max-tokens", "8")
    check_batch(proc.stdout, proc.stderr, 32)


def test_streaming():
    check_streaming(run_example("streaming.py", "--max-tokens", "12").stdout)


# ---------------------------------------------------------------------------------------- --endpoint
def test_examples_against_a_running_server():
    """Two examples connect to one `radixlm serve`; it outlives them and still stops cleanly."""
    server = ServerProcess(default_model_path()).start()
    address = f"tcp://127.0.0.1:{server.zmq_port}"
    try:
        check_react(
            run_example(
                "react_agent.py", "--endpoint", address, "--max-steps", "2", "--max-tokens", "8"
            ).stdout,
            2,
        )
        check_streaming(run_example("streaming.py", "--endpoint", address, "--max-tokens", "8").stdout)
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


def test_react_observations(react_agent):
    assert react_agent.parse_action(" calculator[2+3]") == ("calculator", "2+3")
    assert react_agent.parse_action("Finish[42].") == ("finish", "42")
    assert react_agent.observe("calculator[6*7]") == "42"
    assert react_agent.observe("lookup[ Pi ]").startswith("pi is the ratio")
    assert react_agent.observe("lookup[nothing]") == "no glossary entry for 'nothing'"
    assert react_agent.observe("calculator[1/0]") == "calculator error: division by zero"
    for garbage in ["", "calculator 2+3", "search[x]", "rehension()directory\u00e9[", "a" * 10_000]:
        observation = react_agent.observe(garbage)
        assert observation.startswith("invalid action") and len(observation) < 200, observation
