"""Staged inference over an exported model's ONNX graphs with onnxruntime, one input at a time.

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
