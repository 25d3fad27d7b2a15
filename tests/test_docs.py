"""The documentation's code blocks, run as a user would copy them, and the generated recipe reference.

Every ``python`` and ``bash`` block of README.md and docs/ carries a marker on the line before it
(docs/development.md, "Code blocks in the docs"): ``runnable`` blocks run alone in a fresh folder;
the README's ``runnable: tour`` blocks run in order in one folder, then every ``runnable:
after-tour`` block in that folder. Sizes are made smaller (``--trials 3``, ``--epochs 1``: the same
commands on a smaller budget); a block passes when it exits 0, and a block that prints prints
something. Blocks that run a search are ``slow``.
"""
from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
FENCE = re.compile(r"^(?:<!--\s*(?P<marker>[^>]*?)\s*-->\n)?```(?P<lang>[\w-]*)[^\n]*\n(?P<code>.*?)^```\s*$",
                   re.S | re.M)
MARKERS = ("runnable", "runnable: tour", "runnable: after-tour")
# The same commands on a smaller budget: tiny searches, short benches.
SMALLER = [(re.compile(r"--trials \d+"), "--trials 3"), (re.compile(r"--epochs \d+"), "--epochs 1"),
           (re.compile(r"\btrials=\d+"), "trials=3"), (re.compile(r"\bepochs=\d+"), "epochs=1"),
           (re.compile(r"--inputs \d+"), "--inputs 5")]
SEARCHES = re.compile(r"dynsearch search|dynsearch\.search\(|dynsearch\.export\(|dynsearch export")


@dataclass(frozen=True)
class Block:
    page: str
    line: int
    lang: str
    marker: str | None
    code: str

    @property
    def name(self) -> str:
        return f"{self.page}:{self.line}"

    def smaller(self) -> str:
        code = self.code
        for pattern, replacement in SMALLER:
            code = pattern.sub(replacement, code)
        return code


def blocks(page: Path) -> list[Block]:
    text = page.read_text(encoding="utf-8")
    found = []
    for match in FENCE.finditer(text):
        marker = match["marker"]
        if marker is not None and marker.startswith("--8<--"):
            marker = None  # a snippet section mark, not a test marker
        found.append(Block(str(page.relative_to(ROOT)), text.count("\n", 0, match.start()) + 1, match["lang"],
                           marker, match["code"]))
    return found


ALL = [b for page in PAGES for b in blocks(page)]
CODE = [b for b in ALL if b.lang in ("python", "bash")]
STANDALONE = [b for b in CODE if b.marker == "runnable"]
TOUR = [b for b in CODE if b.marker == "runnable: tour"]
AFTER_TOUR = [b for b in CODE if b.marker == "runnable: after-tour"]


def run_block(block: Block, cwd: Path) -> str:
    code = block.smaller()
    command = [sys.executable, "-c", code] if block.lang == "python" else ["bash", "-euo", "pipefail", "-c", code]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}  # this venv's dynsearch
    proc = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, f"{block.name} failed ({proc.returncode}):\n{code}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    prints = ("print(" in code) if block.lang == "python" else bool(re.search(r"^(ls|dynsearch (pareto|train))\b", code, re.M))
    if prints:
        assert proc.stdout.strip(), f"{block.name} printed nothing:\n{code}\n{proc.stderr[-2000:]}"
    return proc.stdout


def test_every_code_block_says_whether_and_how_it_is_run():
    unmarked = [b.name for b in CODE if b.marker is None]
    assert not unmarked, f"python/bash blocks without a marker (docs/development.md lists them): {unmarked}"
    unknown = [f"{b.name}: {b.marker}" for b in CODE if b.marker not in MARKERS
               and not b.marker.startswith(("tested: ", "not-run: "))]
    assert not unknown, f"unknown markers: {unknown}"
    for block in CODE:  # a block tested elsewhere names a test (or CI script) that exists
        if block.marker.startswith("tested: "):
            test = block.marker.split()[1]
            assert (ROOT / test).is_file(), f"{block.name} names {test}, which does not exist"
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    [readme_tests] = [b.code.strip() for b in CODE if b.marker.startswith("tested: .ci/run")]
    assert readme_tests in ci, "the README's test command is the line .ci/run runs"
    assert len(TOUR) >= 6 and all(b.page == "README.md" for b in TOUR), "the README's tour has its six steps"


def test_the_readme_is_a_short_front_door_and_no_page_speaks_of_its_authors():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 300 and "## Contents" in readme
    words = re.compile(r"this session|previous session|engineer|previous machine", re.I)
    for page in [*PAGES, ROOT / "benchmarks" / "RESULTS.md"]:
        found = words.search(page.read_text(encoding="utf-8"))
        assert not found, f"{page.relative_to(ROOT)} says {found[0]!r}"


def test_the_smaller_budget_changes_sizes_only():
    block = Block("x", 1, "bash", "runnable", "dynsearch search digits-exits --trials 8 --epochs 5 --out runs/tour\n")
    assert block.smaller() == "dynsearch search digits-exits --trials 3 --epochs 1 --out runs/tour\n"


@pytest.mark.parametrize("block", [pytest.param(b, id=b.name, marks=[pytest.mark.slow] if SEARCHES.search(b.code) else [])
                                   for b in STANDALONE])
def test_a_standalone_block_runs(block, tmp_path):
    run_block(block, tmp_path)


@pytest.mark.slow
def test_the_tour_then_the_pages_that_follow_it(tmp_path):
    """The README's tour in one folder, step by step, then every block written to follow it."""
    for block in TOUR + AFTER_TOUR:
        run_block(block, tmp_path)
    assert (tmp_path / "runs" / "tour" / "pareto.png").is_file()
    assert sorted(p.name for p in (tmp_path / "models").iterdir())


def _reference():
    spec = importlib.util.spec_from_file_location("generated_docs", ROOT / "docs" / "hooks" / "generated.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_recipe_reference_lists_every_field_of_the_schema():
    from pydantic import BaseModel

    from dynsearch.data import DATASETS
    from dynsearch.recipe import SEARCH_DIMENSIONS, Recipe
    from dynsearch.spaces import available_spaces

    page = _reference().render()

    def fields(model, prefix=""):
        for name, field in model.model_fields.items():
            yield f"{prefix}{name}", field
            inner = field.annotation
            listed = getattr(inner, "__origin__", None) is list
            inner = inner.__args__[0] if listed else inner
            if isinstance(inner, type) and issubclass(inner, BaseModel):
                yield from fields(inner, f"{prefix}{name}{'[]' if listed else ''}.")

    for path, field in fields(Recipe):
        row = next((line for line in page.splitlines() if line.startswith(f"| `{path}` |")), None)
        assert row is not None, f"recipe field {path} is missing from the reference"
        if field.description:
            assert field.description.split()[0] in row, f"{path}: its description is not on its row"
    for kind, dims in SEARCH_DIMENSIONS.items():
        assert all(f"`{d}`" in page for d in dims) and f"| `{kind}` |" in page
    assert all(f"| `{name}` |" in page for name in DATASETS)
    assert all(f"`{space}`" in page for space in available_spaces())
