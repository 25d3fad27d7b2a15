"""Early-exit networks.

BranchyNet: Teerapittayanon, McDanel & Kung, "BranchyNet: Fast Inference via
Early Exiting from Deep Neural Networks", ICPR 2016. Exit heads sit after
chosen stages; training minimises the weighted joint loss sum_n w_n * CE_n
over every head; at inference a sample leaves at the first head whose
confidence reaches the threshold (here the maximum softmax probability), and
the stages after it are never computed for that sample.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from dynsearch.backbones import build_backbone, make_head, stage_output_shapes
from dynsearch.dynamic.base import (
    DynamicModel, DynamicOutput, OnnxForm, OnnxPart, Trace, register_mechanism,
)


@register_mechanism(
    "exits",
    family="early-exit",
    paper="BranchyNet (Teerapittayanon et al., ICPR 2016): max-softmax confidence exits",
)
class EarlyExitNet(DynamicModel):
    """A backbone with exit heads after the stages listed in ``config["exits"]["stages"]``.

    Config keys: ``input_shape``, ``num_classes``, ``backbone`` (see
    backbones.py) and ``exits``: ``stages`` (indices of stages followed by an
    exit head; the last stage always ends in the final classifier),
    ``head_width`` (hidden width of each exit head, 0 for a linear head),
    ``threshold`` (max-softmax confidence needed to exit) and ``loss_weight``
    (weight of each exit head's loss; the final classifier's weight is 1).
    """

    def __init__(self, config: dict[str, Any]):
        super().__init__(config)
        exits = config["exits"]
        self.stem, stages = build_backbone(config)
        self.stages = nn.ModuleList(stages)
        shapes = stage_output_shapes(self.stem, stages, config["input_shape"])
        last = len(stages) - 1
        self.exit_stages = sorted({int(i) for i in exits["stages"] if 0 <= int(i) < last})
        num_classes = config["num_classes"]
        self.heads = nn.ModuleDict(
            {
                str(i): make_head(shapes[i], num_classes, exits.get("head_width") or None)
                for i in self.exit_stages
            }
        )
        self.classifier = make_head(shapes[last], num_classes)
        self._exit_set = set(self.exit_stages)
        # Plain lookups for the batch-1 hot path (the modules stay registered in self.heads).
        self._head_by_stage = [self.heads[str(i)] if i in self._exit_set else None for i in range(len(stages))]
        self._stage_names = [f"stage{i}" for i in range(len(stages))]
        self._exit_names = [f"exit{i}" for i in range(len(stages))]
        self._component_names = list(self.components())
        self.threshold = float(exits["threshold"])
        self.loss_weight = float(exits.get("loss_weight", 1.0))

    # -- contract -----------------------------------------------------------
    def components(self) -> dict[str, nn.Module]:
        parts = {"stem": self.stem}
        parts.update({f"stage{i}": stage for i, stage in enumerate(self.stages)})
        parts.update({f"exit{i}": self.heads[str(i)] for i in self.exit_stages})
        parts["classifier"] = self.classifier
        return parts

    def static_components(self) -> list[str]:
        return ["stem", *(f"stage{i}" for i in range(len(self.stages))), "classifier"]

    def trace_stats(self, trace: Trace) -> dict[str, Any]:
        """``exit_histogram``: fraction of samples leaving at each exit (``exit_stages``, the last is the final classifier)."""
        stages = [*self.exit_stages, len(self.stages) - 1]
        exit_index = trace.records["exit_index"]
        total = max(1, exit_index.numel())
        return {
            "exit_stages": stages,
            "exit_histogram": [int((exit_index == s).sum()) / total for s in stages],
        }

    # -- export ---------------------------------------------------------------
    def runtime_policy(self) -> dict[str, Any]:
        return {
            "kind": "early-exit",
            "rule": "after each exit head, leave when confidence >= threshold; the final classifier always answers",
            "confidence": "max softmax probability",
            "threshold": self.threshold,
            "exit_stages": list(self.exit_stages),
            "final_stage": len(self.stages) - 1,
        }

    def onnx_form(self) -> OnnxForm:
        """One graph per exit: the stages since the previous exit plus this exit's head
        (the first graph also holds the stem, the last ends in the final classifier)."""
        parts: list[OnnxPart] = []
        body: list[nn.Module] = [self.stem]
        first = 0
        last = len(self.stages) - 1
        for i, stage in enumerate(self.stages):
            body.append(stage)
            if i not in self._exit_set and i != last:
                continue
            head = self.classifier if i == last else self.heads[str(i)]
            name = f"segment{len(parts)}"
            source = "input" if not parts else f"{parts[-1].name}/features"
            info = {"stages": list(range(first, i + 1)), "exit_stage": i, "final": i == last}
            parts.append(OnnxPart(name, _ExitSegment(body, head), ("features", "logits", "confidence"), source, info))
            body, first = [], i + 1
        return OnnxForm(
            "staged early exit: run the segments in order, each on the previous one's features; "
            "stop after a segment whose confidence >= threshold",
            parts,
        )

    def task_loss(self, output: DynamicOutput, target: torch.Tensor) -> torch.Tensor:
        if output.head_logits is None:  # eval output: only the exits taken
            return nn.functional.cross_entropy(output.logits, target)
        *exit_logits, final_logits = output.head_logits
        loss = nn.functional.cross_entropy(final_logits, target)
        for logits in exit_logits:
            loss = loss + self.loss_weight * nn.functional.cross_entropy(logits, target)
        return loss

    def forward(self, x: torch.Tensor) -> DynamicOutput:
        if self.training:
            return self._forward_all(x)
        return self._forward_exiting(x)

    # -- training: every head on every sample --------------------------------
    def _forward_all(self, x: torch.Tensor) -> DynamicOutput:
        batch = x.shape[0]
        ones = x.new_ones(batch)
        counts = {name: ones for name in self.components()}
        h = self.stem(x)
        head_logits = []
        for i, stage in enumerate(self.stages):
            h = stage(h)
            if i in self._exit_set:
                head_logits.append(self.heads[str(i)](h))
        head_logits.append(self.classifier(h))
        exit_index = torch.full((batch,), len(self.stages) - 1, dtype=torch.long)
        trace = Trace(counts, {"exit_index": exit_index})
        return DynamicOutput(head_logits[-1], trace, head_logits)

    # -- eval: leave at the first confident head -----------------------------
    def _leave(self, logits: torch.Tensor) -> torch.Tensor:
        """The exit decision per sample: max-softmax confidence reaches the threshold."""
        return logits.softmax(dim=1).amax(dim=1) >= self.threshold

    def _forward_one(self, x: torch.Tensor) -> DynamicOutput:
        """Batch size 1: one decision per head, a single sync each, no index bookkeeping."""
        h = self.stem(x)
        ran = ["stem"]
        for i, (stage, head) in enumerate(zip(self.stages, self._head_by_stage)):
            h = stage(h)
            ran.append(self._stage_names[i])
            if head is not None:
                logits = head(h)
                ran.append(self._exit_names[i])
                if bool(self._leave(logits)):
                    return DynamicOutput(logits, Trace.single(self._component_names, ran, exit_index=i))
        ran.append("classifier")
        exit_index = len(self.stages) - 1
        return DynamicOutput(self.classifier(h), Trace.single(self._component_names, ran, exit_index=exit_index))

    def forward_static(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        for stage in self.stages:
            h = stage(h)
        return self.classifier(h)

    def timed_components(self, device: torch.device):
        calls = super().timed_components(device)
        for i in self.exit_stages:  # an exit head's time includes its decision and the sync it needs
            head_call = calls[f"exit{i}"]
            calls[f"exit{i}"] = lambda head_call=head_call: bool(self._leave(head_call()))
        return calls

    def _forward_exiting(self, x: torch.Tensor) -> DynamicOutput:
        batch = x.shape[0]
        if batch == 1:
            return self._forward_one(x)
        last = len(self.stages) - 1
        counts = {name: x.new_zeros(batch) for name in self.components()}
        counts["stem"] += 1
        exit_index = torch.full((batch,), last, dtype=torch.long)
        logits_out = None
        alive = torch.arange(batch)  # samples still running
        h = self.stem(x)
        for i, stage in enumerate(self.stages):
            h = stage(h)
            counts[f"stage{i}"][alive] += 1
            if i == last:
                break
            head = self.heads[str(i)] if i in self._exit_set else None
            if head is None:
                continue
            logits = head(h)
            counts[f"exit{i}"][alive] += 1
            leave = self._leave(logits)
            if logits_out is None:
                logits_out = logits.new_zeros(batch, logits.shape[1])
            if leave.any():
                gone = alive[leave]
                logits_out[gone] = logits[leave]
                exit_index[gone] = i
                stay = ~leave
                alive, h = alive[stay], h[stay]
                if alive.numel() == 0:
                    return DynamicOutput(logits_out, Trace(counts, {"exit_index": exit_index}))
        logits = self.classifier(h)
        counts["classifier"][alive] += 1
        if logits_out is None:
            logits_out = logits
        else:
            logits_out[alive] = logits
        return DynamicOutput(logits_out, Trace(counts, {"exit_index": exit_index}))


class _ExitSegment(nn.Module):
    """Stages followed by a head, as one ONNX graph: returns (features, logits, confidence).

    ``confidence`` is the same max-softmax probability the eval forward compares with the threshold.
    """

    def __init__(self, body: list[nn.Module], head: nn.Module):
        super().__init__()
        self.body = nn.Sequential(*body)
        self.head = head

    def forward(self, x: torch.Tensor):
        features = self.body(x)
        logits = self.head(features)
        return features, logits, logits.softmax(dim=1).amax(dim=1)
