"""The README's commands stay true: CI runs its test command, and the main job runs."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    return [block.strip() for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S)]


def test_ci_runs_the_readme_test_command():
    commands = readme_commands()
    test_cmd = next(c for c in commands if "pytest" in c)
    ci = (ROOT / ".ci" / "run").read_text()
    assert test_cmd in ci.splitlines(), "the README's test command must appear verbatim in .ci/run"


def test_readme_main_command_is_the_demo():
    main_cmd = readme_commands()[0]
    assert main_cmd.endswith("HF_HUB_OFFLINE=1 .venv/bin/radixlm demo")


def test_demo_shows_right_answers_for_every_task_family_and_the_cache_hit_rate():
    """The main command on the trained demo model: each section's answer is the right one."""
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    proc = subprocess.run(
        [sys.executable, "-m", "radixlm.runtime.entrypoints.cli", "demo"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    sections = dict(re.findall(r"=== (.+?) =+\n(.*?)(?=\n=== |\ncache hit rate)", out, flags=re.S))
    assert list(sections) == [
        "multi-turn chat",
        "select",
        "3-way fork and join",
        "JSON-schema gen",
        "agent loop with a calculator tool",
        "Python completion",
    ]
    chat = sections["multi-turn chat"]
    assert "[assistant] '27 + 15 = 42.'" in chat and "[assistant] 'Your name is Ada.'" in chat
    labels = [line.split()[0] for line in sections["select"].strip().splitlines()]
    assert labels == ["positive", "negative", "positive"]
    fork = sections["3-way fork and join"]
    for expected in ("'Your name is Amara.'", "'58 + 37 = 95.'", "'40 - 73 = -33.'"):
        assert expected in fork
    assert '-> {"name": "Amara", "age": 29, "city": "Nairobi"}' in sections["JSON-schema gen"]
    agent = sections["agent loop with a calculator tool"]
    assert '{"name": "calculator", "arguments": {"expression": "482 * 37"}}' in agent
    assert "[tool] '17834'" in agent and "[assistant] '482 * 37 = 17834.'" in agent
    code = sections["Python completion"]
    assert code.startswith("class Queue:\n    ") and "def " in code  # an indented class body
    rate = float(re.search(r"cache hit rate: ([0-9.]+)%", out).group(1))
    assert rate > 30  # the chat's later turns, the fork's children and the select reuse prefixes


def _readme_programs() -> list[str]:
    text = (ROOT / "README.md").read_text()
    return [b for b in re.findall(r"```python\n(.*?)```", text, flags=re.S) if "@rl.function" in b]


def _run_program(tmp_path, program: str) -> str:
    script = tmp_path / "program.py"
    script.write_text(program)
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    proc = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def test_readme_dsl_tour_program_runs(tmp_path):
    tour = _readme_programs()[0]
    assert _run_program(tmp_path, tour).strip().splitlines()[-1].startswith("0.")  # the cache hit rate


def test_readme_constrained_output_program_runs(tmp_path):
    [program] = [p for p in _readme_programs() if "json_schema=" in p]
    out = _run_program(tmp_path, program)
    assert "name='Amara' age=29 city='Nairobi'" in out  # the validated pydantic model, printed


def test_readme_tool_calling_program_runs(tmp_path):
    [program] = [p for p in _readme_programs() if "tools=TOOLS" in p]
    out = _run_program(tmp_path, program)
    assert "arguments={'expression': '4321 * 987'}" in out  # the parsed call
    assert out.strip().endswith("-> 4321 * 987 = 4264827.")  # the answer from the tool's result


def test_offline_batch_example_answers_right():
    """The Engine example's chat-template prompts get the demo model's right answers, greedily,
    the same in both rounds; the second round finds each prompt in the radix cache."""
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples/offline_batch.py")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    expected = [
        "23 + 58 = 81.",
        "91 - 36 = 55.",
        "7 - 45 = -38.",
        "positive",
        "negative",
        '{"name": "Lena", "age": 34, "city": "Hamburg"}',
        "I am a small assistant model trained for the radixlm demo.",
        '<tool_call>{"name": "calculator", "arguments": {"expression": "1234 * 5678"}}</tool_call>',
    ]
    answers = [ast.literal_eval(a) for a in re.findall(r"^    -> (.*)$", out, re.M)]
    assert answers == expected * 2, out
    counts = [(int(p), int(c)) for p, c in re.findall(r"^\[(\d+) prompt / (\d+) cached\]", out, re.M)]
    assert all(0 < cached < prompt for prompt, cached in counts[len(expected) :]), counts  # round 2
    assert "cache hit rate" in out
