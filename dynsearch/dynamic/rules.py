"""The inference-time decision rules of the mechanisms, each written once.

Every rule is a plain function of array-likes and scalars built from plain
operators, so the same function decides in the PyTorch eval forward (batch and
batch-1 paths), in ``timed_components``, in the operating-point sweep (it runs
the eval forward) and in the staged ONNX runtime (numpy). This module imports
neither torch nor numpy.

Round-off: torch compares or adds a float32 tensor and a Python float in
float32, and so does NumPy 2 (NEP 50); the staged runtime passes its knobs as
float32 scalars of the graphs' outputs anyway (``StagedRun.real``), so a
decision at a threshold is the same in both.

The staged runtime asks ``staged_role(graph["role"])`` what to do with each
graph of an export's manifest: whether it runs, and what its outputs decide.
Each mechanism family declares its roles here, next to its rules, with
``@register_staged_role``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

# -- exits (exits.py, depth.py) ---------------------------------------------------


def at_least(score, threshold):
    """Leave when the score reaches the threshold (max softmax probability)."""
    return score >= threshold


def below(score, threshold):
    """Leave when the score is under the threshold (entropy, normalised entropy)."""
    return score < threshold


# Per threshold exit policy: the name of the score its exit graphs return, and its comparison.
EXIT_SCORES = {"confidence": "confidence", "entropy": "entropy", "fastbert": "normalized_entropy"}
EXIT_COMPARISONS = {"confidence": at_least, "entropy": below, "fastbert": below}


def exit_leaves(policy: str, score, threshold):
    """Does each sample leave at this head under a threshold policy (``confidence``: score >= threshold;
    ``entropy``, ``fastbert``: score < threshold)?"""
    if policy not in EXIT_COMPARISONS:
        raise ValueError(f"exit policy {policy!r} has no threshold rule; use one of {sorted(EXIT_COMPARISONS)}")
    return EXIT_COMPARISONS[policy](score, threshold)


def patience_streak(streak, prediction, previous):
    """PABEE's counter after a head: one more when its argmax agrees with the previous head's,
    otherwise 0 (0 at the first head, ``previous`` None)."""
    if previous is None:
        return streak * 0
    return (streak + 1) * (prediction == previous)


def patience_leaves(streak, patience):
    """PABEE leaves once the streak reaches ``patience`` (patience + 1 heads in a row agreed)."""
    return streak >= patience


def shifted_depth_scores(depth_logits, depth_shift, depth_index):
    """The halting logits less ``depth_shift`` times the depth index n (0, 1, ...; same dtype as the logits)."""
    return depth_logits - depth_shift * depth_index if depth_shift else depth_logits


def predicted_depth(depth_logits, depth_shift, depth_index):
    """Index of the chosen depth along the last axis: argmax_n of the halting logits - depth_shift * n."""
    return shifted_depth_scores(depth_logits, depth_shift, depth_index).argmax(-1)


# -- gates (gates.py) ---------------------------------------------------------------


def gate_on(on_logit, off_logit, gate_bias):
    """A gated block runs when its gate's on-logit plus ``gate_bias`` exceeds the off-logit."""
    return on_logit + gate_bias > off_logit


# -- halting (halting.py) ------------------------------------------------------------


def halts(cumulative, threshold):
    """ACT and PonderNet halt once the cumulative halting quantity reaches ``halting_threshold``."""
    return cumulative >= threshold


# -- the staged ONNX runtime's roles ---------------------------------------------------


@dataclass
class StagedRun:
    """What a staged run of one input carries from graph to graph.

    ``policy`` is the card's ``runtime_policy``; ``xp`` the array namespace of the
    graphs' outputs (numpy): its ``float32`` types the knobs as the graphs compute.
    A graph answers by setting ``prediction`` (and ``exit_stage``).
    """

    policy: dict[str, Any]
    xp: Any
    gate_on: bool = True
    depth: int | None = None
    streak: int = 0
    previous: int | None = None
    gates: list[bool] = field(default_factory=list)
    prediction: int | None = None
    exit_stage: int | None = None

    def real(self, name: str, default: float | None = None):
        """A float knob of the policy as a float32 scalar of the outputs' namespace (required without a default)."""
        return self.xp.float32(self.policy[name] if default is None else self.policy.get(name, default))

    def answer(self, logits, exit_stage: int | None) -> None:
        self.prediction, self.exit_stage = int(logits[0].argmax()), exit_stage


@dataclass(frozen=True)
class StagedRole:
    """How the staged runtime treats graphs of one ``role``: ``runs(graph, run)`` says whether the
    graph runs; ``decide(graph, outputs, run)`` takes its decision from the outputs it returned."""

    role: str
    family: str
    runs: Callable[[dict, StagedRun], bool]
    decide: Callable[[dict, dict, StagedRun], None]


STAGED_ROLES: dict[str, StagedRole] = {}


def register_staged_role(role: str, family: str, runs: Callable[[dict, StagedRun], bool] | None = None):
    """Decorator: ``decide`` of the graphs of ``role`` (``runs``: always, unless given)."""

    def decorate(decide: Callable[[dict, dict, StagedRun], None]):
        if role in STAGED_ROLES:
            raise ValueError(f"staged graph role {role!r} is registered twice")
        STAGED_ROLES[role] = StagedRole(role, family, runs or (lambda graph, run: True), decide)
        return decide

    return decorate


def staged_role(role: str) -> StagedRole:
    """The handler of a manifest graph's ``role``; a ValueError naming the known roles otherwise."""
    if role not in STAGED_ROLES:
        raise ValueError(f"staged graph role {role!r} is unknown; known roles: {sorted(STAGED_ROLES)}")
    return STAGED_ROLES[role]


@register_staged_role("segment", "any")
def _segment(graph: dict, outputs: dict, run: StagedRun) -> None:
    """Layers that always run: nothing to decide."""


@register_staged_role("exit", "exits")
def _exit(graph: dict, outputs: dict, run: StagedRun) -> None:
    """Layers ending in a head: answer if final or if the early-exit rule says leave."""
    logits = outputs["logits"]
    policy = run.policy.get("policy")
    if policy == "patience":
        prediction = int(logits[0].argmax())
        run.streak = patience_streak(run.streak, prediction, run.previous)
        run.previous = prediction
        leave = bool(patience_leaves(run.streak, run.policy["patience"]))
    elif graph.get("exit_stage") is None:  # the final graph of a form without early exits
        leave = False
    else:
        if policy not in EXIT_SCORES:
            raise ValueError(f"exit policy {policy!r} has no staged ONNX rule")
        score = outputs[EXIT_SCORES[policy]][0]
        leave = bool(exit_leaves(policy, score, run.real("threshold")))
    if graph["final"] or leave:
        run.answer(logits, graph.get("exit_stage"))


@register_staged_role("gate", "gates")
def _gate(graph: dict, outputs: dict, run: StagedRun) -> None:
    """A gate's logits (off, on) decide whether the block graph after it runs."""
    logits = outputs["logits"][0]
    run.gate_on = bool(gate_on(logits[1], logits[0], run.real("gate_bias", 0.0)))
    run.gates.append(run.gate_on)


@register_staged_role("block", "gates", runs=lambda graph, run: run.gate_on)
def _block(graph: dict, outputs: dict, run: StagedRun) -> None:
    """A gated block: runs only when its gate said on."""


@register_staged_role("halting", "exits")
def _halting(graph: dict, outputs: dict, run: StagedRun) -> None:
    """Predicted depth: the halting logits pick the exit depth before any layer runs."""
    scores = outputs["depth_logits"][0]
    index = run.xp.arange(len(scores), dtype=run.xp.float32)
    run.depth = graph["depths"][int(predicted_depth(scores, run.real("depth_shift", 0.0), index))]


@register_staged_role("head", "exits", runs=lambda graph, run: graph["exit_stage"] == run.depth)
def _head(graph: dict, outputs: dict, run: StagedRun) -> None:
    """The head of the chosen depth answers; the others never run."""
    run.answer(outputs["logits"], run.depth)
