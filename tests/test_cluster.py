"""Searches on an existing (two-node, loopback) Ray cluster, and the loss of a node mid-search."""
import json
import subprocess
import sys
import time

import pytest
from optuna.trial import TrialState

from dynsearch.run.study import open_study

pytestmark = pytest.mark.slow


def _search(recipe, out, address, trials, epochs):
    return subprocess.Popen(
        [sys.executable, "-m", "dynsearch.cli", "search", str(recipe), "--address", address, "--trials", str(trials),
         "--epochs", str(epochs), "--concurrent", "2", "--out", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def _records(out, name):
    records = {}
    for folder in (out / "trials").glob("*"):
        path = folder / name
        if path.is_file():
            records[int(folder.name)] = json.loads(path.read_text())
    return records


def test_trials_spread_over_both_nodes(tmp_path, tiny_recipe, two_node_cluster):
    cluster, worker = two_node_cluster
    out = tmp_path / "run"
    # Trials last well beyond a worker's start-up (~10 s): Tune's actor reuse hands a trial that waits for a
    # starting actor to a finished trial's idle one, so 1-second trials can all land on the head (seen in CI).
    proc = _search(tiny_recipe, out, cluster.address, trials=4, epochs=30)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    metrics = _records(out, "metrics.json")
    assert len(metrics) == 4 and all(m["status"] == "COMPLETE" for m in metrics.values())
    nodes = {m["node_id"] for m in metrics.values()}
    assert nodes == {cluster.head_node.node_id, worker.node_id}  # trials ran on both nodes
    # The run directory stayed with the driver: every file is here, whichever node trained.
    assert all((out / "trials" / str(n) / "model.safetensors").is_file() for n in metrics)


def test_search_completes_when_a_worker_node_dies(tmp_path, tiny_recipe, two_node_cluster):
    cluster, worker = two_node_cluster
    out = tmp_path / "run"
    proc = _search(tiny_recipe, out, cluster.address, trials=4, epochs=40)  # ~10 s trials (see above)
    try:
        victim = None
        deadline = time.time() + 300
        while victim is None and time.time() < deadline and proc.poll() is None:
            started = _records(out, "placement.json")
            finished = _records(out, "metrics.json")
            running_there = [n for n, p in started.items() if p["node_id"] == worker.node_id and n not in finished]
            victim = running_there[0] if running_there else None
            time.sleep(0.2)
        assert victim is not None, "no trial was seen running on the worker node"
        cluster.remove_node(worker)  # the node dies with a trial running on it
        _, err = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-3000:]
    study = open_study(out)
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 4  # the requested count, nothing lost
    ray_ids = [t.user_attrs["ray_trial_id"] for t in trials]
    assert len(set(ray_ids)) == len(ray_ids)  # no result reached the study twice
    rerun = _records(out, "placement.json")[victim]
    assert rerun["node_id"] == cluster.head_node.node_id  # the lost trial was retried on the surviving node
    assert _records(out, "metrics.json")[victim]["status"] == "COMPLETE"
