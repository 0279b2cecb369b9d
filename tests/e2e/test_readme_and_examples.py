"""The README's commands stay true: CI runs its test command, and the main job runs."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

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


def test_demo_runs_every_program_and_reports_the_cache_hit_rate():
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    proc = subprocess.run(
        [sys.executable, "-m", "radixlm.runtime.entrypoints.cli", "demo", "--max-tokens", "6"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    for section in ("multi-turn chat", "select", "3-way fork and join", "JSON-schema gen"):
        assert f"=== {section} " in out
    assert out.count("[assistant]") == 2 and "chose ' " in out and "idea 3:" in out
    rate = float(re.search(r"cache hit rate: ([0-9.]+)%", out).group(1))
    assert rate > 30  # the chat's second turn, the fork's children and the select reuse prefixes


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
    assert "name=" in out and "role=" in out  # the validated pydantic model, printed


@pytest.mark.parametrize("script", ["examples/offline_batch.py"])
def test_example_runs(script):
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    proc = subprocess.run(
        [sys.executable, str(ROOT / script), "--max-new-tokens", "8"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "cache hit rate" in proc.stdout
