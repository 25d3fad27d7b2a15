"""Every private Ray / Optuna name dynsearch uses, each behind one small wrapper.

Everything else goes through public APIs. Each wrapper says what it wraps, why
no public API serves and which versions it was checked against;
tests/test_compat.py exercises each one against the installed versions, so an
upgrade that renames or changes what a wrapper relies on fails there, naming
the wrapper. The libraries are imported inside the wrappers: importing this
module imports none of them.
"""
from __future__ import annotations

from typing import Any


def init_ray_on_loopback(**init_kwargs: Any) -> None:
    """Start an embedded local Ray (``ray.init(address="local")``) whose servers listen on 127.0.0.1.

    Wraps ``ray._private.ray_constants.ENABLE_RAY_CLUSTER`` (flipped to False
    for this call only) and ``ray.init``'s hidden ``_node_ip_address`` option.
    No public API serves: ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` is read once,
    when Ray is first imported (whoever imported it first), and without it Ray
    resolves 127.0.0.1 to the machine's network interface and listens there
    (PITFALLS.md "Ray and loopback"); ``ray.init`` documents
    ``_node_ip_address`` as a hidden, unstable option. Checked with ray 2.60.0.
    """
    import ray
    from ray._private import ray_constants

    enable_cluster = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        ray.init(address="local", _node_ip_address="127.0.0.1", **init_kwargs)
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = enable_cluster


def set_trial_user_attr(study, trial_number: int, key: str, value: Any) -> None:
    """Set user attribute ``key`` of trial ``trial_number`` of ``study``, whatever its state.

    Wraps ``optuna.study.Study._storage``; the rest is the storage's public
    API (``get_study_id_from_name``, ``get_trial_id_from_study_id_trial_number``,
    ``set_trial_user_attr``). No public API serves: a ``Study`` does not expose
    its storage, and only the live ``optuna.Trial`` of an ``ask`` sets user
    attributes, which a trial left RUNNING by a crashed driver no longer has
    (Optuna discourages building a ``Trial`` by hand). Checked with optuna 5.0.0.
    """
    storage = study._storage
    trial_id = storage.get_trial_id_from_study_id_trial_number(
        storage.get_study_id_from_name(study.study_name), trial_number
    )
    storage.set_trial_user_attr(trial_id, key, value)


def compute_hypervolume(loss_points, reference_point) -> float:
    """Hypervolume dominated by ``loss_points`` (every objective minimised) up to ``reference_point``.

    Wraps ``optuna._hypervolume.compute_hypervolume`` (the WFG algorithm behind
    ``optuna.visualization.plot_hypervolume_history``). No public API serves:
    Optuna computes hypervolumes only inside its plot and its samplers.
    Checked with optuna 5.0.0.
    """
    import numpy as np
    from optuna._hypervolume import compute_hypervolume as optuna_hypervolume

    return float(optuna_hypervolume(np.asarray(loss_points, dtype=float), np.asarray(reference_point, dtype=float)))
