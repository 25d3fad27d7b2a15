"""Each wrapper of dynsearch.compat (the private Ray / Optuna names we use) against the installed versions.

A failure here means an upgrade renamed or changed what a wrapper relies on:
the message names the wrapper; its docstring says what it wraps and why.
"""
import json
import os
import subprocess
import sys
import textwrap
from contextlib import contextmanager
from importlib.metadata import version

import pytest

from dynsearch import compat

VERSIONS = ", ".join(f"{name} {version(name)}" for name in ("ray", "optuna"))


@contextmanager
def wrapper(name: str):
    """Turn anything the wrapper raises or breaks into one failure that names it."""
    try:
        yield
    except Exception as exc:
        pytest.fail(f"dynsearch.compat.{name} no longer works with {VERSIONS}: {exc!r}; "
                    "see its docstring for what it wraps", pytrace=False)


def test_init_ray_on_loopback():
    # A fresh process in which Ray was imported before the flag is set, as in a user's program:
    # Ray itself would then advertise the machine's network interface (PITFALLS.md "Ray and loopback").
    script = textwrap.dedent("""
        import json, os
        import ray
        from ray._private import ray_constants
        from dynsearch.compat import init_ray_on_loopback

        flag_before = ray_constants.ENABLE_RAY_CLUSTER
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # for the processes Ray starts (as tuner.py does)
        init_ray_on_loopback(num_cpus=1, include_dashboard=False, log_to_driver=False, logging_level="error")
        try:
            print(json.dumps({
                "flag_before": flag_before, "flag_after": ray_constants.ENABLE_RAY_CLUSTER,
                "driver_ip": ray.util.get_node_ip_address(),
                "node_ips": sorted({n["NodeManagerAddress"] for n in ray.nodes()}),
                "task_ip": ray.get(ray.remote(num_cpus=1)(ray.util.get_node_ip_address).remote()),
            }))
        finally:
            ray.shutdown()
    """)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"}
    with wrapper("init_ray_on_loopback"):
        proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
        assert proc.returncode == 0, proc.stderr[-2000:]
        seen = json.loads(proc.stdout.strip().splitlines()[-1])
        assert isinstance(seen["flag_before"], bool), "ray_constants.ENABLE_RAY_CLUSTER is not a bool flag"
        assert seen["flag_after"] == seen["flag_before"], "the flag was not restored after init"
        assert seen["driver_ip"] == "127.0.0.1" and seen["task_ip"] == "127.0.0.1", seen
        assert seen["node_ips"] == ["127.0.0.1"], seen


def test_set_trial_user_attr(tmp_path):
    import optuna
    from optuna.trial import TrialState

    from dynsearch.recipe import load_recipe
    from dynsearch.run.study import open_study

    recipe = load_recipe(None)
    with wrapper("set_trial_user_attr"):
        crashed = open_study(tmp_path, recipe).ask()  # left RUNNING by a "driver" that is gone
        study = open_study(tmp_path, recipe)
        study.ask()  # another trial, so the number, not the position, picks the trial
        compat.set_trial_user_attr(study, crashed.number, "fail_reason", "interrupted")
        [trial] = [t for t in open_study(tmp_path).get_trials() if t.number == crashed.number]
        assert trial.user_attrs == {"fail_reason": "interrupted"} and trial.state == TrialState.RUNNING
        memory = optuna.create_study(directions=["maximize", "minimize"])  # any storage, not only the journal
        compat.set_trial_user_attr(memory, memory.ask().number, "k", [1, 2])
        assert memory.trials[0].user_attrs == {"k": [1, 2]}


def test_compute_hypervolume():
    with wrapper("compute_hypervolume"):
        # Two boxes up to (-0.5, 100): 0.4 x 60 + 0.2 x 80, less their 0.2 x 60 overlap.
        assert compat.compute_hypervolume([(-0.9, 40.0), (-0.7, 20.0)], [-0.5, 100.0]) == pytest.approx(28.0)
        # A dominated point adds nothing; three objectives take the general WFG path.
        assert compat.compute_hypervolume([(-0.9, 40.0), (-0.8, 50.0)], [-0.5, 100.0]) == pytest.approx(24.0)
        assert compat.compute_hypervolume([(1.0, 1.0, 1.0), (0.0, 1.5, 1.5)], [2.0, 2.0, 2.0]) == pytest.approx(1.25)
        assert isinstance(compat.compute_hypervolume([(0.0, 0.0)], [1.0, 1.0]), float)


def test_importing_compat_imports_none_of_the_libraries():
    # The file on its own (importing the dynsearch package would import Ray through the search).
    script = textwrap.dedent(f"""
        import importlib.util, sys
        spec = importlib.util.spec_from_file_location("compat", {compat.__file__!r})
        spec.loader.exec_module(importlib.util.module_from_spec(spec))
        print(sorted({{"ray", "optuna", "wandb", "numpy"}} & set(sys.modules)))
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stdout + proc.stderr[-2000:]
