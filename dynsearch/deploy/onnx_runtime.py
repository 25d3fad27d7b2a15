"""Staged inference over an exported model's ONNX graphs with onnxruntime, one input at a time
or a batch at a time (``run_batch``: samples that have their answer leave the batch, a graph runs
on the rows that take it).

This is the runtime a deployment runs, and the one the tests and benchmarks
check against PyTorch: it reads ``card.json`` (the runtime policy and the graph
manifest ``onnx.graphs``) and runs the graphs in order, skipping what the policy
says to skip, as the PyTorch model does at batch size 1 in eval. Every graph
takes one input, ``input``: the model's input for the first graph, otherwise the
latest ``features`` a graph returned.

What a graph's ``role`` means (exit, gate, block, segment, halting, head: whether
it runs and what its outputs decide) is not written here: ``dynamic.rules``
holds one handler per role, calling the same rule functions the PyTorch eval
forward calls (``rules.staged_role``).

It needs numpy and onnxruntime only (no torch).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dynsearch.dynamic.rules import StagedRun, staged_role

INPUT_NAME = "input"


@dataclass
class Decision:
    """What the runtime did for one input: its class, the MACs of the graphs that ran
    (from the manifest's per-graph ``macs``), and the decisions it took."""

    prediction: int
    macs: int
    exit_stage: int | None = None  # early exit / predicted depth: the stage whose head answered
    gates: list[bool] = field(default_factory=list)  # gated blocks: whether each gated block ran
    graphs_run: list[str] = field(default_factory=list)
    logits: np.ndarray | None = None  # the answering graph's logits (``run_batch`` records them)


def _session_options(threads: int):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return options


class StagedRuntime:
    """The staged graphs of one exported model, ready to run one input at a time.

    Args:
        folder: the model folder (its ``card.json`` and graph files).
        int8: run the int8 graphs of ``dynsearch export --quantize int8`` instead of the float ones.
        threads: onnxruntime's intra-op threads.
    """

    def __init__(self, folder: str | Path, int8: bool = False, threads: int = 1, card: dict | None = None):
        import onnxruntime

        folder = Path(folder)
        card = card or json.loads((folder / "card.json").read_text(encoding="utf-8"))
        if not card.get("onnx"):
            raise ValueError(f"{folder}: no ONNX graphs in card.json; export with --format onnx")
        self.policy = card["runtime_policy"]
        self.graphs = card["onnx"]["graphs"]
        self.roles = [staged_role(g["role"]) for g in self.graphs]
        files = card["int8"]["files"] if int8 else [g["file"] for g in self.graphs]
        options = _session_options(threads)
        self.sessions = [onnxruntime.InferenceSession(str(folder / f), options, providers=["CPUExecutionProvider"])
                         for f in files]

    def run(self, inputs) -> list[Decision]:
        """One Decision per input of ``inputs`` (float32 [N, ...]), each run alone (batch size 1)."""
        return [self(x) for x in np.asarray(inputs, dtype=np.float32)]

    def run_batch(self, inputs, batch_size: int = 256) -> list[Decision]:
        """One Decision per input of ``inputs`` (float32 [N, ...]), ``batch_size`` inputs per graph call.

        Within a batch every graph runs once, on the rows that take it (a gate said on, the chosen
        depth), and a row that has its answer leaves the batch, as the PyTorch eval forward compacts
        it; each row's decisions are taken by the same role handlers as ``__call__``'s, one row at a
        time, so the two cannot decide differently (the graphs' round-off at another batch size aside)."""
        inputs = np.asarray(inputs, dtype=np.float32)
        decisions: list[Decision] = []
        for start in range(0, len(inputs), batch_size):
            decisions += self._batch(inputs[start : start + batch_size])
        return decisions

    def _batch(self, inputs: np.ndarray) -> list[Decision]:
        count = len(inputs)
        runs = [StagedRun(self.policy, np) for _ in range(count)]
        macs, ran, logits_of = [0] * count, [[] for _ in range(count)], [None] * count
        active = np.arange(count)  # rows still running, in order; ``features`` holds theirs
        features = inputs
        for graph, session, role in zip(self.graphs, self.sessions, self.roles):
            if not len(active):
                break
            takes = np.fromiter((role.runs(graph, runs[i]) for i in active), dtype=bool, count=len(active))
            if not takes.any():
                continue
            every = bool(takes.all())
            where = None if every else np.flatnonzero(takes)
            outputs = dict(zip(graph["outputs"],
                               session.run(None, {INPUT_NAME: features if every else features[where]})))
            if "features" in outputs:
                if every:
                    features = outputs["features"]
                else:  # a graph some rows skip (a gated block) keeps the feature shape
                    features = features.copy()
                    features[where] = outputs["features"]
            done = np.zeros(len(active), dtype=bool)
            for k, position in enumerate(range(len(active)) if every else where):
                row = int(active[position])
                run = runs[row]
                macs[row] += graph["macs"]
                ran[row].append(graph["file"])
                role.decide(graph, {name: value[k : k + 1] for name, value in outputs.items()}, run)
                if run.prediction is not None:
                    logits_of[row] = outputs["logits"][k]
                    done[position] = True
            if done.any():
                active, features = active[~done], features[~done]
        if len(active):
            raise ValueError("the graphs ended without an answer: the manifest is not a staged form")
        return [Decision(run.prediction, macs[i], run.exit_stage, run.gates, ran[i], logits_of[i])
                for i, run in enumerate(runs)]

    def __call__(self, x: np.ndarray) -> Decision:
        """Staged inference on one input (no batch axis)."""
        features = np.asarray(x, dtype=np.float32)[None]
        run = StagedRun(self.policy, np)
        macs, ran = 0, []
        for graph, session, role in zip(self.graphs, self.sessions, self.roles):
            if not role.runs(graph, run):
                continue
            outputs = dict(zip(graph["outputs"], session.run(None, {INPUT_NAME: features})))
            macs += graph["macs"]
            ran.append(graph["file"])
            features = outputs.get("features", features)
            role.decide(graph, outputs, run)
            if run.prediction is not None:
                return Decision(run.prediction, macs, run.exit_stage, run.gates, ran)
        raise ValueError("the graphs ended without an answer: the manifest is not a staged form")
