"""A trial's latency, timed apart from training: the Ray side of latency measurement.

``measure/latency.py`` times a model (no Ray); this module decides where and when a
trial's model is timed: on the trial's node with no trial training there, or on the
node carrying the recipe's ``latency.resource`` (the deployment box).

Timing isolation: no trial trains on a node while a model is being timed there.

One ``CpuGate`` actor per node (named after the node, created on first use,
pinned to it). Training holds the gate shared for each epoch (training/lightning.py:
``GateCallback``); a latency measurement holds it exclusively: it waits for the
epochs in progress on that node to end, and new epochs wait for it. A trainer
that died inside an epoch cannot block timing forever: ``acquire`` gives up
after ``timeout_s`` and the measurement is recorded as not isolated.
"""
from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import ray
import torch

from dynsearch.measure.latency import measure_latency

NAMESPACE = "dynsearch"


@ray.remote(num_cpus=0)
class CpuGate:
    def __init__(self):
        self._training: set[str] = set()
        self._timing = False
        self._changed: asyncio.Condition | None = None

    def _condition(self) -> asyncio.Condition:
        if self._changed is None:  # created inside the actor's event loop
            self._changed = asyncio.Condition()
        return self._changed

    async def enter_training(self, trial: str) -> None:
        changed = self._condition()
        async with changed:
            await changed.wait_for(lambda: not self._timing)
            self._training.add(trial)

    async def leave_training(self, trial: str) -> None:
        changed = self._condition()
        async with changed:
            self._training.discard(trial)
            changed.notify_all()

    async def acquire_timing(self, timeout_s: float) -> bool:
        """Exclusive use of the node's CPUs; False when training did not pause in time."""
        changed = self._condition()
        async with changed:
            await changed.wait_for(lambda: not self._timing)
            self._timing = True
            try:
                await asyncio.wait_for(changed.wait_for(lambda: not self._training), timeout_s)
                return True
            except asyncio.TimeoutError:
                return False

    async def release_timing(self) -> None:
        changed = self._condition()
        async with changed:
            self._timing = False
            changed.notify_all()


def node_gate(node_id: str | None = None):
    """The gate of ``node_id`` (default: the node this code runs on)."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    node_id = node_id or ray.get_runtime_context().get_node_id()
    return CpuGate.options(
        name=f"cpu-gate-{node_id}",
        namespace=NAMESPACE,
        get_if_exists=True,
        lifetime="detached",  # one per node, reused by name; not tied to the trial that made it
        max_concurrency=1000,
        scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=node_id, soft=False),
    ).remote()


@contextlib.contextmanager
def exclusive_timing(timeout_s: float = 120.0):
    """Hold this node's gate exclusively; yields whether training really paused."""
    gate = node_gate()
    isolated = ray.get(gate.acquire_timing.remote(timeout_s))
    try:
        yield isolated
    finally:
        ray.get(gate.release_timing.remote())


# -- a trial's latency ----------------------------------------------------------
def _measure_with_isolation(model, inputs: torch.Tensor, spec) -> dict[str, Any]:
    """Time ``model`` here, holding this node's CPU gate. ``spec``: the recipe's ``LatencySpec``."""
    with exclusive_timing(spec.isolation_timeout_s) as isolated:
        result = measure_latency(
            model, inputs[: spec.inputs * spec.batch_size], device=spec.device,
            batch_size=spec.batch_size, warmup=spec.warmup, repeats=spec.repeats, threads=spec.threads,
            against_static=True,
        )
    return {**result, "latency_isolated": isolated, "latency_device": spec.device,
            "latency_node_id": ray.get_runtime_context().get_node_id()}


def _measure_from_weights(config: dict[str, Any], weights: bytes, inputs: torch.Tensor, spec):
    from safetensors.torch import load

    from dynsearch.dynamic import build_model

    model = build_model(config)
    model.load_state_dict(load(weights))
    return _measure_with_isolation(model, inputs, spec)


def measure_trial_latency(config: dict[str, Any], model, inputs: torch.Tensor, spec) -> dict[str, Any]:
    """A trial's latency (``spec``: the recipe's ``LatencySpec``): here, or, when ``spec.resource``
    names a Ray resource, as a task on the node that carries it (the deployment box), apart from training."""
    if not spec.resource:
        return _measure_with_isolation(model, inputs, spec)
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    from dynsearch.run.files import weights_bytes

    weights = weights_bytes(model)
    task = ray.remote(_measure_from_weights).options(
        resources={spec.resource: 0.001},
        num_cpus=0,
        # Outside the trial's placement group: the target node is not among the trial's resources.
        scheduling_strategy=PlacementGroupSchedulingStrategy(placement_group=None),
    )
    return ray.get(task.remote(config, weights, inputs, spec))
