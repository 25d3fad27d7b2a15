"""W&B tracking, read back from the offline run files with wandb's own protobuf records; the report; the live view."""
import json
import re
import math
import socket
import subprocess
import sys
import time

import pytest
from optuna.trial import TrialState
from wandb_records import offline_runs

from conftest import NanFirstSpace

import dynsearch
from dynsearch.recipe import load_recipe
from dynsearch.run.front import hypervolume_history
from dynsearch.run.study import open_study
from dynsearch.tracking import FRONT_COLUMNS, SearchTracking, TrialTracker, Tracking

FAKE_API_KEY = "5ec12e7" * 5 + "5ec12"  # 40 characters that must never reach a file


def _closed_loopback_url() -> str:
    """A loopback URL nothing listens on (the port was free a moment ago)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.fixture
def unreachable_wandb(monkeypatch):
    """Logged in (a fake key) to a W&B server that does not answer."""
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_API_KEY", FAKE_API_KEY)
    monkeypatch.setenv("WANDB_BASE_URL", _closed_loopback_url())


@pytest.fixture
def logged_out(monkeypatch, tmp_path):
    for name in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE"):
        monkeypatch.delenv(name, raising=False)
    netrc = tmp_path / "netrc"
    netrc.write_text("")
    monkeypatch.setenv("NETRC", str(netrc))


def test_each_epoch_reports_its_own_validation_metrics(digits):
    """The W&B history takes the per-epoch reports: they must not lag an epoch behind."""
    from conftest import exits_config
    from dynsearch.training.trial import evaluate, train_model

    config = exits_config()
    config["train"]["epochs"] = 2
    reports = []
    model = train_model(config, digits, report=reports.append)
    final = evaluate(model, digits)
    assert [r["epoch"] for r in reports] == [0, 1]
    assert all(math.isfinite(r["accuracy"]) and math.isfinite(r["macs"]) for r in reports)
    assert reports[-1]["accuracy"] == pytest.approx(final["accuracy"], abs=1e-6)
    assert reports[-1]["macs"] == pytest.approx(final["macs"], rel=1e-6)


def test_not_logged_in_goes_offline_with_a_one_line_notice(tmp_path, logged_out, capfd):
    recipe = load_recipe(None).with_overrides(wandb={"project": "p-test"})
    tracking = SearchTracking(recipe, tmp_path)
    assert tracking.trials.mode == "offline" and tracking.trials.group == tmp_path.name
    tracking.finish([], None, {"COMPLETE": 0})
    notices = [line for line in capfd.readouterr().err.splitlines() if "W&B" in line]
    assert len(notices) == 1 and "not logged in" in notices[0] and "offline" in notices[0]
    [(_, run)] = offline_runs(tmp_path)
    assert run["run"]["project"] == "p-test" and run["run"]["job_type"] == "search"
    assert run["config"]["name"] == recipe.name and run["exit_code"] == 0


def test_logged_in_reads_the_netrc_entry_of_the_servers_host(tmp_path, logged_out, monkeypatch):
    """The .netrc entry ``wandb login`` writes (machine = host of the base URL, key as password), at $NETRC."""
    from dynsearch.tracking import logged_in

    netrc = tmp_path / "netrc"
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:8123")
    assert not logged_in()  # the empty file of the fixture
    netrc.write_text(f"machine api.wandb.ai\n  login user\n  password {FAKE_API_KEY}\n")
    assert not logged_in()  # another server's key
    netrc.write_text(f"machine 127.0.0.1:8123\n  login user\n  password {FAKE_API_KEY}\n")
    assert logged_in()
    monkeypatch.delenv("WANDB_BASE_URL")
    assert not logged_in()  # W&B's default server has no entry
    netrc.write_text("machine api.wandb.ai login user password\n")  # a key-less, unparsable entry
    assert not logged_in()
    monkeypatch.setenv("NETRC", str(tmp_path / "missing"))
    assert not logged_in()


def test_off_logs_nothing(tmp_path, logged_out, capfd):
    tracking = SearchTracking(load_recipe(None).with_overrides(wandb={"mode": "off"}), tmp_path)
    assert tracking.trials is None
    tracking.finish([], None, {})
    TrialTracker(tracking.trials, {"trial": 0}).finish({"accuracy": 1.0})
    assert not (tmp_path / "wandb").exists() and "W&B" not in capfd.readouterr().err


def test_a_trial_whose_online_start_fails_logs_offline(tmp_path, unreachable_wandb):
    tracking = Tracking("online", "p-test", "g", str(tmp_path), init_timeout_s=2)
    started = time.monotonic()
    tracker = TrialTracker(tracking, {"trial": 7, "exits": {"threshold": 0.9}})
    assert time.monotonic() - started < 30  # bounded by init_timeout_s, not W&B's default 90 s
    tracker.finish({"accuracy": 0.5, "macs": 10.0, "stats": {"exit_histogram": [1.0]}})
    assert not list((tmp_path / "wandb").glob("run-*"))  # the aborted online attempt is removed
    [(_, run)] = offline_runs(tmp_path)
    assert run["run"]["name"] == "trial-7" and run["config"]["exits"] == {"threshold": 0.9}
    assert run["summary"]["accuracy"] == 0.5 and run["summary"]["stats/exit_histogram"] == [1.0]


@pytest.mark.slow
def test_search_tracks_every_trial_and_the_front_in_offline_wandb_files(tmp_path, tiny_recipe, unreachable_wandb,
                                                                         capfd):
    from dynsearch.spaces import register_space

    register_space("nan-first", NanFirstSpace)
    recipe = load_recipe(tiny_recipe).with_overrides(
        space="nan-first", trials=2, epochs=2, wandb={"project": "dynsearch-test", "init_timeout_s": 3})
    result = dynsearch.search(recipe, out=tmp_path / "run", progress=True)
    run_dir = result.run_dir
    err = capfd.readouterr().err
    notices = [line for line in err.splitlines() if "W&B" in line]
    assert len(notices) == 1 and "did not answer within 3 s" in notices[0] and "offline" in notices[0]
    assert "front (accuracy, macs): " in err  # the live view's front so far
    # Each COMPLETE line says where the trial's seconds went.
    complete = [line for line in err.splitlines() if " COMPLETE val acc " in line]
    assert len(complete) == 2 and all(re.search(r"\d s: setup [\d.]+, training [\d.]+, evaluation [\d.]+, sweep [\d.]+", line)
                                      for line in complete), complete

    study = {t.number: t for t in open_study(run_dir).get_trials()}
    assert study[0].state == TrialState.FAIL  # and replaced: 2 COMPLETE wanted
    assert [t.state for n, t in study.items() if n] == [TrialState.COMPLETE] * 2
    runs = {run["run"]["name"]: run for _, run in offline_runs(run_dir)}
    assert set(runs) == {"search"} | {f"trial-{n}" for n in study}
    for number, trial in study.items():
        run = runs[f"trial-{number}"]
        assert run["run"]["group"] == "run" and run["run"]["project"] == "dynsearch-test"
        config = json.loads((run_dir / "trials" / str(number) / "config.json").read_text())
        logged_config = {k: v for k, v in run["config"].items() if k != "_wandb"}
        if trial.state == TrialState.FAIL:
            assert run["summary"]["status"] == "FAIL" and "NonFiniteError" in run["summary"]["fail_reason"]
            assert run["exit_code"] == 1
            assert logged_config["exits"]["loss_weight"] is None  # W&B stores the NaN as null
            continue
        assert logged_config == config
        metrics = json.loads((run_dir / "trials" / str(number) / "metrics.json").read_text())
        summary = run["summary"]
        assert summary["status"] == "COMPLETE" and run["exit_code"] == 0
        assert [summary["accuracy"], summary["macs"]] == trial.values == [metrics["accuracy"], metrics["macs"]]
        assert summary["stats/exit_histogram"] == metrics["stats"]["exit_histogram"]
        # The trial's time split, as metrics.json records it: its parts add up to within its whole.
        parts = {k: summary[f"seconds/{k}"] for k in ("setup", "training", "evaluation", "sweep")}
        assert parts == {k: metrics["seconds"][k] for k in parts} and all(v >= 0 for v in parts.values())
        rounding = 0.0005 * len(metrics["seconds"])  # each part is recorded to the millisecond
        assert sum(metrics["seconds"].values()) <= metrics["train_seconds"] + rounding
        epochs = [row for row in run["history"] if "val/accuracy" in row]
        assert [row["epoch"] for row in epochs] == [0, 1]
        assert epochs[-1]["val/accuracy"] == pytest.approx(metrics["accuracy"], abs=1e-6)

    summary_run = runs["search"]
    assert summary_run["run"]["job_type"] == "search" and summary_run["config"]["space"] == "nan-first"
    [logged] = [row for row in summary_run["history"] if "pareto/path" in row]
    files = next(folder for folder, run in offline_runs(run_dir) if run["run"]["name"] == "search") / "files"
    table = json.loads((files / logged["pareto/path"]).read_text())
    front = json.loads((run_dir / "pareto.json").read_text())
    assert table["columns"] == FRONT_COLUMNS
    expected = [[p["trial"], p["accuracy"], p["test_accuracy"], p["macs"]] for p in front]
    assert [row[:4] for row in table["data"]] == expected
    assert logged["pareto_plot/_type"] == "image-file"
    # Every trial with its state and the epochs it trained; the hypervolume-vs-wall-clock curve.
    trials_table = json.loads((files / logged["trials/path"]).read_text())
    assert trials_table["columns"][:3] == ["trial", "state", "epochs_trained"]
    assert [row[:3] for row in trials_table["data"]] == [[n, t.state.name, 2 if t.state == TrialState.COMPLETE else None]
                                                         for n, t in study.items()]  # a FAIL trial's epochs: unknown
    curve = json.loads((files / logged["hypervolume_table/path"]).read_text())
    history = hypervolume_history(run_dir)
    assert curve["columns"] == ["seconds", "hypervolume", "trial"] and len(curve["data"]) == 2
    assert [row[1] for row in curve["data"]] == history["hypervolume"] and history["hypervolume"][-1] > 0
    assert (files / logged["pareto_plot/path"]).read_bytes() == (run_dir / "pareto.png").read_bytes()

    for path in run_dir.rglob("*"):  # the API key reached no file
        if path.is_file() and not path.is_symlink():
            assert FAKE_API_KEY.encode() not in path.read_bytes(), path

    # The report the search wrote, then `dynsearch report` on the same run directory.
    page = (run_dir / "pareto.html").read_text()
    assert "exit histogram" in page and "Failed trials" in page and "NonFiniteError" in page
    assert "each trial's own exits" in page and "exit stages" not in page  # the view the trials recorded, not a generic one
    before = (run_dir / "pareto.png").stat().st_mtime_ns
    proc = subprocess.run([sys.executable, "-m", "dynsearch.cli", "report", str(run_dir)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert str(run_dir / "pareto.png") in proc.stdout and str(run_dir / "pareto.html") in proc.stdout
    assert (run_dir / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (run_dir / "pareto.png").stat().st_mtime_ns > before


def test_report_of_a_missing_run_dir_is_a_usage_error(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "dynsearch.cli", "report", str(tmp_path / "none")], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0 and "not found" in proc.stderr


def test_report_draws_a_panel_for_each_statistic_present(tmp_path):
    """Gates, ponder steps and experts come later; their statistics already get panels."""
    from dynsearch.run.report import RunSummary, TrialPoint, draw_html, draw_png, stat_panels

    from dynsearch.dynamic import MECHANISMS

    def point(number, macs, accuracy, stats, front=True):
        views = {}  # as the trials of the mechanisms reporting these statistics record them
        for info in MECHANISMS.values():
            views.update(info.cls.stat_views_record(stats))
        metrics = {"accuracy": accuracy, "test_accuracy": accuracy, "macs": macs, "macs_full": 100.0,
                   "params": 10, "stats": stats, "stat_views": views}
        return TrialPoint(number, "COMPLETE", metrics, {"mechanism": "x"}, on_front=front)

    points = [
        point(0, 40.0, 0.90, {"exit_stages": [0, 2], "exit_histogram": [0.25, 0.75], "gate_rates": [1.0, 0.5]}),
        point(1, 100.0, 0.95, {"exit_stages": [1, 2], "exit_histogram": [0.5, 0.5],
                               "expert_load": {"e0": 0.7, "e1": 0.3}}),
        point(2, 120.0, 0.80, {"my_counts": [3, 4], "note": "text is not drawn"}, front=False),
    ]
    panels = {key: (labels, series) for key, _view, labels, series in stat_panels(points)}
    assert set(panels) == {"exit_histogram", "gate_rates", "expert_load", "my_counts"}
    labels, series = panels["exit_histogram"]
    assert labels == [0, 1, 2] and series == {0: {0: 0.25, 2: 0.75}, 1: {1: 0.5, 2: 0.5}}
    assert panels["expert_load"] == (["e0", "e1"], {1: {"e0": 0.7, "e1": 0.3}})

    run = RunSummary(tmp_path, ["accuracy", "macs"], points + [TrialPoint(3, "FAIL", fail_reason="boom")])
    draw_png(run, tmp_path / "p.png")
    draw_html(run, tmp_path / "p.html")
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (tmp_path / "p.html").read_text()
    for title in ("exit histogram", "gate execution rate per block", "expert load", "trial 3: boom"):
        assert title in page
    assert "my counts" not in page  # only front trials are drawn in statistics panels
