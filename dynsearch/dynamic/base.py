"""The DynamicModel contract, the per-sample Trace and the mechanism registry.

This is the one extension point of dynsearch: a mechanism is a DynamicModel
subclass registered with ``@register_mechanism``. Everything downstream (cost,
training, search, export) talks to it only through this contract.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, NamedTuple

import torch
from torch import nn

from dynsearch.display import StatView
from dynsearch.dynamic.cost import component_input_shapes, measure_component_macs


class Trace:
    """What ran, per sample: the single source of truth for cost.

    Attributes:
        counts: component name -> float tensor [B], how many times that
            component ran for each sample (0 or 1 for a block; a count for
            components that can run several times).
        records: mechanism-specific per-sample records, e.g. ``exit_index``.

    ``Trace.single`` builds the trace of one sample lazily from the names of
    the components that ran, so the batch-1 hot path allocates no tensors;
    ``Trace.derived`` builds a batch's counts only when they are read, from
    the records that decide them, so serving that never reads them pays no
    per-component bookkeeping.
    """

    def __init__(self, counts: dict[str, torch.Tensor] | None = None,
                 records: dict[str, torch.Tensor] | None = None):
        self._counts = counts
        self._records = records if records is not None else {}
        self._ran: list[str] | None = None
        self._names: list[str] = []
        self._scalars: dict[str, Any] = {}
        self._derive: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]] | None = None

    @classmethod
    def derived(cls, records: dict[str, torch.Tensor],
                counts_of: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]) -> "Trace":
        """A batch's trace whose counts ``counts_of(records)`` computes when first read."""
        trace = cls(None, records)
        trace._derive = counts_of
        return trace

    @classmethod
    def single(cls, names: list[str], ran: list[str], **scalars: Any) -> "Trace":
        """The trace of one sample: ``ran`` lists the components it ran (repeats count)."""
        trace = cls()
        trace._ran, trace._names, trace._scalars = ran, names, scalars
        return trace

    @property
    def counts(self) -> dict[str, torch.Tensor]:
        if self._counts is None and self._derive is not None:
            self._counts = self._derive(self.records)
        if self._counts is None:
            ran = self._ran or []
            self._counts = {name: torch.tensor([float(ran.count(name))]) for name in self._names}
        return self._counts

    @property
    def records(self) -> dict[str, torch.Tensor]:
        if self._scalars:
            self._records.update({k: torch.tensor([v]) for k, v in self._scalars.items()})
            self._scalars = {}
        return self._records

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


@dataclass
class OnnxPart:
    """One graph of a staged ONNX export: ``module(x)`` returns a tuple of tensors named ``outputs``.

    ``source`` is where its input comes from at run time: ``"input"`` (the
    model's input) or ``"<part name>/<output name>"`` of an earlier part.
    ``info`` says what the graph holds (stages, exit, gate), for the card.
    """

    name: str
    module: nn.Module
    outputs: tuple[str, ...]
    source: str = "input"
    info: dict[str, Any] = field(default_factory=dict)


class OnnxSequence(nn.Module):
    """Modules run in order as one ONNX graph; returns a one-tuple (an ``OnnxPart`` module returns a tuple)."""

    def __init__(self, *modules: nn.Module):
        super().__init__()
        self.body = nn.Sequential(*modules)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor]:
        return (self.body(x),)


@dataclass
class OnnxForm:
    """A deployable ONNX form of a dynamic model that keeps its savings: the graphs,
    in run order, and a one-line ``description`` of how a runtime chains them
    (the thresholds are in ``runtime_policy()``)."""

    description: str
    parts: list[OnnxPart]


def listed(positions) -> str:
    """Positions for a display (``"0,1"``), ``"-"`` when there are none."""
    return ",".join(map(str, positions or [])) or "-"


def probability_knob(values: dict[str, float], knob: str, owner: str) -> float | None:
    """The value ``set_runtime_knobs(values)`` gives a mechanism's one knob in (0, 1] (a threshold);
    None when ``values`` does not name it. A ValueError names another knob or a value outside (0, 1]."""
    unknown = sorted(set(values) - {knob})
    if unknown:
        raise ValueError(f"{owner} has no runtime knob(s) {unknown}; use {knob!r}")
    if knob not in values:
        return None
    value = float(values[knob])
    if not 0.0 < value <= 1.0:
        raise ValueError(f"{knob} must be in (0, 1] (got {value})")
    return value


def tiny_train() -> dict[str, Any]:
    """The training settings of every mechanism's tiny configs (``tiny_configs``): one short epoch."""
    return {"lr": 0.005, "epochs": 1, "batch_size": 16, "seed": 0}


class TrainingHooks:
    """How a mechanism trains: its losses, its decision-making components, multi-stage schedules."""

    def set_training_progress(self, progress: float) -> None:
        """Called before each training step with the fraction of training done (0 to 1).

        Multi-stage schemes (DeeBERT's two stages, SkipNet's RL stage) switch on it.
        """
        self.training_progress = float(progress)

    def decision_components(self) -> list[str]:
        """Components that make the dynamic decisions (gates, halting units, exit heads):
        training must send them gradients."""
        return []

    def task_loss(self, output: DynamicOutput, target: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(output.logits, target)

    def aux_loss(self, trace: Trace) -> torch.Tensor:
        """The mechanism's own penalty (target rate, load balance, ponder cost)."""
        return torch.zeros(())

    def training_loss(self, output: DynamicOutput, target: torch.Tensor) -> torch.Tensor:
        return self.task_loss(output, target) + self.aux_loss(output.trace)


class CostHooks:
    """What a model costs: components and their static MACs, the static counterpart, timing calls.
    ``components`` and ``static_components`` are required; the rest have defaults."""

    def components(self) -> dict[str, nn.Module]:
        raise NotImplementedError

    def static_components(self) -> list[str]:
        raise NotImplementedError

    def component_macs(self) -> dict[str, int]:
        """Static per-sample MACs of every component, measured once (see cost.py)."""
        if self._component_macs is None:
            self._component_macs = measure_component_macs(self)
        return self._component_macs

    def macs_full(self) -> int:
        macs = self.component_macs()
        return int(sum(macs[name] for name in self.static_components()))

    def example_input(self, batch_size: int = 1) -> torch.Tensor:
        return torch.zeros(batch_size, *self.config["input_shape"])

    def forward_static(self, x: torch.Tensor) -> torch.Tensor:
        """The static counterpart: the backbone to its end with only its final classifier."""
        raise NotImplementedError(f"{type(self).__name__} has no static path")

    def timed_components(self, device: torch.device) -> dict[str, Callable[[], Any]]:
        """Per component, a call that runs it alone at batch 1 as it runs in eval
        (mechanisms add their decision to the component that makes it)."""
        calls = {}
        for name, module in self.components().items():
            x = torch.zeros(1, *component_input_shapes(self)[name], device=device)
            calls[name] = lambda module=module, x=x: module(x)
        return calls


class RuntimeKnobHooks:
    """Inference-time decisions that change after training: the policy an export records, the knobs an
    operating-point sweep tries, and (optionally) replaying the knobs from one recorded pass."""

    def runtime_policy(self) -> dict[str, Any]:
        """The inference-time decision rule and its thresholds (JSON), written to an export's config and card."""
        return {}

    def runtime_knobs(self) -> dict[str, list[float]]:
        """Inference-time knobs that can change after training without retraining
        (exit threshold, patience, gate bias, halting threshold), each with the
        values a calibration sweep tries; {} when the mechanism has none."""
        return {}

    def set_runtime_knobs(self, values: dict[str, float]) -> None:
        """Set knobs named by ``runtime_knobs()``; ``runtime_policy()`` then reports the new values."""
        if values:
            raise ValueError(f"{type(self).__name__} has no runtime knobs; got {sorted(values)}")

    def record(self, x: torch.Tensor) -> dict[str, torch.Tensor] | None:
        """One eval pass over a batch that computes, for every sample, every output any value of the
        runtime knobs could use (each exit head's logits, each ponder step's state), without stopping
        early: the record ``replay`` decides from. Called in eval mode without gradients.

        None (the default): the knobs change what runs downstream (gate bias, expert top-k), so each
        knob value needs a real pass. A mechanism that records must also implement ``replay``.
        """
        return None

    def replay(self, records: dict[str, torch.Tensor]) -> DynamicOutput:
        """What ``forward`` in eval returns on the recorded batch at the knob values set now
        (``set_runtime_knobs``): the same per-sample decisions, logits and Trace, computed from
        ``record(x)`` alone. The knobs are read from the model, as the eval forward reads them, so
        there is one place that sets and validates them. Decide with the rules of rules.py that the
        eval forward uses, so the two cannot drift apart."""
        raise NotImplementedError(f"{type(self).__name__} does not replay operating points (record() returns None)")


class ExportHooks:
    """Deployable forms beyond PyTorch (deploy/onnx_export.py)."""

    def onnx_form(self) -> OnnxForm | None:
        """The ONNX-exportable pieces (stage graphs, heads, gates); None: ONNX is not supported."""
        return None


class DisplayHooks:
    """What the CLI, the report and W&B show of a mechanism: they ask it, never its config keys."""

    # How the report draws each list-valued statistic of ``trace_stats`` (key -> StatView);
    # a statistic without one gets a generic panel.
    stat_views: ClassVar[dict[str, StatView]] = {}

    def trace_stats(self, trace: Trace) -> dict[str, Any]:
        """Per-point statistics over an evaluation split (JSON-serialisable), e.g. exit histogram."""
        return {}

    @classmethod
    def placement(cls, config: dict[str, Any]) -> str:
        """Where a config's dynamic parts sit, for the front table (e.g. ``"0,1"``); ``"-"`` when nowhere."""
        return "-"

    @classmethod
    def stat_summary(cls, stats: dict[str, Any]) -> list[tuple[str, str]]:
        """One-line summaries of ``trace_stats`` output for ``dynsearch train``: (label, text) pairs."""
        return []

    @classmethod
    def stat_views_record(cls, stats: dict[str, Any]) -> dict[str, dict[str, Any]]:
        """The views of the statistics in ``stats``, as a trial records them in metrics.json (``stat_views``)."""
        return {key: view.to_json() for key, view in cls.stat_views.items() if key in stats}


class ConformanceHooks:
    """What the conformance suite (dynsearch.testing.conformance) runs a mechanism on."""

    @classmethod
    def tiny_configs(cls) -> list[dict[str, Any]]:
        """Small trial configs covering the mechanism's variants (for the conformance suite)."""
        raise NotImplementedError(f"{cls.__name__} must provide tiny_configs() for the conformance suite")


class DynamicModel(TrainingHooks, CostHooks, RuntimeKnobHooks, ExportHooks, DisplayHooks, ConformanceHooks, nn.Module):
    """Base of every mechanism.

    Subclasses implement ``forward`` (train: every path that needs gradients;
    eval: hard per-sample decisions, skipped work really not computed),
    ``components`` (name -> module, each a unit the trace counts) and
    ``static_components`` (names run by the static counterpart: the backbone
    to its end with only its final classifier). ``tiny_configs`` gives small
    configs of every variant: the conformance suite
    (``dynsearch.testing.conformance``) runs on each, so registering a
    mechanism is what gets it tested.

    The rest of the contract is grouped by concern, one mixin each (in the
    manner of Lightning's ``ModelHooks`` / ``DataHooks``); each method has a
    default unless marked required:

    - ``TrainingHooks``: ``task_loss``, ``aux_loss``, ``training_loss``,
      ``decision_components``, ``set_training_progress``;
    - ``CostHooks``: ``components`` and ``static_components`` (required),
      ``component_macs``, ``macs_full``, ``example_input``, ``forward_static``
      (latency's static path), ``timed_components`` (the latency table);
    - ``RuntimeKnobHooks``: ``runtime_policy``, ``runtime_knobs``,
      ``set_runtime_knobs``, ``record`` / ``replay`` (operating points from one pass);
    - ``ExportHooks``: ``onnx_form``;
    - ``DisplayHooks``: ``trace_stats``, ``stat_views``, ``placement``,
      ``stat_summary``, ``stat_views_record``;
    - ``ConformanceHooks``: ``tiny_configs`` (required).
    """

    family: str = ""
    paper: str = ""
    # False for mechanisms whose input decides weights rather than work (CondConv): every
    # component runs for every sample, and the decisions are the float ``records["routing"]``.
    skips_work: bool = True

    def __init__(self, config: dict[str, Any]):
        super().__init__()
        self.config = copy.deepcopy(config)
        self._component_macs: dict[str, int] | None = None
        self.training_progress = 0.0


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
