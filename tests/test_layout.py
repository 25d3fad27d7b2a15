"""The layout's own rules, checked on the source: one owner of the run directory's names, no
cross-module private imports, and an installed package with no top-level ``cli`` module.

(The layer contracts themselves are import-linter's, run by .ci/run: ``lint-imports``.)
"""
import ast
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from dynsearch.run import rundir

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "dynsearch"
RUN_DIR_NAMES = [rundir.RECIPE_FILE, rundir.STUDY_FILE, rundir.FRONT_FILE, rundir.REPORT_PNG, rundir.REPORT_HTML,
                 rundir.LOCK_FILE, rundir.CONFIG_FILE, rundir.WEIGHTS_FILE, rundir.METRICS_FILE,
                 rundir.PLACEMENT_FILE, rundir.POINTS_FILE, rundir.DAMAGED_JOURNAL_PREFIX]
RUN_DIR_FOLDERS = [rundir.TRIALS_DIR, rundir.RAY_DIR, rundir.WANDB_DIR, rundir.PREVIOUS_DIR]


def _code_strings(tree: ast.AST):
    """String constants of a module that are not docstrings (f-string parts included)."""
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                docstrings.add(id(first.value))
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            yield node


def test_only_rundir_spells_run_directory_names():
    owner = PACKAGE / "run" / "files.py"  # the names; rundir.py re-exports them
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path == owner:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        # A folder name ("ray", "trials") counts where it is joined onto a path: an operand of "/".
        joined = {id(side) for node in ast.walk(tree) if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div)
                  for side in (node.left, node.right)}
        for node in _code_strings(tree):
            if any(n in node.value for n in RUN_DIR_NAMES) or (node.value in RUN_DIR_FOLDERS and id(node) in joined):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.value!r}")
    assert not found, "run-directory names spelled outside run/files.py (import its constants):\n" + "\n".join(found)


def test_the_check_above_sees_a_spelled_name():
    tree = ast.parse('"""study.journal in a docstring is fine"""\npath = run / "study.journal"\n')
    assert [node.value for node in _code_strings(tree)] == ["study.journal"]
    assert RUN_DIR_FOLDERS and RUN_DIR_NAMES[1] == "study.journal"


def test_no_module_imports_another_modules_private_names():
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("dynsearch"):
                found += [f"{path.relative_to(ROOT)}:{node.lineno} {node.module}.{a.name}" for a in node.names
                          if a.name.startswith("_") and not a.name.startswith("__")]
    assert not found, "private names imported across modules:\n" + "\n".join(found)


@pytest.mark.slow
def test_the_wheel_ships_spaces_and_recipes_and_no_top_level_cli(tmp_path):
    """A non-editable install's content: the package with its spaces and recipes, and the command's
    entry point in dynsearch.cli (no module named ``cli`` at the top of site-packages)."""
    # Built from a copy: setuptools writes build/ into the source tree, and a stale one would leak in.
    source = tmp_path / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".git", ".venv", "build", "runs", "*.egg-info",
                                                                "__pycache__", ".pytest_cache", "wandb"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path), str(source)], check=True, capture_output=True, timeout=600)
    (wheel,) = tmp_path.glob("dynsearch-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert not [name for name in names if "/" not in name], "a top-level module in the wheel"
    assert {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")} == {"dynsearch"}
    assert "dynsearch/cli.py" in names and "dynsearch/search_spaces/exits.py" in names
    assert "dynsearch/recipes/digits-exits.yaml" in names
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "dynsearch = dynsearch.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()
