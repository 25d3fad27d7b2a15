"""Depth-adaptive Transformer encoder: a classifier after chosen layers, one exit depth per sequence.

Elbayad, Gu, Grave & Auli, "Depth-Adaptive Transformer", ICLR 2020
(arXiv 1910.10073). A Transformer encoder (backbone kind ``transformer``,
one stage per layer group) carries an exit classifier after the chosen
layers; every sequence leaves at one depth, and the layers after it are never
computed for that sequence. The exit classifiers are trained together
("aligned" training: every exit on every sequence; ``loss_weight: 1`` gives the
paper's uniform average up to scale).

The depth is chosen by ``exits.policy``:

- ``predicted``: the paper's sequence-level multinomial halting. A halting
  classifier reads the mean of the embedded input states and picks the exit
  depth before any layer runs, q(n | x) = softmax(W s + b); only that exit's
  classifier runs. It is trained by cross-entropy towards the oracle depth
  q* = argmin_n CE_n + depth_penalty * n (the paper's likelihood-based oracle
  with its depth regulariser), scaled by ``halting_weight``.
- any rule of ``exits.py`` (``confidence``, ``entropy``, ``fastbert``,
  ``patience``), applied per sequence after each exit.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from dynsearch.models.backbones import SequenceMean
from dynsearch.dynamic import rules
from dynsearch.dynamic.base import (
    DynamicOutput, OnnxForm, OnnxPart, OnnxSequence, Trace, register_mechanism, tiny_train,
)
from dynsearch.dynamic.exits import EarlyExitNet

DEPTH_SHIFT_GRID = (-2.0, -1.0, -0.5, -0.25, 0.0, 0.25, 0.5, 1.0, 2.0, 4.0)  # the operating-point sweep's values


def _tiny(policy: str, **exits: Any) -> dict[str, Any]:
    return {
        "mechanism": "depth_adaptive",
        "input_shape": [6, 8],
        "num_classes": 4,
        "backbone": {"kind": "transformer", "widths": [8, 8, 8], "depth": 1, "heads": 2},
        "exits": {"stages": [0, 1], "head_width": 0, "policy": policy, "loss_weight": 1.0, **exits},
        "train": tiny_train(),
        "trial": 0,
    }


@register_mechanism(
    "depth_adaptive",
    family="exits",
    paper="Depth-Adaptive Transformer (Elbayad et al., ICLR 2020, arXiv 1910.10073): per-sequence exit depth",
)
class DepthAdaptiveTransformer(EarlyExitNet):
    """An ``EarlyExitNet`` over a Transformer encoder, with the paper's predicted-depth halting.

    Extra ``exits`` keys: ``policy: predicted``, ``depth_penalty`` (nats per
    exit of depth in the oracle), ``halting_weight`` and the runtime knob ``depth_shift``
    (subtracted, times the depth index, from the halting logits at eval; default 0).
    """

    def __init__(self, config: dict[str, Any]):
        exits = config["exits"]
        predicted = exits.get("policy") == "predicted"
        if predicted:  # the parent validates the threshold rules only
            config = {**config, "exits": {**exits, "policy": "confidence"}}
        if config["backbone"]["kind"] != "transformer":
            raise ValueError(f"depth_adaptive needs backbone kind 'transformer' (got {config['backbone']['kind']!r})")
        super().__init__(config)
        self.predicted = predicted
        self.config["exits"]["policy"] = exits.get("policy", "confidence")
        self.depths = [*self.exit_stages, len(self.stages) - 1]  # exit stage of each halting class
        self.depth_penalty = float(exits.get("depth_penalty", 0.1))
        self.halting_weight = float(exits.get("halting_weight", 1.0))
        self.depth_shift = float(exits.get("depth_shift", 0.0))  # a runtime knob: eval decisions only
        if self.predicted:
            width = config["backbone"]["widths"][0]
            self.halting = nn.Sequential(SequenceMean(), nn.Linear(width, len(self.depths)))
        self._component_names = list(self.components())  # the parent listed them before the halting unit

    @classmethod
    def tiny_configs(cls) -> list[dict[str, Any]]:
        return [
            _tiny("predicted", depth_penalty=0.1),
            _tiny("confidence", threshold=0.98),
            _tiny("patience", patience=1, training="two_stage"),
        ]

    def components(self) -> dict[str, nn.Module]:
        parts = super().components()
        if getattr(self, "predicted", False):  # also called from the parent's __init__
            parts = {"stem": parts.pop("stem"), "halting": self.halting, **parts}
        return parts

    def decision_components(self) -> list[str]:
        return [*super().decision_components(), *(["halting"] if self.predicted else [])]

    def runtime_policy(self) -> dict[str, Any]:
        if not self.predicted:
            return super().runtime_policy()
        return {
            "kind": "depth-adaptive",
            "policy": "predicted",
            "rule": "a halting classifier on the mean embedded input picks the exit depth before any layer runs; "
                    "the layers up to it run and only that exit's classifier answers; "
                    "depth_shift * n is subtracted from the logit of the n-th depth first",
            "depth_shift": self.depth_shift,
            "exit_stages": list(self.exit_stages),
            "final_stage": len(self.stages) - 1,
        }

    def runtime_knobs(self) -> dict[str, list[float]]:
        """Predicted depth: ``depth_shift``, subtracted per exit of depth from the halting logits
        (positive: shallower, negative: deeper); the threshold rules: as ``exits``."""
        if not self.predicted:
            return super().runtime_knobs()
        return {"depth_shift": sorted({*DEPTH_SHIFT_GRID, self.depth_shift})}

    def set_runtime_knobs(self, values: dict[str, float]) -> None:
        if not self.predicted:
            return super().set_runtime_knobs(values)
        for name, value in values.items():
            if name != "depth_shift":
                raise ValueError(f"predicted-depth halting has the runtime knob ['depth_shift'], not {name!r}")
            self.depth_shift = self.config["exits"]["depth_shift"] = float(value)

    def halting_depth(self, embedded: torch.Tensor) -> torch.Tensor:
        """Index of the chosen depth per sequence: argmax_n of the halting logits - depth_shift * n."""
        return self._pick_depth(self.halting(embedded))

    def _pick_depth(self, scores: torch.Tensor) -> torch.Tensor:
        """``rules.predicted_depth`` over halting logits [B, depths]."""
        index = torch.arange(scores.shape[1], dtype=scores.dtype, device=scores.device)
        return rules.predicted_depth(scores, self.depth_shift, index)

    # -- operating points from one pass ---------------------------------------------
    @torch.no_grad()
    def record(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Predicted depth: also the halting logits, read from the stem's output as the eval forward
        reads them; ``depth_shift`` only moves the argmax over them, so they decide every value."""
        if not self.predicted:
            return super().record(x)
        embedded, logits = self._every_head(x)
        return {"logits": torch.stack(logits, dim=1), "halting_logits": self.halting(embedded)}

    def replay(self, records: dict[str, torch.Tensor]) -> DynamicOutput:
        """Predicted depth: the chosen depth's head answers, and only it ran (no head on the way)."""
        if not self.predicted:
            return super().replay(records)
        taken = self._pick_depth(records["halting_logits"])
        logits = records["logits"]
        return DynamicOutput(logits[torch.arange(logits.shape[0]), taken], self._replayed_trace(taken, False))

    def onnx_form(self) -> OnnxForm | None:
        """A threshold rule: the early-exit form. Predicted depth: a first graph (stem and halting
        unit) returns the features and the halting logits; then per exit a segment graph (the
        layers since the previous exit) and a head graph, which runs only at the chosen depth."""
        if not self.predicted:
            return super().onnx_form()
        parts = [OnnxPart("stem", _StemAndHalting(self.stem, self.halting), ("features", "depth_logits"), "input",
                          {"role": "halting", "depths": list(self.depths), "components": ["stem", "halting"]})]
        last, body, first, source = len(self.stages) - 1, [], 0, "stem/features"
        for i, stage in enumerate(self.stages):
            body.append(stage)
            if i not in self._exit_set and i != last:
                continue
            n = len(parts) // 2
            stages = list(range(first, i + 1))
            parts.append(OnnxPart(f"segment{n}", OnnxSequence(*body), ("features",), source,
                                  {"role": "segment", "stages": stages, "components": [f"stage{j}" for j in stages]}))
            head, head_name = (self.classifier, "classifier") if i == last else (self.heads[str(i)], f"exit{i}")
            parts.append(OnnxPart(f"head{n}", OnnxSequence(head), ("logits",), f"segment{n}/features",
                                  {"role": "head", "exit_stage": i, "final": i == last, "components": [head_name]}))
            body, first, source = [], i + 1, f"segment{n}/features"
        return OnnxForm("predicted depth: the stem graph's halting logits pick the exit depth (argmax over "
                        "`depths`); run the segments in order up to it, then only that depth's head", parts)

    def timed_components(self, device: torch.device):
        calls = super().timed_components(device)
        if self.predicted:  # the halting unit's time includes picking the depth
            halting_call = calls["halting"]
            calls["halting"] = lambda: int(self._pick_depth(halting_call()))
            for i in self.exit_stages:  # a chosen exit only classifies: no decision there
                calls[f"exit{i}"] = super(EarlyExitNet, self).timed_components(device)[f"exit{i}"]
        return calls

    # -- training ---------------------------------------------------------------
    def task_loss(self, output: DynamicOutput, target: torch.Tensor) -> torch.Tensor:
        loss = super().task_loss(output, target)
        halting_logits = output.trace.records.get("halting_logits")
        if halting_logits is None or output.head_logits is None:
            return loss
        with torch.no_grad():  # the oracle depth: the best likelihood, less a price per exit of depth
            losses = torch.stack([F.cross_entropy(h, target, reduction="none") for h in output.head_logits], 1)
            penalty = self.depth_penalty * torch.arange(len(self.depths), dtype=losses.dtype)
            oracle = (losses + penalty).argmin(dim=1)
        return loss + self.halting_weight * F.cross_entropy(halting_logits, oracle)

    def forward(self, x: torch.Tensor) -> DynamicOutput:
        if not self.predicted:
            return super().forward(x)
        if self.training:
            return self._forward_all_predicted(x)
        return self._forward_predicted(x)

    def _forward_all_predicted(self, x: torch.Tensor) -> DynamicOutput:
        batch = x.shape[0]
        embedded, head_logits = self._every_head(x)
        final_logits = head_logits[-1]
        ones = x.new_ones(batch)
        records = {"exit_index": torch.full((batch,), len(self.stages) - 1, dtype=torch.long),
                   "halting_logits": self.halting(embedded)}
        return DynamicOutput(final_logits, Trace({name: ones for name in self.components()}, records), head_logits)

    # -- eval: the depth is chosen before any layer runs --------------------------
    def _forward_predicted(self, x: torch.Tensor) -> DynamicOutput:
        """What ran per sample follows from its chosen depth (``exit_index``), so the trace's counts are
        derived from it only when read (``_depth_counts``): serving pays no per-stage bookkeeping."""
        batch = x.shape[0]
        last = len(self.stages) - 1
        h = self.stem(x)
        exit_index = torch.tensor(self.depths)[self.halting_depth(h)]
        logits_out = None
        alive = torch.arange(batch)
        for i, stage in enumerate(self.stages):
            h = stage(h)
            head = self.classifier if i == last else self.heads[str(i)] if i in self._exit_set else None
            if head is None:
                continue
            leave = exit_index[alive] == i
            if not leave.any():
                continue
            logits = head(h[leave])
            if logits_out is None:
                logits_out = logits.new_zeros(batch, logits.shape[1])
            logits_out[alive[leave]] = logits
            alive, h = alive[~leave], h[~leave]
            if alive.numel() == 0:
                break
        return DynamicOutput(logits_out, Trace.derived({"exit_index": exit_index}, self._depth_counts))

    def _depth_counts(self, records: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Per component, whether it ran for each sample, from its chosen depth: the stem and the halting
        unit always, every stage up to that depth, and only the head at it."""
        exit_index = records["exit_index"]
        ran = {"stem": torch.ones(len(exit_index)), "halting": torch.ones(len(exit_index)),
               "classifier": (exit_index == len(self.stages) - 1).float()}
        ran.update({f"stage{i}": (exit_index >= i).float() for i in range(len(self.stages))})
        ran.update({f"exit{i}": (exit_index == i).float() for i in self.exit_stages})
        return {name: ran[name] for name in self.components()}


class _StemAndHalting(nn.Module):
    """The first graph of the predicted-depth form: returns (embedded input, halting logits)."""

    def __init__(self, stem: nn.Module, halting: nn.Module):
        super().__init__()
        self.stem, self.halting = stem, halting

    def forward(self, x: torch.Tensor):
        features = self.stem(x)
        return features, self.halting(features)
