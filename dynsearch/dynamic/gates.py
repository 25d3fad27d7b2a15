"""Gated residual networks: a gate per residual block decides, per sample, whether the block runs.

A gated block computes out = relu(x + g * F(x)) with g in {0, 1}; only blocks
whose input and output shapes match (identity shortcut) can be gated. In eval
the decision is hard and noise-free, and F is computed only for the samples
whose gate is on (at batch size 1 a gated-off block's F never runs).

Gate objectives (``gates.objective``):

- ``target_rate`` -- ConvNet-AIG (Veit & Belongie, ECCV 2018, arXiv 1711.11503):
  lambda * mean_l (t_l - z_l)^2, z_l the fraction of the batch that executes
  block l, t_l its target rate (one shared value or one per gated block).
- ``budget`` -- dynamic routing (Li et al., CVPR 2020, arXiv 2003.10401):
  lambda * (C_expected / C_max - mu)^2, C_expected the batch's mean MACs given
  its gate values, C_max the MACs with every block on, mu the budget.
- ``rl`` (SkipNet only) -- SkipNet's hybrid learning (Wang et al., ECCV 2018,
  arXiv 1711.09485): the first half of training is supervised with hard
  straight-through gates and the task loss alone; in the second half the gates
  sample their decisions and learn by REINFORCE with the reward
  -CE + alpha / N per skipped block (cumulative from each gate on), while the
  network keeps learning from the cross-entropy.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from dynsearch.models.backbones import final_classifier, stage_output_shapes
from dynsearch.models.build import build_backbone
from dynsearch.dynamic import rules
from dynsearch.dynamic.base import (
    DynamicModel, DynamicOutput, OnnxForm, OnnxPart, OnnxSequence, StatView, Trace, listed, register_mechanism,
    tiny_train,
)

OBJECTIVES = ("target_rate", "budget", "rl")
# Gate biases the operating-point sweep tries (added to the "on" logit at eval: positive runs more blocks).
GATE_BIAS_GRID = (-8.0, -4.0, -2.0, -1.0, -0.5, -0.25, 0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)


class AIGGate(nn.Module):
    """ConvNet-AIG gate: global-average-pooled features -> FC(width) + BN + ReLU -> FC(2) (off / on logits)."""

    def __init__(self, channels: int, width: int):
        super().__init__()
        self.layers = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            nn.Linear(channels, width), nn.BatchNorm1d(width), nn.ReLU(), nn.Linear(width, 2),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        norm = self.layers[3]
        if norm.training and x.shape[0] == 1:  # batch norm cannot normalise a lone training sample
            norm.eval()
            try:
                return self.layers(x)
            finally:
                norm.train()
        return self.layers(x)


class SkipGate(nn.Module):
    """SkipNet's feed-forward gate (FFGate-II): 3x3 conv stride 2 + BN + ReLU -> global pool -> FC(2)."""

    def __init__(self, channels: int, width: int):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(channels, width, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 2),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def _tiny(mechanism: str, **gates: Any) -> dict[str, Any]:
    return {
        "mechanism": mechanism,
        "input_shape": [1, 8, 8],
        "num_classes": 10,
        "backbone": {"kind": "resnet", "widths": [4, 8], "depth": 2},
        "gates": {"blocks": [0, 1, 3], "width": 8, "loss_weight": 2.0, **gates},
        "train": tiny_train(),
        "trial": 0,
    }


class GatedResNet(DynamicModel):
    """A ResNet backbone with a gate before each chosen residual block.

    Config keys: ``input_shape``, ``num_classes``, ``backbone`` (kind
    ``resnet``) and ``gates``: ``blocks`` (indices, counted over all blocks of
    all stages, of the blocks to gate; blocks whose shapes change are never
    gated), ``width`` (gate hidden width), ``objective`` (see the module
    docstring), ``target_rate`` (a number or one per gated block),
    ``budget`` (mu), ``loss_weight`` (lambda), ``temperature`` (Gumbel-softmax
    temperature, AIG), ``rl_alpha`` and ``rl_weight`` (SkipNet RL), and the runtime knob
    ``gate_bias`` (added to each gate's "on" logit at eval; default 0).
    """

    gate_class: type = AIGGate
    objectives: tuple[str, ...] = ("target_rate", "budget")

    def __init__(self, config: dict[str, Any]):
        super().__init__(config)
        gates = config["gates"]
        if config["backbone"]["kind"] != "resnet":
            raise ValueError(f"gates need backbone kind 'resnet' (got {config['backbone']['kind']!r})")
        self.objective = gates.get("objective", "target_rate")
        if self.objective not in self.objectives:
            raise ValueError(f"gates.objective {self.objective!r} is not one of {self.objectives}")
        self.stem, stages = build_backbone(config)
        self.stages = nn.ModuleList(stages)
        self.blocks = [block for stage in stages for block in stage]
        wanted = {int(k) for k in gates["blocks"]}
        self.gated = [k for k, block in enumerate(self.blocks) if k in wanted and block.gateable]
        self._gated_set = set(self.gated)
        self._block_names = [f"block{k}" for k in range(len(self.blocks))]
        self._gate_names = [f"gate{k}" for k in range(len(self.blocks))]
        channels = [block.residual[0].in_channels for block in self.blocks]
        width = int(gates.get("width", 16))
        self.gates = nn.ModuleDict({str(k): self.gate_class(channels[k], width) for k in self.gated})
        shapes = stage_output_shapes(self.stem, stages, config["input_shape"])
        self.classifier = final_classifier(shapes[-1], config)
        targets = gates.get("target_rate", 0.6)
        targets = list(targets) if isinstance(targets, (list, tuple)) else [targets] * len(self.gated)
        if len(targets) != len(self.gated):
            raise ValueError(f"gates.target_rate has {len(targets)} values for {len(self.gated)} gated blocks")
        self.register_buffer("target_rates", torch.tensor([float(t) for t in targets]), persistent=False)
        self.budget = float(gates.get("budget", 0.6))
        self.loss_weight = float(gates.get("loss_weight", 2.0))
        self.temperature = float(gates.get("temperature", 1.0))
        self.rl_alpha = float(gates.get("rl_alpha", 0.1))
        self.rl_weight = float(gates.get("rl_weight", 0.01))
        self.gate_bias = float(gates.get("gate_bias", 0.0))  # a runtime knob: eval decisions only
        self._component_names = list(self.components())

    # -- display ------------------------------------------------------------
    stat_views = {"gate_rates": StatView("gate execution rate per block", "block", "execution rate", "gate_blocks",
                                         absent_label="no gate on this block")}

    @classmethod
    def placement(cls, config: dict[str, Any]) -> str:
        """The blocks with a gate."""
        return listed(config["gates"].get("blocks"))

    @classmethod
    def stat_summary(cls, stats: dict[str, Any]) -> list[tuple[str, str]]:
        if "gate_rates" not in stats:
            return []
        rates = ", ".join(f"block {b}: {r:.0%}" for b, r in zip(stats["gate_blocks"], stats["gate_rates"]))
        return [("gates on", rates)]

    # -- contract -----------------------------------------------------------
    def components(self) -> dict[str, nn.Module]:
        parts: dict[str, nn.Module] = {"stem": self.stem}
        for k, block in enumerate(self.blocks):
            if k in self._gated_set:
                parts[f"gate{k}"] = self.gates[str(k)]
                parts[f"block{k}"] = block.residual  # the shortcut is the identity: it costs nothing
            else:
                parts[f"block{k}"] = block
        parts["classifier"] = self.classifier
        return parts

    def static_components(self) -> list[str]:
        return ["stem", *(f"block{k}" for k in range(len(self.blocks))), "classifier"]

    def decision_components(self) -> list[str]:
        return [f"gate{k}" for k in self.gated]

    def trace_stats(self, trace: Trace) -> dict[str, Any]:
        """``gate_rates``: the fraction of samples that executed each gated block (``gate_blocks``)."""
        rates = trace.records["gates"].float().mean(dim=0) if len(self.gated) else torch.zeros(0)
        return {"gate_blocks": list(self.gated), "gate_rates": [float(r) for r in rates]}

    # -- export ---------------------------------------------------------------
    def runtime_policy(self) -> dict[str, Any]:
        return {
            "kind": "gated",
            "policy": self.config["mechanism"],
            "rule": "before each gated block its gate returns two logits (off, on); the block runs when "
                    "on + gate_bias > off, otherwise its input passes through unchanged",
            "gated_blocks": list(self.gated),
            "gate_bias": self.gate_bias,
        }

    def runtime_knobs(self) -> dict[str, list[float]]:
        """``gate_bias``, added to every gate's on-logit at eval: a threshold shift from
        (nearly) every gated block off to every one on, plus the trained value."""
        return {"gate_bias": sorted({*GATE_BIAS_GRID, self.gate_bias})} if self.gated else {}

    def set_runtime_knobs(self, values: dict[str, float]) -> None:
        knobs = self.runtime_knobs()
        for name, value in values.items():
            if name not in knobs:
                raise ValueError(f"this gated network has the runtime knob(s) {sorted(knobs)}, not {name!r}")
            self.gate_bias = self.config["gates"]["gate_bias"] = float(value)

    def onnx_form(self) -> OnnxForm | None:
        """Per gated block a gate graph (features -> logits) and a block graph (features ->
        relu(features + residual)), which runs only when the gate says so; the stem and the
        ungated blocks between them form segment graphs; the last graph ends in the classifier."""
        parts: list[OnnxPart] = []
        body, components, source = [self.stem], ["stem"], "input"
        for k, block in enumerate(self.blocks):
            if k not in self._gated_set:
                body.append(block)
                components.append(f"block{k}")
                continue
            if body:
                name = f"segment{len(parts)}"
                parts.append(OnnxPart(name, OnnxSequence(*body), ("features",), source,
                                      {"role": "segment", "components": components}))
                body, components, source = [], [], f"{name}/features"
            parts.append(OnnxPart(f"gate{k}", OnnxSequence(self.gates[str(k)]), ("logits",), source,
                                  {"role": "gate", "block": k, "components": [f"gate{k}"]}))
            parts.append(OnnxPart(f"block{k}", OnnxSequence(_GatedBlock(block)), ("features",), source,
                                  {"role": "block", "block": k, "components": [f"block{k}"]}))
            source = f"block{k}/features"
        parts.append(OnnxPart(f"segment{len(parts)}", OnnxSequence(*body, self.classifier), ("logits",), source,
                              {"role": "exit", "final": True, "components": [*components, "classifier"]}))
        return OnnxForm("gated blocks: run the graphs in order, each on the latest features; a gate graph's "
                        "logits (off, on) decide whether the block graph after it runs (on + gate_bias > off)", parts)

    # -- decisions ------------------------------------------------------------
    def relaxed_decision(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Training decision in {0, 1} [B] with a gradient path, and its log-probability (RL only)."""
        return F.gumbel_softmax(logits, tau=self.temperature, hard=True)[:, 1], None

    # -- losses ---------------------------------------------------------------
    def aux_loss(self, trace: Trace) -> torch.Tensor:
        values = trace.records.get("gate_values")
        if values is None or values.shape[1] == 0 or self.objective == "rl":
            return torch.zeros(())
        if self.objective == "target_rate":
            rates = values.mean(dim=0)
            return self.loss_weight * ((self.target_rates - rates) ** 2).mean()
        macs = self.component_macs()
        gated_macs = values.new_tensor([float(macs[f"block{k}"]) for k in self.gated])
        static = sum(float(m) for name, m in macs.items() if name not in {f"block{k}" for k in self.gated})
        expected = static + (values * gated_macs).sum(dim=1).mean()
        full = static + float(gated_macs.sum())
        return self.loss_weight * (expected / full - self.budget) ** 2

    # -- forward --------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> DynamicOutput:
        if self.training:
            return self._forward_train(x)
        return self._forward_gated(x)

    def _forward_train(self, x: torch.Tensor) -> DynamicOutput:
        batch = x.shape[0]
        values, log_probs = [], []
        h = self.stem(x)
        for k, block in enumerate(self.blocks):
            if k not in self._gated_set:
                h = block(h)
                continue
            g, log_prob = self.relaxed_decision(self.gates[str(k)](h))
            values.append(g)
            if log_prob is not None:
                log_probs.append(log_prob)
            h = torch.relu(h + g.view(-1, 1, 1, 1) * block.residual(h))
        logits = self.classifier(h)
        ones = x.new_ones(batch)
        records = {"gate_values": torch.stack(values, dim=1) if values else x.new_zeros(batch, 0)}
        records["gates"] = records["gate_values"].detach() > 0.5
        if log_probs:
            records["gate_log_probs"] = torch.stack(log_probs, dim=1)
        return DynamicOutput(logits, Trace({name: ones for name in self.components()}, records), [logits])

    def forward_static(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        for block in self.blocks:
            h = block(h)
        return self.classifier(h)

    def timed_components(self, device: torch.device):
        calls = super().timed_components(device)
        for k in self.gated:  # a gate's time includes its decision and the sync it needs
            gate_call = calls[f"gate{k}"]
            calls[f"gate{k}"] = lambda gate_call=gate_call: bool(self._gate_on(gate_call())[0])
        return calls

    def _gate_on(self, logits: torch.Tensor) -> torch.Tensor:
        """Bool [B]: does each sample run the block, from its gate's logits (off, on) [B, 2] (``rules.gate_on``)."""
        return rules.gate_on(logits[:, 1], logits[:, 0], self.gate_bias)

    def _forward_one(self, x: torch.Tensor) -> DynamicOutput:
        """Batch size 1: one decision per gate, a single sync each, no index bookkeeping."""
        h = self.stem(x)
        ran, decisions = ["stem"], []
        for k, block in enumerate(self.blocks):
            if k not in self._gated_set:
                h = block(h)
                ran.append(self._block_names[k])
                continue
            logits = self.gates[str(k)](h)
            ran.append(self._gate_names[k])
            on = bool(self._gate_on(logits))
            decisions.append(on)
            if on:  # h >= 0 (it leaves a ReLU): a skipped block leaves it as it is
                h = torch.relu(h + block.residual(h))
                ran.append(self._block_names[k])
        ran.append("classifier")
        return DynamicOutput(self.classifier(h), Trace.single(self._component_names, ran, gates=decisions))

    def _forward_gated(self, x: torch.Tensor) -> DynamicOutput:
        """A batch: each gated block runs on the samples whose gate is on. What ran per sample follows
        from the gate decisions, so the trace's counts are derived from them only when read
        (``_gate_counts``): serving pays no per-block bookkeeping."""
        batch = x.shape[0]
        if batch == 1:
            return self._forward_one(x)
        decisions = torch.zeros(batch, len(self.gated), dtype=torch.bool)
        h = self.stem(x)
        for k, block in enumerate(self.blocks):
            if k not in self._gated_set:
                h = block(h)
                continue
            logits = self.gates[str(k)](h)
            on = self._gate_on(logits)  # hard and noise-free
            decisions[:, self.gated.index(k)] = on
            # h >= 0 (it leaves a ReLU), so a skipped block's relu(h + 0) is h itself.
            index = on.nonzero().flatten()
            if index.numel():
                h = h.index_copy(0, index, torch.relu(h[index] + block.residual(h[index])))
        logits = self.classifier(h)
        return DynamicOutput(logits, Trace.derived({"gates": decisions}, self._gate_counts))

    def _gate_counts(self, records: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Per component, whether it ran for each sample: a gated block where its gate said on, every
        other component always."""
        decisions = records["gates"]
        ran = {f"block{k}": decisions[:, j].float() for j, k in enumerate(self.gated)}
        return {name: ran[name] if name in ran else torch.ones(len(decisions)) for name in self.components()}


class _GatedBlock(nn.Module):
    """A gated block taken: relu(h + residual(h)) (its shortcut is the identity)."""

    def __init__(self, block: nn.Module):
        super().__init__()
        self.residual = block.residual

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return torch.relu(h + self.residual(h))


@register_mechanism(
    "aig",
    family="gates",
    paper="ConvNet-AIG (Veit & Belongie, ECCV 2018, arXiv 1711.11503); budget objective from "
    "dynamic routing (Li et al., CVPR 2020, arXiv 2003.10401)",
)
class AIGNet(GatedResNet):
    """ConvNet-AIG: straight-through Gumbel-softmax gates in training, target-rate (or budget) loss."""

    @classmethod
    def tiny_configs(cls) -> list[dict[str, Any]]:
        return [
            _tiny("aig", objective="target_rate", target_rate=[0.3, 0.5, 0.7], temperature=1.0),
            _tiny("aig", objective="budget", budget=0.5, temperature=0.5),
        ]


@register_mechanism(
    "skipnet",
    family="gates",
    paper="SkipNet feed-forward gates (Wang et al., ECCV 2018, arXiv 1711.09485); budget objective "
    "from dynamic routing (Li et al., CVPR 2020, arXiv 2003.10401)",
)
class SkipNet(GatedResNet):
    """SkipNet: hard gates (p > 0.5) with a straight-through gradient; optional hybrid RL stage."""

    gate_class = SkipGate
    objectives = OBJECTIVES

    @classmethod
    def tiny_configs(cls) -> list[dict[str, Any]]:
        return [
            _tiny("skipnet", objective="target_rate", target_rate=0.5),
            _tiny("skipnet", objective="rl", rl_alpha=0.1, rl_weight=0.01),
        ]

    def rl_stage(self) -> bool:
        return self.objective == "rl" and self.training_progress >= 0.5

    def relaxed_decision(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        probs = logits.softmax(dim=1)
        if self.rl_stage():  # the policy samples its action; REINFORCE trains it
            action = torch.distributions.Categorical(probs=probs).sample()
            return action.float(), logits.log_softmax(dim=1).gather(1, action[:, None])[:, 0]
        on = probs[:, 1]
        return (on > 0.5).float() + on - on.detach(), None  # hard forward, straight-through backward

    def task_loss(self, output: DynamicOutput, target: torch.Tensor) -> torch.Tensor:
        loss = F.cross_entropy(output.logits, target)
        log_probs = output.trace.records.get("gate_log_probs")
        if log_probs is None:
            return loss
        # SkipNet's hybrid RL: per-gate reward alpha / N for skipping; return from each gate on, plus -CE.
        skipped = 1.0 - output.trace.records["gate_values"].detach()
        rewards = skipped * (self.rl_alpha / log_probs.shape[1])
        future = rewards.flip(1).cumsum(1).flip(1)
        returns = future - F.cross_entropy(output.logits.detach(), target, reduction="none")[:, None]
        policy_loss = -(self.rl_weight * returns * log_probs).sum(dim=1).mean()
        return loss + policy_loss
