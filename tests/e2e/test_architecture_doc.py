"""ARCHITECTURE.md stays true: its layout table names every package of the tree and only
folders that exist, each module a row names exists in that row's folder, and every path the
document mentions is there."""

from __future__ import annotations

import re
from pathlib import Path

import radixlm

ROOT = Path(radixlm.__file__).resolve().parent  # the repo root is the package
DOC = ROOT / "ARCHITECTURE.md"
SKIP = {".venv", ".git", "build", "__pycache__", ".whl", ".gl", "results"}


def layout_rows() -> dict[str, str]:
    """The layout table: folder (as written, ending in /) -> the row's description."""
    text = DOC.read_text()
    section = text.split("## Layout", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        m = re.match(r"\|\s*`([^`]+/)`\s*\|(.*)\|\s*$", line)
        if m:
            rows[m.group(1)] = m.group(2)
    return rows


def packages() -> set[str]:
    """Every folder of the source tree that is a Python package, as 'runtime/scheduler/'."""
    found = set()
    for init in ROOT.rglob("__init__.py"):
        rel = init.parent.relative_to(ROOT)
        if (
            rel.parts
            and not SKIP & set(rel.parts)
            and rel.parts[0] != "tests"
            and not rel.name.endswith("egg-info")
        ):
            found.add(f"{rel.as_posix()}/")
    return found


def test_the_layout_names_every_package_and_only_folders_that_exist():
    rows = layout_rows()
    assert len(rows) > 10, "the layout table was not found"
    missing = packages() - set(rows)
    assert not missing, f"packages the layout table does not name: {sorted(missing)}"
    absent = [folder for folder in rows if not (ROOT / folder).is_dir()]
    assert not absent, f"the layout table names folders that do not exist: {absent}"


def test_every_module_a_layout_row_names_exists_in_its_folder():
    absent = []
    for folder, description in layout_rows().items():
        for name in re.findall(r"`([\w/]+\.py)`", description):
            if not ((ROOT / folder / name).exists() or (ROOT / name).exists()):
                absent.append(f"{folder}{name}")
    assert not absent, f"ARCHITECTURE.md names modules that do not exist: {absent}"


def test_every_path_the_document_mentions_exists():
    text = DOC.read_text()
    paths = set(re.findall(r"`((?:runtime|lang|client|tests|benchmarks|examples)/[\w./-]*)`", text))
    assert len(paths) > 20, sorted(paths)
    absent = sorted(p for p in paths if not (ROOT / p).exists())
    assert not absent, f"ARCHITECTURE.md mentions paths that do not exist: {absent}"
