"""The everyday loop through the CLI: a search's progress and next steps, ``trials``, the front tables
(mechanism column, never cut at 80 columns), did-you-mean, and the bench / export / load messages.

One real search (real Ray on loopback, Lightning, Optuna journal) whose first trial
fails (a NaN loss) runs once for the module through ``dynsearch search``.
"""
import contextlib
import io
import json

import pytest
import torch

from conftest import TINY_RECIPE, NanFirstSpace
from dynsearch import cli
from dynsearch.catalog import BUILTIN_MECHANISMS, builtin_placement, did_you_mean
from dynsearch.tables import plain_lines


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    from dynsearch.spaces import register_space
    from dynsearch.tuning import progress

    register_space("nanfirst", NanFirstSpace)
    base = tmp_path_factory.mktemp("everyday")
    recipe = base / "tiny.yaml"
    recipe.write_text(TINY_RECIPE.replace("space: exits", "space: nanfirst").replace("trials: 3", "trials: 2")
                      .replace("concurrent_trials: 2", "concurrent_trials: 1"))
    out, err = io.StringIO(), io.StringIO()
    every = progress.EPOCH_LINE_EVERY_S
    progress.EPOCH_LINE_EVERY_S = 0.0  # every epoch gets its line here
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = cli.main(["search", str(recipe), "--epochs", "2", "--out", str(base / "run")])
    finally:
        progress.EPOCH_LINE_EVERY_S = every
    assert rc == 0, err.getvalue()[-3000:]
    return base / "run", out.getvalue(), err.getvalue()


def _cli(capsys, *args):
    code = cli.main(list(map(str, args)))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_search_prints_epoch_lines_an_eta_and_next_steps(searched):
    run, out, err = searched
    assert "trial 1 epoch 1/2: val acc 0." in err and "trial 1 epoch 2/2: val acc 0." in err
    assert "s this epoch" in err and "ETA " in err  # the ETA once a trial has finished
    for command in ("pareto", "trials", "report", "export"):
        assert f"dynsearch {command} {run}" in out


def test_trials_lists_every_trial_with_its_state_and_the_failure_reason(searched, capsys):
    run = searched[0]
    code, out, _ = _cli(capsys, "trials", run)
    assert code == 0
    lines = out.splitlines()
    assert lines[1].split()[:6] == ["trial", "state", "mechanism", "backbone", "dynamic", "parts"]
    rows = {line.split()[0]: line for line in lines[2:]}
    assert rows["0"].split()[1:3] == ["FAIL", "exits"] and "NonFiniteError" in rows["0"]
    assert rows["1"].split()[1:3] == ["COMPLETE", "exits"] and "cnn 4-8-8 d1" in rows["1"]
    code, out, _ = _cli(capsys, "trials", run, "--json", "--state", "fail")
    [failed] = json.loads(out)
    assert failed["trial"] == 0 and failed["state"] == "FAIL" and failed["reason"].startswith("NonFiniteError")
    code, out, _ = _cli(capsys, "trials", run, "--json", "--state", "COMPLETE")
    complete = json.loads(out)
    assert [r["trial"] for r in complete] == [1, 2]
    assert all(set(r["objectives"]) == {"accuracy", "macs"} and r["seconds"] > 0 for r in complete)


def test_the_front_names_the_mechanism_and_is_not_cut_in_a_pipe(searched, capsys):
    run = searched[0]
    code, out, _ = _cli(capsys, "pareto", run, "--json")
    front = json.loads(out)
    assert front and all(item["mechanism"] == "exits" for item in front)
    code, out, _ = _cli(capsys, "pareto", run)  # stdout is not a terminal here
    header = out.splitlines()[1]
    assert header.split() == ["trial", "mechanism", "backbone", "val", "acc", "test", "acc", "macs", "of", "full",
                              "params", "dynamic", "parts"]
    assert len(header) > 80 and not any(ch in out for ch in "┃│━")  # plain lines, whole
    for item in front:
        assert str(item["trial"]) in out and f"{item['macs']:,.0f}" in out


def test_bench_of_a_failed_trial_or_a_run_directory_says_what_to_do(searched, capsys):
    run = searched[0]
    code, _, err = _cli(capsys, "bench", run / "trials" / "0")
    assert code == 2 and "this trial FAILED (NonFiniteError" in err and "--state COMPLETE" in err
    code, _, err = _cli(capsys, "bench", run)
    assert code == 2 and "is a run directory, not a model folder" in err and f"dynsearch bench {run}/trials/N" in err


def test_export_point_out_of_range_fails_first_and_load_checks_the_input_shape(searched, capsys, tmp_path):
    import dynsearch

    run = searched[0]
    code, _, err = _cli(capsys, "export", run, "--trials", "1", "--point", "99", "--out", tmp_path / "m")
    assert code == 2 and "--point 99: trial 1 has operating points 0-" in err
    assert not (tmp_path / "m").exists()
    [folder] = dynsearch.export(run, tmp_path / "models", trials=[1])
    model = dynsearch.load(folder)
    assert model(torch.zeros(2, 1, 8, 8)).logits.shape == (2, 10)
    with pytest.raises(ValueError, match=r"input of shape \[1, 8, 8\]: this model takes a batch of shape \[N, 1, 8, 8\]"):
        model(torch.zeros(1, 8, 8))


def test_speedup_line_names_its_direction():
    assert cli.speedup_line({"macs_speedup": 1.5, "realised_speedup": 1.25}) == \
        "dynamic vs static: 1.50x fewer MACs, timed 1.25x faster"
    assert cli.speedup_line({"macs_speedup": 0.8, "realised_speedup": 0.5}) == \
        "dynamic vs static: 1.25x more MACs, timed 2.00x slower"


def test_did_you_mean_for_commands_recipes_spaces_and_fields(tmp_path, capsys):
    with pytest.raises(SystemExit) as caught:
        cli.main(["serch"])
    assert caught.value.code == 2 and "did you mean 'search'?" in capsys.readouterr().err
    code, _, err = _cli(capsys, "search", "digits-exit")
    assert code == 2 and "did you mean 'digits-exits'?" in err
    for text, hint in (("space: exit\n", "did you mean 'exits'?"), ("trails: 3\n", "unknown field 'trails'; did you mean 'trials'?"),
                       ("sampler: {nmae: tpe}\n", "unknown field 'sampler.nmae'; did you mean 'name'?"),
                       ("wandb: {mode: off}\n", 'quote the value, e.g. mode: "off"')):
        path = tmp_path / "r.yaml"
        path.write_text("name: x\ndata: {name: digits}\n" + text)
        code, _, err = _cli(capsys, "search", path)
        assert code == 2 and hint in err and len(err.strip().splitlines()) == 1, err
    assert did_you_mean("zzzz", ["search", "pareto"]) == ""


def test_the_catalog_matches_the_registry():
    from dynsearch.dynamic import mechanisms

    registered = {name: info for name, info in mechanisms().items() if name in BUILTIN_MECHANISMS}
    assert set(registered) == set(BUILTIN_MECHANISMS)
    for name, info in registered.items():
        card = BUILTIN_MECHANISMS[name]
        assert (card.family, card.paper) == (info.family, info.paper), name
        for config in info.cls.tiny_configs():
            assert builtin_placement(config) == info.cls.placement(config), (name, config)


def test_plain_tables_keep_every_cell_whole():
    lines = plain_lines("T", ["a", "long"], [["1", "x" * 120], ["22", "y"]], right=[True, False])
    assert lines == ["T", " a  long", " 1  " + "x" * 120, "22  y"]


def test_reading_commands_import_neither_torch_nor_ray(searched):
    import subprocess
    import sys

    run = searched[0]
    for args in (["--help"], ["list"], ["pareto", str(run)], ["trials", str(run)],
                 ["export", str(run), "--trials", "1", "--point", "99", "--out", str(run / "never")]):
        code = ("import sys\nfrom dynsearch import cli\ntry:\n    cli.main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
                "heavy = sorted(m for m in ('torch', 'ray', 'lightning', 'pytorch_lightning') if m in sys.modules)\n"
                "print('HEAVY', heavy)")
        proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120)
        assert "HEAVY []" in proc.stdout, (args, proc.stdout[-500:], proc.stderr[-1000:])
