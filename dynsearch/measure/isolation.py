"""Timing isolation: no trial trains on a node while a model is being timed there.

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

import ray

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
