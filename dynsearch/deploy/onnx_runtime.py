"""Staged inference over an exported model's ONNX graphs with onnxruntime, one input at a time.

This is the runtime a deployment runs, and the one the tests and benchmarks
check against PyTorch: it reads ``card.json`` (the runtime policy and the graph
manifest ``onnx.graphs``) and runs the graphs in order, skipping what the policy
says to skip, as the PyTorch model does at batch size 1 in eval. Every graph
takes one input, ``input``: the model's input for the first graph, otherwise the
latest ``features`` a graph returned. Each graph has a ``role``:

- ``exit``: returns features and logits (and the policy's score); answer here if
  it is the final one or the early-exit rule says leave;
- ``gate``: returns logits (off, on); the ``block`` graph after it runs only when on > off;
- ``halting``: returns features and the depth logits; the ``head`` graph of the
  chosen depth answers (predicted depth), the others never run;
- ``segment`` / ``block``: return features.

It needs numpy and onnxruntime only (no torch).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

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
        macs, gates, ran = 0, [], []
        gate_on, depth, streak, previous = True, None, 0, None
        for graph, session in zip(self.graphs, self.sessions):
            role = graph["role"]
            if role == "block" and not gate_on:
                continue
            if role == "head" and graph["exit_stage"] != depth:
                continue
            outputs = dict(zip(graph["outputs"], session.run(None, {INPUT_NAME: features})))
            macs += graph["macs"]
            ran.append(graph["file"])
            if role == "gate":
                logits = outputs["logits"][0]
                gate_on = bool(logits[1] + np.float32(self.policy.get("gate_bias", 0.0)) > logits[0])
                gates.append(gate_on)
                continue
            features = outputs.get("features", features)
            if role == "halting":
                scores = outputs["depth_logits"][0]
                shift = np.float32(self.policy.get("depth_shift", 0.0))
                if shift:  # the operating-point knob, as DepthAdaptiveTransformer.halting_depth applies it
                    scores = scores - shift * np.arange(len(scores), dtype=np.float32)
                depth = graph["depths"][int(scores.argmax())]
            elif role == "head":
                return Decision(int(outputs["logits"][0].argmax()), macs, depth, gates, ran)
            elif role == "exit":
                prediction = int(outputs["logits"][0].argmax())
                if self.policy.get("policy") == "patience":
                    streak = streak + 1 if prediction == previous else 0
                    previous = prediction
                    leave = streak >= self.policy["patience"]
                else:
                    leave = graph.get("exit_stage") is not None and self._leave(outputs)
                if graph["final"] or leave:
                    return Decision(prediction, macs, graph.get("exit_stage"), gates, ran)
        raise ValueError("the graphs ended without an answer: the manifest is not a staged form")

    def _leave(self, outputs: dict[str, np.ndarray]) -> bool:
        """The early-exit rule on a graph's score, compared in float32 as PyTorch compares it."""
        threshold = np.float32(self.policy["threshold"])
        policy = self.policy["policy"]
        if policy == "confidence":
            return bool(outputs["confidence"][0] >= threshold)
        if policy == "entropy":
            return bool(outputs["entropy"][0] < threshold)
        if policy == "fastbert":
            return bool(outputs["normalized_entropy"][0] < threshold)
        raise ValueError(f"exit policy {policy!r} has no staged ONNX rule")
