"""A damaged study journal never becomes an unreadable study (issue #21).

One real tiny search (real Ray on loopback, Lightning, the Optuna journal) runs
once per module; each test copies its run directory, damages the journal the
way a crash, a full disk or a stray write would, and runs ``pareto``, ``export``
or a resumed ``search`` on it through the CLI: exit code 0 with one warning
line, or 2 with one error line, never a traceback, and no byte lost.
"""
import json
import shutil
from pathlib import Path

import pytest
from optuna.trial import TrialState

import dynsearch
from dynsearch import cli
from conftest import TINY_RECIPE
from dynsearch.errors import UserError
from dynsearch.run import journal
from dynsearch.run.rundir import RunDir
from dynsearch.run.study import open_existing, open_study

TORN_BYTES = 70  # what the issue cut off the journal's end


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished 3-trial search: its run directory, its recipe and its front's trial numbers."""
    base = tmp_path_factory.mktemp("journal")
    recipe = base / "tiny.yaml"
    recipe.write_text(TINY_RECIPE)
    result = dynsearch.search(recipe, out=base / "run")
    assert result.complete == 3
    return base / "run", recipe, sorted(item["trial"] for item in result.front)


@pytest.fixture
def run(finished, tmp_path):
    source, recipe, front = finished
    copy = tmp_path / "run"
    shutil.copytree(source, copy, ignore=shutil.ignore_patterns("ray", ".dynsearch.lock"))
    return copy, recipe, front


def _last_record_trial(path: Path) -> int:
    """The trial whose record is last in the journal (the one a torn tail takes)."""
    last = json.loads(path.read_bytes().splitlines()[-1])
    return last["trial_id"]  # one study per journal: trial ids are the trial numbers


def damage(path: Path, how: str) -> bytes:
    """Damage the journal at ``path`` as ``how`` says; return the damaged bytes."""
    data = path.read_bytes()
    if how == "torn-last":  # a crash or a full disk mid-write: the issue's 70 bytes
        data = data[:-TORN_BYTES]
    elif how == "garbage-appended":
        data += b"\x00\xffgarbage\n{not json\n"
    elif how == "torn-middle":
        lines = data.split(b"\n")
        lines[10] = lines[10][:-30]
        data = b"\n".join(lines)
    elif how == "empty":
        data = b""
    path.write_bytes(data)
    return data


def _files(run_dir: Path) -> dict:
    """Every file's bytes (the lock file aside: a search takes the lock before it checks anything)."""
    return {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file() and p.name != ".dynsearch.lock"}


def _main(capsys, *args):
    code = cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err.strip().splitlines()


def _command(name, run_dir, recipe, tmp_path):
    if name == "pareto":
        return ["pareto", run_dir, "--json"]
    if name == "export":
        return ["export", run_dir, "--out", tmp_path / "models"]
    return ["search", recipe, "--out", run_dir, "--json"]


def _front_trials(name, out, tmp_path):
    if name == "export":
        return sorted(int(p.name.split("-")[1]) for p in (tmp_path / "models").iterdir())
    return sorted(item["trial"] for item in json.loads(out))


def _assert_readable_and_nothing_lost(run_dir: Path, damaged: bytes):
    """Every complete record kept, each line newline-terminated; the damaged bytes in a sidecar."""
    text = (run_dir / "study.journal").read_bytes()
    assert text.endswith(b"\n") and all(json.loads(line) for line in text.splitlines())
    assert journal.scan(RunDir(run_dir)).clean
    [sidecar] = RunDir(run_dir).damaged_journals()
    assert sidecar.name == "study.journal.damaged-1"
    kept = len(damaged) - len(sidecar.read_bytes())
    assert damaged[:kept] + sidecar.read_bytes() == damaged and text.startswith(damaged[:kept])
    study = open_study(run_dir)
    assert not study.get_trials(states=(TrialState.RUNNING, TrialState.WAITING))
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 3


@pytest.mark.slow
@pytest.mark.parametrize("command", ["pareto", "export", "search"])
@pytest.mark.parametrize("how", ["torn-last", "garbage-appended"])
def test_a_damaged_tail_is_moved_aside_and_every_complete_trial_stays_on_the_front(run, tmp_path, capsys, command,
                                                                                   how):
    run_dir, recipe, front = run
    lost = _last_record_trial(run_dir / "study.journal")
    damaged = damage(run_dir / "study.journal", how)
    code, out, err = _main(capsys, *_command(command, run_dir, recipe, tmp_path))
    assert code == 0, err
    assert len(err) == 1 and err[0].startswith("dynsearch: warning: ") and "study.journal.damaged-1" in err[0], err
    assert "nothing deleted" in err[0]
    if how == "torn-last":
        assert f"rebuilt from their metrics.json: {lost} COMPLETE" in err[0]
    assert _front_trials(command, out, tmp_path) == front
    _assert_readable_and_nothing_lost(run_dir, damaged)
    code, out, err = _main(capsys, "pareto", run_dir, "--json")  # repaired once: quiet from then on
    assert code == 0 and err == [] and sorted(item["trial"] for item in json.loads(out)) == front


@pytest.mark.slow
@pytest.mark.parametrize("command", ["pareto", "export", "search"])
@pytest.mark.parametrize("how", ["torn-middle", "empty"])
def test_a_damaged_middle_or_empty_journal_is_one_line_exit_2_and_nothing_is_written(run, tmp_path, capsys,
                                                                                      command, how):
    run_dir, recipe, _ = run
    damaged = damage(run_dir / "study.journal", how)
    before = _files(run_dir)
    code, _, err = _main(capsys, *_command(command, run_dir, recipe, tmp_path))
    assert code == 2 and len(err) == 1 and err[0].startswith("dynsearch: error: "), err
    if how == "torn-middle":
        offset = len(b"\n".join(damaged.split(b"\n")[:10])) + 1
        assert f"the record at byte {offset} (line 11) is damaged" in err[0] and "nothing was changed" in err[0]
        assert "backup" in err[0] and "--new" in err[0]
    else:
        assert "is empty (0 bytes) but 3 trial folder(s) exist" in err[0] and "--new" in err[0]
    assert _files(run_dir) == before  # nothing written
    assert not (tmp_path / "models").exists()


@pytest.mark.slow
def test_the_issue_scenario_resume_then_pareto(run, capsys):
    """Cut 70 bytes, resume, then pareto: every COMPLETE trial on the front and a readable journal."""
    run_dir, recipe, front = run
    damage(run_dir / "study.journal", "torn-last")
    code, out, err = _main(capsys, "search", recipe, "--out", run_dir, "--json")
    assert code == 0 and len(err) == 1
    assert sorted(item["trial"] for item in json.loads(out)) == front
    code, out, err = _main(capsys, "pareto", run_dir, "--json")
    assert code == 0 and err == [] and sorted(item["trial"] for item in json.loads(out)) == front
    code, out, err = _main(capsys, "search", recipe, "--out", run_dir, "--json")  # resuming again: quiet, same
    assert code == 0 and err == [] and sorted(item["trial"] for item in json.loads(out)) == front


@pytest.mark.slow
def test_a_journal_glued_by_an_earlier_resume_is_repaired(run, capsys):
    """What resuming on a torn journal did before: records appended onto the partial line (no newline)."""
    run_dir, _, front = run
    path = run_dir / "study.journal"
    original = path.read_bytes()
    lines = original.splitlines(keepends=True)
    glued = original[:-TORN_BYTES] + lines[-2]  # a later writer's record, appended onto the torn one
    path.write_bytes(glued)
    code, out, err = _main(capsys, "pareto", run_dir, "--json")
    assert code == 0 and len(err) == 1 and "torn record(s) with later records appended onto them" in err[0], err
    assert sorted(item["trial"] for item in json.loads(out)) == front
    [sidecar] = RunDir(run_dir).damaged_journals()
    assert sidecar.read_bytes() == glued  # the journal as it was, whole
    assert journal.scan(RunDir(run_dir)).clean


@pytest.mark.slow
def test_a_lost_trial_without_a_complete_folder_is_reported_then_retried_on_resume(run, capsys):
    run_dir, recipe, _ = run
    path = run_dir / "study.journal"
    lost = _last_record_trial(path)
    (run_dir / "trials" / str(lost) / "metrics.json").unlink()  # as if the folder was never finished
    damage(path, "torn-last")
    code, out, err = _main(capsys, "pareto", run_dir, "--json")
    assert code == 0 and len(err) == 1, err
    assert f"trial(s) {lost} left RUNNING with no finished folder" in err[0] and "retries them" in err[0]
    assert lost not in [item["trial"] for item in json.loads(out)]
    code, out, err = _main(capsys, "search", recipe, "--out", run_dir, "--json")
    assert code == 0, err
    assert f"trial(s) {lost} left RUNNING with no finished folder: failed and queued for one retry" in err[0]
    trials = open_study(run_dir).get_trials()
    [orphan] = [t for t in trials if t.number == lost]
    assert orphan.state == TrialState.FAIL and orphan.user_attrs["fail_reason"].startswith("interrupted")
    [retry] = [t for t in trials if t.user_attrs.get("retry_of") == lost]
    assert retry.state == TrialState.COMPLETE and retry.params == orphan.params
    assert len([t for t in trials if t.state == TrialState.COMPLETE]) == 3


@pytest.mark.slow
def test_while_a_search_holds_the_lock_pareto_reads_and_writes_nothing(run, capsys):
    run_dir, _, front = run
    damaged = damage(run_dir / "study.journal", "garbage-appended")
    with RunDir(run_dir).locked():  # a live search
        code, out, err = _main(capsys, "pareto", run_dir, "--json")
    assert code == 0 and len(err) == 1 and "a search is running" in err[0], err
    assert (run_dir / "study.journal").read_bytes() == damaged and not RunDir(run_dir).damaged_journals()
    assert sorted(item["trial"] for item in json.loads(out)) == front


@pytest.mark.slow
def test_a_run_dir_that_cannot_be_written_is_repaired_in_memory_only(run, capsys, monkeypatch):
    run_dir, _, front = run
    damaged = damage(run_dir / "study.journal", "torn-last")

    def read_only(self):
        raise PermissionError(13, "Permission denied")  # what opening the lock file raises there

    monkeypatch.setattr(RunDir, "_acquire_lock", read_only)
    code, out, err = _main(capsys, "pareto", run_dir, "--json")
    assert code == 0 and len(err) == 1 and "repaired in memory only" in err[0] and "rebuilt" in err[0], err
    assert sorted(item["trial"] for item in json.loads(out)) == front
    assert (run_dir / "study.journal").read_bytes() == damaged and not RunDir(run_dir).damaged_journals()


# -- the scan itself (no search needed) -------------------------------------------------
RECORD = b'{"op_code":0,"worker_id":"w","study_name":"s","directions":[1]}'


@pytest.mark.parametrize("data, expected", [
    (RECORD + b"\n" + RECORD + b"\n", dict(records=2, clean=True)),
    (RECORD + b"\n" + RECORD[:-5], dict(records=1, clean=False, in_flight=True, tail=RECORD[:-5])),
    (RECORD + b"\n" + RECORD, dict(records=2, clean=False, in_flight=False, tail=b"", add_newline=True)),
    (RECORD + b"\n[1, 2]\n", dict(records=1, clean=False, in_flight=False, tail=b"[1, 2]\n")),
    (RECORD + b"\n" + RECORD[:9] + RECORD + b"\n", dict(records=2, clean=False, glued=[(len(RECORD) + 1, 9)])),
    (b"", dict(records=0, clean=True)),
])
def test_scan_classifies_the_journal(tmp_path, data, expected):
    found = journal.scan(RunDir(tmp_path), data)
    for key, value in expected.items():
        assert getattr(found, key) == value, key
    assert journal.scan(RunDir(tmp_path), found.repaired()).clean


def test_a_damaged_middle_record_is_a_user_error_naming_its_offset(tmp_path):
    data = RECORD + b"\n" + RECORD[:-3] + b"\n" + RECORD + b"\n"
    with pytest.raises(UserError, match=f"the record at byte {len(RECORD) + 1} \\(line 2\\) is damaged"):
        journal.scan(RunDir(tmp_path), data)


def test_open_existing_of_an_empty_journal_with_no_trial_is_a_user_error(tmp_path):
    (tmp_path / "study.journal").write_bytes(b"")
    with pytest.raises(UserError, match="is empty \\(0 bytes\\): the search recorded no trial"):
        open_existing(tmp_path)


def test_new_moves_the_damaged_journal_files_aside_with_their_search(tmp_path):
    run = RunDir(tmp_path)
    run.study_path.write_bytes(RECORD + b"\n")
    for k in (1, 2):
        (tmp_path / f"study.journal.damaged-{k}").write_bytes(b"torn")
    assert run.new_damaged_journal_path().name == "study.journal.damaged-3"
    target = run.move_aside()
    assert not run.damaged_journals() and not run.has_study()
    assert sorted(p.name for p in target.iterdir()) == ["study.journal", "study.journal.damaged-1",
                                                        "study.journal.damaged-2"]
