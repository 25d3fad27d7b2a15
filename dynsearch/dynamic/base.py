"""The DynamicModel contract, the per-sample Trace and the mechanism registry.

This is the one extension point of dynsearch: a mechanism is a DynamicModel
subclass registered with ``@register_mechanism``. Everything downstream (cost,
training, search, export) talks to it only through this contract.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Callable, NamedTuple

import torch
from torch import nn


@dataclass
class Trace:
    """What ran, per sample: the single source of truth for cost.

    Attributes:
        counts: component name -> float tensor [B], how many times that
            component ran for each sample (0 or 1 for a block; a count for
            components that can run several times).
        records: mechanism-specific per-sample records, e.g. ``exit_index``.
    """

    counts: dict[str, torch.Tensor]
    records: dict[str, torch.Tensor] = field(default_factory=dict)

    @staticmethod
    def cat(traces: list["Trace"]) -> "Trace":
        """One trace for the samples of several batches, in order."""
        first = traces[0]
        return Trace(
            {k: torch.cat([t.counts[k] for t in traces]) for k in first.counts},
            {k: torch.cat([t.records[k] for t in traces]) for k in first.records},
        )

    def macs_per_sample(self, component_macs: dict[str, int]) -> torch.Tensor:
        """MACs each sample paid: the sum over the components its trace says ran."""
        total = None
        for name, count in self.counts.items():
            term = count.double() * float(component_macs[name])
            total = term if total is None else total + term
        return total


class DynamicOutput(NamedTuple):
    """``logits`` [B, K] and the per-sample ``trace``; ``head_logits`` in training only."""

    logits: torch.Tensor
    trace: Trace
    head_logits: list[torch.Tensor] | None = None


class DynamicModel(nn.Module):
    """Base of every mechanism.

    Subclasses implement ``forward`` (train: every path that needs gradients;
    eval: hard per-sample decisions, skipped work really not computed),
    ``components`` (name -> module, each a unit the trace counts) and
    ``static_components`` (names run by the static counterpart: the backbone
    to its end with only its final classifier).
    """

    family: str = ""
    paper: str = ""

    def __init__(self, config: dict[str, Any]):
        super().__init__()
        self.config = copy.deepcopy(config)
        self._component_macs: dict[str, int] | None = None

    # -- contract -----------------------------------------------------------
    def components(self) -> dict[str, nn.Module]:
        raise NotImplementedError

    def static_components(self) -> list[str]:
        raise NotImplementedError

    def task_loss(self, output: DynamicOutput, target: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(output.logits, target)

    def aux_loss(self, trace: Trace) -> torch.Tensor:
        """The mechanism's own penalty (target rate, load balance, ponder cost)."""
        return torch.zeros(())

    def trace_stats(self, trace: Trace) -> dict[str, Any]:
        """Per-point statistics over an evaluation split (JSON-serialisable), e.g. exit histogram."""
        return {}

    def training_loss(self, output: DynamicOutput, target: torch.Tensor) -> torch.Tensor:
        return self.task_loss(output, target) + self.aux_loss(output.trace)

    # -- cost ---------------------------------------------------------------
    def component_macs(self) -> dict[str, int]:
        """Static per-sample MACs of every component, measured once (see cost.py)."""
        if self._component_macs is None:
            from dynsearch.cost import measure_component_macs

            self._component_macs = measure_component_macs(self)
        return self._component_macs

    def macs_full(self) -> int:
        macs = self.component_macs()
        return int(sum(macs[name] for name in self.static_components()))

    def example_input(self, batch_size: int = 1) -> torch.Tensor:
        return torch.zeros(batch_size, *self.config["input_shape"])


@dataclass(frozen=True)
class MechanismInfo:
    name: str
    family: str
    paper: str
    cls: type


MECHANISMS: dict[str, MechanismInfo] = {}


def register_mechanism(name: str, *, family: str, paper: str) -> Callable[[type], type]:
    """Class decorator: make a DynamicModel subclass buildable as ``mechanism: name``."""

    def decorate(cls: type) -> type:
        if name in MECHANISMS:
            raise ValueError(f"mechanism {name!r} is registered twice")
        cls.family, cls.paper = family, paper
        MECHANISMS[name] = MechanismInfo(name, family, paper, cls)
        return cls

    return decorate


def build_model(config: dict[str, Any]) -> DynamicModel:
    """Build the DynamicModel a trial config describes."""
    import dynsearch.dynamic  # noqa: F401  (registers the built-in mechanisms)

    name = config.get("mechanism")
    if name not in MECHANISMS:
        from dynsearch.errors import UserError

        raise UserError(
            f"config field 'mechanism': unknown mechanism {name!r}; use one of {sorted(MECHANISMS)}"
        )
    return MECHANISMS[name].cls(config)
