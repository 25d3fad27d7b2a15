"""The own-data example of the docs (docs/data.md), taken from the page itself and run as written
from a temporary folder outside the repository: a real search (Ray, Optuna, Lightning), export and
load. (The README's tour is run by test_docs.py.)"""
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

import dynsearch
from dynsearch.errors import UserError

PAGE = Path(__file__).resolve().parents[1] / "docs" / "data.md"


def _blocks(language):
    return re.findall(rf"```{language}\n(.*?)```", PAGE.read_text(encoding="utf-8"), re.S)


def _example():
    """The ``wine.py`` block and the command that runs it, exactly as the page shows them."""
    code = [block for block in _blocks("python") if block.startswith("# wine.py")]
    commands = [line.split("#")[0].strip() for block in _blocks("bash") for line in block.splitlines()
                if line.startswith("python wine.py")]
    assert len(code) == 1 and len(commands) == 1, "docs/data.md must hold one wine.py block and one command to run it"
    return code[0], shlex.split(commands[0])


@pytest.mark.slow
def test_own_data_example_runs_as_written_outside_the_repository(tmp_path):
    code, command = _example()
    (tmp_path / "wine.py").write_text(code)
    assert command[0] == "python"
    proc = subprocess.run([sys.executable, *command[1:]], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert re.search(r"exported trial-\d+: predicts [0-2], label 0", proc.stdout), proc.stdout

    run = tmp_path / "runs" / "wine"
    configs = [json.loads(p.read_text()) for p in sorted((run / "trials").glob("*/config.json"))]
    assert len(configs) >= 4
    for config in configs:  # the exits sit where the searcher put them, between the 4 user stages
        assert config["backbone"]["callable"] == "wine:wine_mlp"
        assert set(config["exits"]["stages"]) <= {0, 1, 2}
    assert len({tuple(c["exits"]["stages"]) for c in configs}) > 1

    model_dir = next((tmp_path / "models").iterdir())
    exported = json.loads((model_dir / "config.json").read_text())
    assert exported["backbone"]["module_path"] == str(tmp_path)  # the folder says how to rebuild it
    # load needs the module importable: moved away, a clear error; back in place, the model.
    (tmp_path / "wine.py").rename(tmp_path / "elsewhere.py")
    with pytest.raises(UserError, match="module 'wine' cannot be imported"):
        dynsearch.load(model_dir)
    (tmp_path / "elsewhere.py").rename(tmp_path / "wine.py")
    try:
        model = dynsearch.load(model_dir)
        assert model.stages[0][0].in_features == 13 and len(model.stages) == 4
    finally:
        sys.modules.pop("wine", None)
        if str(tmp_path) in sys.path:
            sys.path.remove(str(tmp_path))
