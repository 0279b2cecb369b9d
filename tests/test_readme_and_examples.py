"""The README's commands stay true: CI runs its test command, and the main job runs."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    return [block.strip() for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S)]


def test_ci_runs_the_readme_test_command():
    commands = readme_commands()
    test_cmd = next(c for c in commands if "pytest" in c)
    ci = (ROOT / ".ci" / "run").read_text()
    assert test_cmd in ci.splitlines(), "the README's test command must appear verbatim in .ci/run"


def test_readme_main_command_runs_the_offline_example():
    main_cmd = next(c for c in readme_commands() if "examples/" in c)
    assert "examples/offline_batch.py" in main_cmd


@pytest.mark.parametrize("script", ["examples/offline_batch.py"])
def test_example_runs(script):
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, str(ROOT / script), "--max-new-tokens", "8"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "cache hit rate" in proc.stdout
