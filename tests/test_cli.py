import json
import subprocess
import sys

import pytest

from dynsearch import cli


def _run(*args):
    return subprocess.run([sys.executable, "-m", "dynsearch.cli", *args], capture_output=True, text=True, timeout=300)


def test_help_lists_the_commands():
    proc = _run("--help")
    assert proc.returncode == 0
    for command in ("train", "search", "pareto", "list"):
        assert command in proc.stdout


def test_usage_errors_are_one_line_with_exit_code_2():
    for args in (["search", "--trials", "zero"], ["search", "--trials", "0"], ["frobnicate"], ["pareto"]):
        proc = _run(*args)
        assert proc.returncode == 2, args
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert "Traceback" not in proc.stderr


def test_list_json_names_recipes_spaces_and_mechanisms(capsys):
    assert cli.main(["list", "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert "digits-exits" in listing["recipes"]
    assert "exits" in listing["spaces"]
    exits = next(m for m in listing["mechanisms"] if m["name"] == "exits")
    assert exits["family"] == "exits" and "BranchyNet" in exits["paper"]
    by_name = {m["name"]: m for m in listing["mechanisms"]}
    assert by_name["aig"]["family"] == "gates" and "ConvNet-AIG" in by_name["aig"]["paper"]
    assert by_name["skipnet"]["family"] == "gates" and "SkipNet" in by_name["skipnet"]["paper"]
    assert by_name["depth_adaptive"]["family"] == "exits" and "Elbayad" in by_name["depth_adaptive"]["paper"]
    assert {"digits-exit-policies", "digits-gates", "seq-exits"} <= set(listing["recipes"])
    assert {"exit_policies", "gates", "depth"} <= set(listing["spaces"])


def test_train_json_reports_measured_figures(tmp_path, capsys):
    out = tmp_path / "model"
    assert cli.main(["train", "--epochs", "2", "--json", "--out", str(out)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert {"test_accuracy", "macs", "macs_full", "params"} <= set(result)
    assert 0.5 < result["test_accuracy"] <= 1.0  # two epochs already learn digits
    assert 0 < result["macs"] <= result["macs_full"] + 6000  # heads that ran are counted too
    histogram = result["stats"]["exit_histogram"]
    assert result["stats"]["exit_stages"] == [0, 1, 2]
    assert sum(histogram) == pytest.approx(1.0)  # every test sample left somewhere
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["test_accuracy"] == result["test_accuracy"] and (out / "model.safetensors").is_file()
