"""Early-exit networks: exit heads after chosen stages, and the exit policies of the seed papers.

Exit policies (``exits.policy``), each the paper's own rule:

- ``confidence``: leave at the first head whose maximum softmax probability
  reaches ``threshold`` (the max-probability criterion used with BranchyNet-
  style exits, e.g. Teerapittayanon et al. ICPR 2016, Berestizshevsky & Even
  2018).
- ``entropy``: leave at the first head whose softmax entropy (nats) is below
  ``threshold`` -- BranchyNet (Teerapittayanon, McDanel & Kung, ICPR 2016),
  DeeBERT (Xin et al., ACL 2020, arXiv 2004.12993).
- ``fastbert``: leave when the normalised entropy, entropy / log K, is below
  ``threshold`` (FastBERT's "speed"); the exit heads learn by self-distillation,
  KL(final || exit) (Liu et al., ACL 2020, arXiv 2004.02178).
- ``patience``: PABEE (Zhou et al., NeurIPS 2020, arXiv 2006.04152): a counter
  grows while consecutive heads agree on the argmax and resets otherwise; leave
  when it reaches ``patience`` (so patience + 1 heads in a row agree).

Training schemes (``exits.training``):

- ``joint``: sum_n w_n * L_n over every head. ``loss_weights: constant`` gives
  each exit ``loss_weight`` and the final classifier 1 (BranchyNet);
  ``linear`` is PABEE's weighted average sum_j j * L_j / sum_j j.
- ``two_stage``: DeeBERT / FastBERT. The first half of training fits the
  backbone and final classifier alone; the second half freezes them (no
  gradients, batch-norm statistics frozen) and fits only the exit heads
  (sum of their losses).

L_n is the cross-entropy of head n, or for ``fastbert`` KL(final || exit n)
against the (detached) final classifier.
"""
from __future__ import annotations

import contextlib
import math
import struct
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from dynsearch.models.backbones import final_classifier, make_head, stage_output_shapes
from dynsearch.models.build import build_backbone
from dynsearch.dynamic import rules
from dynsearch.dynamic.base import (
    DynamicModel, DynamicOutput, OnnxForm, OnnxPart, StatView, Trace, listed, register_mechanism,
    tiny_train,
)

POLICIES = ("confidence", "entropy", "fastbert", "patience")
TRAINING_SCHEMES = ("joint", "two_stage")
LOSS_WEIGHTS = ("constant", "linear")
# Thresholds the operating-point sweep tries: max softmax probability (low values leave early), and
# entropy / log K (FastBERT's speed, times log K for the entropy rule in nats; high values leave early).
CONFIDENCE_GRID = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.93, 0.95, 0.97, 0.98, 0.99, 0.995, 0.999)
NORMALISED_ENTROPY_GRID = (0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8)


def entropy_nats(logits: torch.Tensor) -> torch.Tensor:
    """Softmax entropy of each row, in nats."""
    log_p = logits.log_softmax(dim=1)
    return -(log_p.exp() * log_p).sum(dim=1)


def exit_score(policy: str, logits: torch.Tensor) -> torch.Tensor:
    """[B]: what a threshold policy compares with its threshold (also an output of its ONNX exit graphs)."""
    if policy == "confidence":
        return logits.softmax(dim=1).amax(dim=1)
    if policy == "entropy":
        return entropy_nats(logits)
    if policy == "fastbert":
        return entropy_nats(logits) / math.log(logits.shape[1])
    raise ValueError(f"unknown exit policy {policy!r}; use one of {POLICIES}")


def score_value(score: torch.Tensor) -> float:
    """A one-sample score as a Python float (detached first when it carries a gradient: an eval forward
    outside ``no_grad``)."""
    return float(score.detach() if score.requires_grad else score)


def as_float32(value: float) -> float:
    """``value`` rounded to float32, as a comparison of a float32 tensor with a Python number rounds it."""
    return struct.unpack("f", struct.pack("f", value))[0]


def confident(policy: str, logits: torch.Tensor, threshold: float) -> torch.Tensor:
    """Bool [B]: does each sample leave at this head under a threshold policy (``rules.exit_leaves``)?"""
    return rules.exit_leaves(policy, exit_score(policy, logits), threshold)


def _tiny(policy: str = "confidence", **exits: Any) -> dict[str, Any]:
    return {
        "mechanism": "exits",
        "input_shape": [1, 8, 8],
        "num_classes": 10,
        "backbone": {"kind": exits.pop("kind", "cnn"), "widths": [4, 8, 8], "depth": 1,
                     **({"classifier": exits.pop("classifier")} if "classifier" in exits else {})},
        "exits": {"stages": [0, 1], "head_width": 8, "policy": policy, "loss_weight": 0.5, **exits},
        "train": tiny_train(),
        "trial": 0,
    }


@register_mechanism(
    "exits",
    family="exits",
    paper="BranchyNet (Teerapittayanon et al., ICPR 2016) with the exit rules of DeeBERT "
    "(arXiv 2004.12993), FastBERT (arXiv 2004.02178) and PABEE (arXiv 2006.04152)",
)
class EarlyExitNet(DynamicModel):
    """A backbone with exit heads after the stages listed in ``config["exits"]["stages"]``.

    Config keys: ``input_shape``, ``num_classes``, ``backbone`` (see
    backbones.py) and ``exits``: ``stages`` (indices of stages followed by an
    exit head; the last stage always ends in the final classifier),
    ``head_width`` (hidden width of each exit head, 0 for a linear head),
    ``policy`` (see the module docstring; default ``confidence``),
    ``threshold`` (its threshold), ``patience`` (``patience`` policy),
    ``training`` (``joint`` or ``two_stage``), ``loss_weights``
    (``constant`` or ``linear``) and ``loss_weight`` (each exit's weight
    under ``constant``; the final classifier's weight is 1).
    """

    def __init__(self, config: dict[str, Any]):
        super().__init__(config)
        exits = config["exits"]
        self.policy = exits.get("policy", "confidence")
        self.training_scheme = exits.get("training", "joint")
        self.loss_weights = exits.get("loss_weights", "constant")
        for value, allowed in ((self.policy, POLICIES), (self.training_scheme, TRAINING_SCHEMES),
                               (self.loss_weights, LOSS_WEIGHTS)):
            if value not in allowed:
                raise ValueError(f"exits: {value!r} is not one of {allowed}")
        self.threshold = float(exits.get("threshold", 0.9))
        self.patience = int(exits.get("patience", 1))
        self.loss_weight = float(exits.get("loss_weight", 1.0))
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
        self.classifier = final_classifier(shapes[last], config)
        self._exit_set = set(self.exit_stages)
        # Plain lookups for the batch-1 hot path (the modules stay registered in self.heads).
        self._head_by_stage = [self.heads[str(i)] if i in self._exit_set else None for i in range(len(stages))]
        self._stage_names = [f"stage{i}" for i in range(len(stages))]
        self._exit_names = [f"exit{i}" for i in range(len(stages))]
        self._component_names = list(self.components())
        self._full_path = ["stem", *self._stage_names, "classifier"]  # what an exit-free model runs

    @classmethod
    def tiny_configs(cls) -> list[dict[str, Any]]:
        return [
            _tiny("confidence", threshold=0.135),
            _tiny("entropy", threshold=2.22, training="two_stage", kind="mlp"),
            _tiny("fastbert", threshold=0.9, loss_weights="linear", kind="resnet"),
            _tiny("patience", patience=1, loss_weights="linear", classifier="flatten"),  # + a flattened classifier
        ]

    # -- display ------------------------------------------------------------
    stat_views = {"exit_histogram": StatView("exit histogram", "each trial's own exits: after stage n, or its final "
                                             "classifier", "share of samples", "exit_stages", final_label="final")}

    @classmethod
    def placement(cls, config: dict[str, Any]) -> str:
        """The stages followed by an exit head."""
        return listed(config["exits"].get("stages"))

    @classmethod
    def stat_summary(cls, stats: dict[str, Any]) -> list[tuple[str, str]]:
        if "exit_histogram" not in stats:
            return []
        shares = ", ".join(f"stage {s}: {f:.0%}" for s, f in zip(stats["exit_stages"], stats["exit_histogram"]))
        return [("exits taken", shares)]

    # -- contract -----------------------------------------------------------
    def components(self) -> dict[str, nn.Module]:
        parts = {"stem": self.stem}
        parts.update({f"stage{i}": stage for i, stage in enumerate(self.stages)})
        parts.update({f"exit{i}": self.heads[str(i)] for i in self.exit_stages})
        parts["classifier"] = self.classifier
        return parts

    def static_components(self) -> list[str]:
        return ["stem", *(f"stage{i}" for i in range(len(self.stages))), "classifier"]

    def decision_components(self) -> list[str]:
        return [f"exit{i}" for i in self.exit_stages]

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
    RULES = {
        "confidence": "after each exit head, leave when the max softmax probability >= threshold",
        "entropy": "after each exit head, leave when the softmax entropy (nats) < threshold",
        "fastbert": "after each exit head, leave when entropy / log(num_classes) < threshold (FastBERT's speed)",
        "patience": "leave once `patience` consecutive exit heads agreed with the previous head's argmax (PABEE)",
    }

    def runtime_policy(self) -> dict[str, Any]:
        knob = {"patience": self.patience} if self.policy == "patience" else {"threshold": self.threshold}
        return {
            "kind": "early-exit",
            "policy": self.policy,
            "rule": self.RULES[self.policy] + "; the final classifier always answers",
            **knob,
            "exit_stages": list(self.exit_stages),
            "final_stage": len(self.stages) - 1,
        }

    def runtime_knobs(self) -> dict[str, list[float]]:
        """``threshold`` (confidence, entropy, FastBERT's speed) or ``patience`` (PABEE): a grid
        from always leaving at the first exit to (nearly) never leaving early, plus the trained value.
        None without exits: every value gives the same model, so there is nothing to sweep."""
        if not self.exit_stages:
            return {}
        if self.policy == "patience":  # patience >= number of exits: only the final classifier answers
            return {"patience": list(range(len(self.exit_stages) + 1))}
        scale = math.log(self.config["num_classes"]) if self.policy == "entropy" else 1.0
        grid = CONFIDENCE_GRID if self.policy == "confidence" else [v * scale for v in NORMALISED_ENTROPY_GRID]
        return {"threshold": sorted({*grid, self.threshold})}

    def set_runtime_knobs(self, values: dict[str, float]) -> None:
        knob = "patience" if self.policy == "patience" else "threshold"  # settable without exits too (no effect)
        for name, value in values.items():
            if name != knob:
                raise ValueError(f"{self.policy} exits have the runtime knob {[knob]}, not {name!r}")
            if name == "patience" and (value != int(value) or value < 0):
                raise ValueError(f"patience must be a whole number >= 0, not {value!r}")
            setattr(self, name, int(value) if name == "patience" else float(value))
            self.config["exits"][name] = getattr(self, name)
    # Per policy: how a card's rule text names its comparison (the comparison itself: rules.EXIT_COMPARISONS).
    COMPARISON_TEXT = {rules.at_least: ">=", rules.below: "<"}

    def onnx_form(self) -> OnnxForm | None:
        """One graph per exit: the stages since the previous exit plus this exit's head
        (the first graph also holds the stem, the last ends in the final classifier).
        Each returns the features (the next graph's input), the logits and the score the
        policy compares with its threshold, computed as the eval forward computes it."""
        score = rules.EXIT_SCORES.get(self.policy)  # the score an exit graph returns; PABEE returns none
        compare = self.COMPARISON_TEXT[rules.EXIT_COMPARISONS[self.policy]] if score else None
        outputs = ("features", "logits", *([score] if score else []))
        parts: list[OnnxPart] = []
        body: list[nn.Module] = [self.stem]
        components = ["stem"]
        first = 0
        last = len(self.stages) - 1
        for i, stage in enumerate(self.stages):
            body.append(stage)
            components.append(f"stage{i}")
            if i not in self._exit_set and i != last:
                continue
            head = self.classifier if i == last else self.heads[str(i)]
            components.append("classifier" if i == last else f"exit{i}")
            name = f"segment{len(parts)}"
            source = "input" if not parts else f"{parts[-1].name}/features"
            info = {"role": "exit", "stages": list(range(first, i + 1)), "exit_stage": i, "final": i == last,
                    "components": components}
            parts.append(OnnxPart(name, _ExitSegment(body, head, self.policy), outputs, source, info))
            body, components, first = [], [], i + 1
        rule = (f"stop after a segment whose {score} {compare} threshold" if score else
                "stop once `patience` consecutive segments' argmax agreed with the previous one's (PABEE)")
        return OnnxForm(f"staged early exit ({self.policy}): run the segments in order, each on the "
                        f"previous one's features; {rule}; the last segment always answers", parts)

    # -- training -------------------------------------------------------------
    def heads_only(self) -> bool:
        """Second stage of ``two_stage`` training: backbone and final classifier frozen.
        Without exit heads there is no second stage: the backbone trains throughout."""
        return self.training_scheme == "two_stage" and bool(self.exit_stages) and self.training_progress >= 0.5

    def set_training_progress(self, progress: float) -> None:
        frozen = self.heads_only()
        super().set_training_progress(progress)
        if self.training and frozen != self.heads_only():
            self.train(True)  # re-apply the frozen parts' eval mode

    def train(self, mode: bool = True):
        super().train(mode)
        if mode and self.heads_only():  # frozen batch-norm statistics in the second stage
            for module in (self.stem, self.stages, self.classifier):
                module.eval()
        return self

    def head_loss(self, logits: torch.Tensor, final_logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """An exit head's loss: cross-entropy, or FastBERT's KL(final || exit) self-distillation."""
        if self.policy == "fastbert":
            teacher = final_logits.detach().log_softmax(dim=1)
            return F.kl_div(logits.log_softmax(dim=1), teacher, reduction="batchmean", log_target=True)
        return F.cross_entropy(logits, target)

    def task_loss(self, output: DynamicOutput, target: torch.Tensor) -> torch.Tensor:
        if output.head_logits is None:  # eval output: only the exits taken
            return F.cross_entropy(output.logits, target)
        *exit_logits, final_logits = output.head_logits
        exit_losses = [self.head_loss(logits, final_logits, target) for logits in exit_logits]
        final_loss = F.cross_entropy(final_logits, target)
        if self.training_scheme == "two_stage":
            if self.heads_only():
                return sum(exit_losses, final_logits.new_zeros(()))
            return final_loss
        if self.loss_weights == "linear":  # PABEE: sum_j j * L_j / sum_j j
            losses = [*exit_losses, final_loss]
            return sum(j * loss for j, loss in enumerate(losses, start=1)) / (len(losses) * (len(losses) + 1) / 2)
        return final_loss + self.loss_weight * sum(exit_losses, final_logits.new_zeros(()))

    def forward(self, x: torch.Tensor) -> DynamicOutput:
        if self.training:
            return self._forward_all(x)
        return self._forward_exiting(x)

    # -- training: every head on every sample --------------------------------
    def _run_backbone(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
        """Stem output, features at each exit and final logits; no gradients when frozen (two-stage)."""
        features = []
        with torch.no_grad() if self.heads_only() else contextlib.nullcontext():
            embedded = h = self.stem(x)
            for i, stage in enumerate(self.stages):
                h = stage(h)
                if i in self._exit_set:
                    features.append(h)
            final_logits = self.classifier(h)
        return embedded, features, final_logits

    def _every_head(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Stem output, and the logits of every exit head then the final classifier, each on every sample."""
        embedded, features, final_logits = self._run_backbone(x)
        return embedded, [*(self.heads[str(i)](f) for i, f in zip(self.exit_stages, features)), final_logits]

    def _forward_all(self, x: torch.Tensor) -> DynamicOutput:
        batch = x.shape[0]
        ones = x.new_ones(batch)
        counts = {name: ones for name in self.components()}
        _, head_logits = self._every_head(x)
        final_logits = head_logits[-1]
        exit_index = torch.full((batch,), len(self.stages) - 1, dtype=torch.long)
        trace = Trace(counts, {"exit_index": exit_index})
        return DynamicOutput(final_logits, trace, head_logits)

    # -- eval: leave at the first head the policy accepts --------------------
    def _leave(self, logits: torch.Tensor) -> torch.Tensor:
        """The exit decision per sample under a threshold policy (not ``patience``)."""
        return confident(self.policy, logits, self.threshold)

    def _leave_one(self, logits: torch.Tensor) -> bool:
        """The exit decision for one sample under a threshold policy: the score read back once and compared
        in Python with the threshold rounded to float32, as the batched comparison rounds it (half the cost
        of comparing as a tensor and reading the answer back)."""
        return rules.exit_leaves(self.policy, score_value(exit_score(self.policy, logits)), as_float32(self.threshold))

    def _forward_one(self, x: torch.Tensor) -> DynamicOutput:
        """Batch size 1: one decision per head, a single sync each, no index bookkeeping."""
        if not self.exit_stages:  # nothing to decide: the static path, and its trace
            return DynamicOutput(self.forward_static(x), Trace.single(self._component_names, self._full_path,
                                                                      exit_index=len(self.stages) - 1))
        h = self.stem(x)
        ran = ["stem"]
        previous, streak = None, 0  # PABEE's state
        for i, (stage, head) in enumerate(zip(self.stages, self._head_by_stage)):
            h = stage(h)
            ran.append(self._stage_names[i])
            if head is None:
                continue
            logits = head(h)
            ran.append(self._exit_names[i])
            if self.policy == "patience":
                values = logits[0].tolist()  # one sample's logits: the argmax in Python
                prediction = values.index(max(values))  # the first maximum, as argmax
                streak = rules.patience_streak(streak, prediction, previous)
                previous = prediction
                leave = rules.patience_leaves(streak, self.patience)
            else:
                leave = self._leave_one(logits)
            if leave:
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
            if self.policy == "patience":
                def agree(head_call=head_call):  # one head agreeing with the previous one
                    prediction = int(head_call().argmax(dim=1))
                    return rules.patience_leaves(rules.patience_streak(0, prediction, prediction), self.patience)

                calls[f"exit{i}"] = agree
            else:
                calls[f"exit{i}"] = lambda head_call=head_call: self._leave_one(head_call())
        return calls

    def _forward_exiting(self, x: torch.Tensor) -> DynamicOutput:
        """A batch: samples that leave drop out of it. What ran per sample follows from where it left
        (``exit_index``), so the trace's counts are derived from it only when read (``_exit_counts``);
        a head that no sample leaves at costs no indexing, and no bookkeeping runs per stage.

        Per head one index (``nonzero``) of the samples that stay, which is also its one sync. The first
        head any sample leaves at lends its logits tensor as the output: rows that stay are overwritten
        where they leave later, so the samples that leave there need no copy."""
        batch = x.shape[0]
        if batch == 1:
            return self._forward_one(x)
        last = len(self.stages) - 1
        if not self.exit_stages:  # nothing to decide: the static path
            exit_index = torch.full((batch,), last, dtype=torch.long, device=x.device)
            return DynamicOutput(self.forward_static(x), Trace.derived({"exit_index": exit_index}, self._exit_counts))
        exit_index = logits_out = None
        alive = None  # indices of the samples still running; None: all of them, in order
        previous, streak = None, torch.zeros(batch, dtype=torch.long, device=x.device)  # PABEE's state, per alive sample
        h = self.stem(x)
        for i, stage in enumerate(self.stages):
            h = stage(h)
            if i == last:
                break
            head = self._head_by_stage[i]
            if head is None:
                continue
            logits = head(h)
            if self.policy == "patience":
                prediction = logits.argmax(dim=1)
                streak = rules.patience_streak(streak, prediction, previous)
                previous = prediction
                leave = rules.patience_leaves(streak, self.patience)
            else:
                leave = self._leave(logits)
            stay = (~leave).nonzero().squeeze(1)
            if stay.numel() == len(leave):  # nobody leaves here
                continue
            if alive is None:  # the first head anyone leaves at: its rows are the output so far
                logits_out, exit_index, alive = logits, torch.where(leave, i, last), stay
            else:
                gone = alive[leave]
                logits_out.index_copy_(0, gone, logits[leave])
                exit_index.index_fill_(0, gone, i)
                alive = alive.index_select(0, stay)
            if stay.numel() == 0:
                return DynamicOutput(logits_out, Trace.derived({"exit_index": exit_index}, self._exit_counts))
            h, streak = h.index_select(0, stay), streak.index_select(0, stay)
            if previous is not None:
                previous = previous.index_select(0, stay)
        logits = self.classifier(h)
        if alive is None:
            exit_index = torch.full((batch,), last, dtype=torch.long, device=x.device)
            logits_out = logits
        else:
            logits_out.index_copy_(0, alive, logits)
        return DynamicOutput(logits_out, Trace.derived({"exit_index": exit_index}, self._exit_counts))

    def _exit_counts(self, records: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Per component, whether it ran for each sample of a batch, from where the sample left: the
        stem, every stage and exit head up to its exit, and the final classifier if it left there."""
        exit_index = records["exit_index"]
        last = len(self.stages) - 1
        reached = {i: (exit_index >= i).float() for i in range(len(self.stages))}
        counts = {"stem": torch.ones(len(exit_index), device=exit_index.device)}
        counts.update({f"stage{i}": reached[i] for i in range(len(self.stages))})
        counts.update({f"exit{i}": reached[i] for i in self.exit_stages})
        counts["classifier"] = (exit_index == last).float()
        return counts

    # -- operating points from one pass: every head on every sample, then the policy --
    @torch.no_grad()
    def record(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``logits`` [B, exits + 1, K]: every exit head's and the final classifier's logits, each
        computed on the whole batch; ``scores`` [B, exits]: what a threshold policy compares (not
        for ``patience``). Where a sample stops is all a knob changes, so these decide every value."""
        _, logits = self._every_head(x)
        records = {"logits": torch.stack(logits, dim=1)}
        if self.policy != "patience":
            scores = [exit_score(self.policy, head_logits) for head_logits in logits[:-1]]
            records["scores"] = torch.stack(scores, dim=1) if scores else x.new_zeros(x.shape[0], 0)
        return records

    def replay(self, records: dict[str, torch.Tensor]) -> DynamicOutput:
        """The first head whose rule says leave (``_leaves_at``), else the final classifier."""
        logits = records["logits"]
        leaves = self._leaves_at(records)
        always = torch.ones(logits.shape[0], 1, dtype=torch.bool)
        taken = torch.cat([leaves, always], dim=1).int().argmax(dim=1)  # the first True (argmax: first maximum)
        return DynamicOutput(logits[torch.arange(logits.shape[0]), taken], self._replayed_trace(taken, True))

    def _leaves_at(self, records: dict[str, torch.Tensor]) -> torch.Tensor:
        """Bool [B, exits]: would each sample leave at each exit head if it got there (the eval rules)?"""
        if self.policy != "patience":
            return rules.exit_leaves(self.policy, records["scores"], self.threshold)
        predictions = records["logits"][:, :-1].argmax(dim=2)
        streak = torch.zeros(predictions.shape[0], dtype=torch.long)
        previous, leaves = None, []
        for prediction in predictions.unbind(dim=1):
            streak = rules.patience_streak(streak, prediction, previous)
            previous = prediction
            leaves.append(rules.patience_leaves(streak, self.patience))
        return torch.stack(leaves, dim=1) if leaves else predictions.new_zeros(predictions.shape, dtype=torch.bool)

    def _replayed_trace(self, taken: torch.Tensor, heads_on_the_way: bool) -> Trace:
        """The eval Trace of samples answered by head ``taken`` (index into the exits, then the final
        classifier): the stages up to that head's, and that head (``heads_on_the_way``: with every exit
        head before it, as the threshold rules run them); the other components (the stem, a halting
        unit) run once for every sample."""
        exit_index = torch.tensor([*self.exit_stages, len(self.stages) - 1])[taken]
        ran = {f"stage{i}": exit_index >= i for i in range(len(self.stages))}
        for j, i in enumerate(self.exit_stages):
            ran[f"exit{i}"] = (taken >= j) if heads_on_the_way else (taken == j)
        ran["classifier"] = taken == len(self.exit_stages)
        counts = {name: ran[name].float() if name in ran else torch.ones(len(taken)) for name in self.components()}
        return Trace(counts, {"exit_index": exit_index})


class _ExitSegment(nn.Module):
    """Stages followed by a head, as one ONNX graph: returns (features, logits[, score]).

    The score is the quantity the eval forward compares with the threshold under ``policy``
    (max softmax probability, entropy in nats, or entropy / log K); PABEE needs none.
    """

    def __init__(self, body: list[nn.Module], head: nn.Module, policy: str = "confidence"):
        super().__init__()
        self.body = nn.Sequential(*body)
        self.head = head
        self.policy = policy

    def forward(self, x: torch.Tensor):
        features = self.body(x)
        logits = self.head(features)
        if self.policy == "patience":
            return features, logits
        return features, logits, exit_score(self.policy, logits)
