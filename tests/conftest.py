import os
import time

import pytest
import torch

# Ray must stay on loopback in tests (PITFALLS.md).
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
# Never W&B's network in tests; the tracking tests set their own mode.
os.environ["WANDB_MODE"] = "disabled"


def exits_config(stages=(0, 1), threshold=0.9, widths=(8, 32, 64), head_width=32, kind="cnn", depth=1):
    return {
        "mechanism": "exits",
        "input_shape": [1, 8, 8],
        "num_classes": 10,
        "backbone": {"kind": kind, "widths": list(widths), "depth": depth},
        "exits": {"stages": list(stages), "head_width": head_width, "threshold": threshold, "loss_weight": 0.5},
        "train": {"lr": 0.005, "epochs": 1, "batch_size": 64, "seed": 0},
        "trial": 0,
    }


@pytest.fixture(scope="session", autouse=True)
def _one_thread_for_the_session():
    """One torch thread from the start, module- and session-scoped fixtures included (they are set up
    before any function-scoped fixture): two threads per process on 2 shared cores made a fixture that
    trains two tiny models take 29 s instead of 3."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _fixed_threads_and_seed():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def digits():
    from dynsearch.data import load_splits

    return load_splits("digits", 0)


TINY_RECIPE = """\
name: tiny
data: {name: digits, split_seed: 0}
backbone: {kind: cnn, widths: [4, 8, 8], depth: 1}
space: exits
objectives: [{name: accuracy}, {name: macs}]
trials: 3
epochs: 1
sampler: {name: nsga2}
cpus_per_trial: 1
concurrent_trials: 2
"""


@pytest.fixture
def tiny_recipe(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY_RECIPE)
    return path


@pytest.fixture
def two_node_cluster():
    """A two-node Ray cluster on loopback: a head with 1 CPU and a worker with 1 CPU and the
    custom resource ``target``. Yields ``(cluster, worker_node)``; always stops exactly the
    processes it started (``Cluster.shutdown``), never ``ray stop``."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(
        initialize_head=True,
        connect=False,
        head_node_args={"num_cpus": 1, "node_ip_address": "127.0.0.1", "include_dashboard": False},
    )
    try:
        worker = cluster.add_node(num_cpus=1, resources={"target": 1}, node_ip_address="127.0.0.1")
        cluster.wait_for_nodes()
        yield cluster, worker
    finally:
        cluster.shutdown()


class NanFirstSpace:
    """The exits space, with trial 0 given a NaN loss weight (it ends FAIL)."""

    DEFAULTS = {}

    @staticmethod
    def define(trial, recipe, data):
        from dynsearch.search_spaces import exits

        config = exits.define(trial, recipe, data)
        if trial.number == 0:
            config["exits"]["loss_weight"] = float("nan")
        return config


def session_processes(sid: int) -> list:
    """The processes of session ``sid`` (a search started with ``start_new_session``): psutil.Process objects."""
    import psutil

    found = []
    for proc in psutil.process_iter():
        try:
            if os.getsid(proc.pid) == sid:
                found.append(proc)
        except (ProcessLookupError, PermissionError):
            pass
    return found


def reap_session(sid: int, grace_s: float) -> list[str]:
    """Wait up to ``grace_s`` for session ``sid``'s processes to exit, then SIGKILL the rest, by pid;
    return the names of those that had to be killed."""
    import psutil

    deadline = time.time() + grace_s
    while session_processes(sid) and time.time() < deadline:
        time.sleep(0.2)
    survivors, names = session_processes(sid), []
    for proc in survivors:
        try:
            names.append(proc.name())
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(survivors, timeout=10)
    return names
