"""Glance and focus: a glance at the whole image down-sampled, then small full-resolution crops until confident.

GFNet (Wang et al., NeurIPS 2020, arXiv 2010.05300). Step 1 runs the *glance
network* on the image down-sampled (average pooling) to ``glance_size`` x
``glance_size``; every later step runs the *local network* on a
``patch_size`` x ``patch_size`` crop of the full-resolution image. A GRU cell
reads each step's feature vector, and the classifier reads its state after every
step: a sample leaves as soon as the classifier's maximum softmax probability
reaches ``threshold`` (rules.at_least), or at ``max_steps``.

Where the next crop goes (``crop_policy``), one of a fixed grid of
``grid`` x ``grid`` top-left positions spread evenly over the image:

- ``learned``: a policy head (one linear layer on the GRU state) picks the
  position; in eval its argmax (deterministic, so a batch decides as batch 1
  does). Trained by REINFORCE (Williams 1992) on GFNet's reward, the gain of the
  true class's softmax probability that the crop brought, with the batch mean as
  baseline and a small entropy bonus; the policy reads the state detached, so it
  never changes the classifier's features. GFNet trains a PPO actor-critic on
  the feature maps; this is the simpler learned policy the issue allows.
- ``fixed``: the grid positions in order of distance from the image centre
  (centre first, then outwards; ties in raster order): no policy runs.

Training (one Lightning fit, split by the fraction of training done):
stage 1 (``progress < policy_start``) feeds random grid crops, as GFNet's
stage 1 does; stage 2 trains the policy (``learned``) and goes on fitting the
networks and classifier on the crops the policy samples (GFNet's stage 3
fine-tuning folded in), or on the fixed scan (``fixed``). The loss is the mean
of the classifier's cross-entropy over the steps, as in GFNet.

In eval a sample that leaves is not computed further and leaves the batch (at
batch 1 the loop ends); the trace counts per sample the glance network, the
local network, the policy, the GRU cell and the classifier runs, and records the
steps taken (``glance_steps``) and the crop positions (``crops``, -1 where no
step ran). The threshold is a runtime knob, replayed from one recording pass.
ONNX export is refused (one line): a focus step needs a crop of the original
image at a position chosen at run time and the recurrent state, which the staged
runtime does not feed a graph.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from dynsearch.dynamic import rules
from dynsearch.dynamic.base import (
    DynamicModel, DynamicOutput, StatView, Trace, probability_knob, register_mechanism, tiny_train,
)
from dynsearch.dynamic.exits import CONFIDENCE_GRID, exit_score
from dynsearch.models.backbones import build_cnn

CROP_POLICIES = ("learned", "fixed")
KNOB = "threshold"


def _tiny(**glance: Any) -> dict[str, Any]:
    return {
        "mechanism": "glance",
        "input_shape": [1, 12, 12],
        "num_classes": 4,
        "backbone": {"kind": "cnn", "widths": [4, 8], "depth": 1},
        "glance": {"glance_size": 6, "patch_size": 6, "glance_widths": [4, 8], "hidden": 16, "max_steps": 3,
                   "grid": 3, "policy_start": 0.5, **glance},
        "train": tiny_train(),
        "trial": 0,
    }


class FeatureNet(nn.Module):
    """A small CNN (models/backbones.build_cnn), its maps average-pooled to ``pool`` x ``pool`` (some
    layout kept: a global average loses where things are), then a linear layer to ``features``."""

    def __init__(self, in_channels: int, size: int, widths: list[int], depth: int, kernel: int, features: int,
                 pool: int = 2):
        super().__init__()
        stem, stages = build_cnn([in_channels, size, size], widths, depth, kernel)
        self.body = nn.Sequential(stem, *stages)
        self.pool = pool
        self.project = nn.Linear(widths[-1] * pool * pool, features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(F.adaptive_avg_pool2d(self.body(x), self.pool).flatten(1))


def grid_positions(height: int, width: int, patch: int, grid: int) -> list[tuple[int, int]]:
    """Top-left corners of the ``grid`` x ``grid`` crops spread evenly over the image, raster order."""
    rows = [round(i * (height - patch) / max(1, grid - 1)) for i in range(grid)]
    cols = [round(i * (width - patch) / max(1, grid - 1)) for i in range(grid)]
    return [(r, c) for r in rows for c in cols]


def fixed_scan(positions: list[tuple[int, int]], height: int, width: int, patch: int) -> list[int]:
    """Indices of ``positions`` by distance of the crop's centre from the image's (centre first), ties in raster order."""
    centre = ((height - patch) / 2, (width - patch) / 2)
    return sorted(range(len(positions)),
                  key=lambda i: ((positions[i][0] - centre[0]) ** 2 + (positions[i][1] - centre[1]) ** 2, i))


@register_mechanism("glance", family="glance",
                    paper="Glance and Focus networks, GFNet (Wang et al., NeurIPS 2020, arXiv 2010.05300)")
class GlanceFocusNet(DynamicModel):
    """Glance network, local network, GRU classifier, crop policy, an exit after every step.

    Config keys: ``input_shape`` ([C, H, W]), ``num_classes``, ``backbone`` (kind ``cnn``: the local
    network's ``widths``, ``depth``, ``kernel``) and ``glance``: ``glance_size`` (G), ``patch_size`` (P),
    ``glance_widths`` (the glance network's), ``hidden`` (feature and GRU width), ``max_steps``
    (glance included, >= 2), ``threshold`` (max softmax probability to leave), ``crop_policy``
    (``learned`` or ``fixed``), ``grid`` (positions per side), ``policy_start`` (fraction of training
    in stage 1), ``entropy_weight`` (REINFORCE entropy bonus), ``feature_pool`` (each network's maps are pooled to
    that many cells a side before its linear layer; default 2).
    """

    def __init__(self, config: dict[str, Any]):
        super().__init__(config)
        if config["backbone"]["kind"] != "cnn":
            raise ValueError(f"glance needs backbone kind 'cnn' (the local network; got {config['backbone']['kind']!r})")
        shape = config["input_shape"]
        if len(shape) != 3:
            raise ValueError(f"glance needs image inputs [C, H, W] (got input_shape {shape})")
        channels, self.height, self.width = (int(s) for s in shape)
        g = config["glance"]
        self.glance_size = int(g["glance_size"])
        self.patch_size = int(g["patch_size"])
        self.max_steps = int(g["max_steps"])
        self.crop_policy = g.get("crop_policy", "learned")
        self.threshold = float(g.get("threshold", 0.9))
        self.policy_start = float(g.get("policy_start", 0.5))
        self.entropy_weight = float(g.get("entropy_weight", 0.01))
        if self.crop_policy not in CROP_POLICIES:
            raise ValueError(f"glance.crop_policy: {self.crop_policy!r} is not one of {CROP_POLICIES}")
        if self.max_steps < 2:
            raise ValueError(f"glance.max_steps must be at least 2 (got {self.max_steps})")
        if not 0 < self.patch_size <= min(self.height, self.width):
            raise ValueError(f"glance.patch_size must be in 1..{min(self.height, self.width)} (got {self.patch_size})")
        backbone = config["backbone"]
        depth, kernel = int(backbone.get("depth", 1)), int(backbone.get("kernel", 3))
        hidden = int(g["hidden"])
        self.hidden = hidden
        pool = int(g.get("feature_pool", 2))
        self.glance_net = FeatureNet(channels, self.glance_size, list(g["glance_widths"]), depth, kernel, hidden, pool)
        self.local_net = FeatureNet(channels, self.patch_size, list(backbone["widths"]), depth, kernel, hidden, pool)
        self.cell = nn.GRUCell(hidden, hidden)
        self.classifier = nn.Linear(hidden, config["num_classes"])
        self.positions = grid_positions(self.height, self.width, self.patch_size, int(g.get("grid", 3)))
        self.scan = fixed_scan(self.positions, self.height, self.width, self.patch_size)
        self.policy = nn.Linear(hidden, len(self.positions)) if self.crop_policy == "learned" else None
        self.register_buffer("_offsets", torch.tensor(self.positions, dtype=torch.long), persistent=False)
        self._component_names = list(self.components())

    @classmethod
    def tiny_configs(cls) -> list[dict[str, Any]]:
        return [_tiny(crop_policy="learned", threshold=0.5),
                _tiny(crop_policy="fixed", threshold=0.5, grid=2, max_steps=4)]

    # -- display ------------------------------------------------------------
    stat_views = {"step_histogram": StatView("glance-and-focus steps", "steps (1: the glance alone)",
                                             "share of samples", "steps")}

    @classmethod
    def stat_summary(cls, stats: dict[str, Any]) -> list[tuple[str, str]]:
        if "mean_steps" not in stats:
            return []
        return [("steps", f"{stats['mean_steps']:.2f} per sample on average (1: the glance alone)")]

    def trace_stats(self, trace: Trace) -> dict[str, Any]:
        """``mean_steps`` and ``step_histogram``: the share of samples that ran each number of steps."""
        steps = trace.counts["cell"].round().long()
        shares = torch.bincount(steps, minlength=self.max_steps + 1)[1:].double() / max(1, len(steps))
        return {"mean_steps": float(steps.double().mean()), "steps": list(range(1, self.max_steps + 1)),
                "step_histogram": [float(s) for s in shares]}

    # -- contract -----------------------------------------------------------
    def components(self) -> dict[str, nn.Module]:
        parts = {"glance_net": self.glance_net, "local_net": self.local_net, "cell": self.cell,
                 "classifier": self.classifier}
        if self.policy is not None:
            parts["policy"] = self.policy
        return parts

    def static_components(self) -> list[str]:
        """Every step (the policy choosing each crop) and the classifier once, at the end."""
        focus = self.max_steps - 1
        policy = ["policy"] * focus if self.policy is not None else []
        return ["glance_net", *["local_net"] * focus, *policy, *["cell"] * self.max_steps, "classifier"]

    def decision_components(self) -> list[str]:
        return ["classifier", *(["policy"] if self.policy is not None else [])]

    def runtime_policy(self) -> dict[str, Any]:
        rule = ("glance at the image average-pooled to glance_size, then crops of patch_size at positions the "
                + ("policy head's argmax picks" if self.policy is not None else "fixed scan gives (centre first)")
                + "; after every step leave when the classifier's max softmax probability >= threshold, "
                "or at max_steps")
        return {"kind": "glance", "crop_policy": self.crop_policy, "rule": rule, KNOB: self.threshold,
                "max_steps": self.max_steps, "glance_size": self.glance_size, "patch_size": self.patch_size,
                "positions": [list(p) for p in self.positions],
                **({"scan": list(self.scan)} if self.policy is None else {})}

    def runtime_knobs(self) -> dict[str, list[float]]:
        return {KNOB: sorted({*CONFIDENCE_GRID, self.threshold})}

    def set_runtime_knobs(self, values: dict[str, float]) -> None:
        threshold = probability_knob(values, KNOB, "glance")
        if threshold is not None:
            self.threshold = self.config["glance"][KNOB] = threshold  # an export rebuilds at this point

    def timed_components(self, device: torch.device):
        calls = super().timed_components(device)
        classify = calls["classifier"]  # the classifier's time includes the exit decision and its sync
        calls["classifier"] = lambda: bool(self._leaves(classify()))
        return calls

    # -- pieces -----------------------------------------------------------------
    def _glance_input(self, x: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(x, self.glance_size)  # pooling: no MACs under the convention

    def _crop(self, x: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        """[n, C, P, P]: for each image its crop at grid position index ``position`` [n]."""
        offsets = self._offsets[position]
        span = torch.arange(self.patch_size, device=x.device)
        rows = (offsets[:, 0:1] + span)[:, :, None]
        cols = (offsets[:, 1:2] + span)[:, None, :]
        batch = torch.arange(x.shape[0], device=x.device)[:, None, None]
        return x[batch, :, rows, cols].permute(0, 3, 1, 2).contiguous()

    def _leaves(self, logits: torch.Tensor) -> torch.Tensor:
        return rules.at_least(exit_score("confidence", logits), self.threshold)

    def _eval_position(self, state: torch.Tensor, step: int) -> torch.Tensor:
        """Crop position for focus step ``step`` (1, 2, ...) of the samples whose GRU ``state`` is given."""
        if self.policy is None:
            return torch.full((state.shape[0],), self.scan[(step - 1) % len(self.scan)], dtype=torch.long)
        return self.policy(state).argmax(dim=1)

    def in_policy_stage(self) -> bool:
        return self.training_progress >= self.policy_start

    # -- forward ------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> DynamicOutput:
        return self._forward_train(x) if self.training else self._forward_eval(x)

    def forward_static(self, x: torch.Tensor) -> torch.Tensor:
        state = self.cell(self.glance_net(self._glance_input(x)))
        for step in range(1, self.max_steps):
            state = self.cell(self.local_net(self._crop(x, self._eval_position(state, step))), state)
        return self.classifier(state)

    def _forward_train(self, x: torch.Tensor) -> DynamicOutput:
        """Every step for every sample: random crops (stage 1), the policy's samples or the fixed scan (stage 2)."""
        batch = x.shape[0]
        stage_two = self.in_policy_stage()
        state = self.cell(self.glance_net(self._glance_input(x)))
        head_logits = [self.classifier(state)]
        log_probs, entropies, crops = [], [], []
        for step in range(1, self.max_steps):
            if self.policy is not None:
                policy_logits = self.policy(state.detach())  # the policy never shapes the classifier's features
            if stage_two and self.policy is not None:
                dist = torch.distributions.Categorical(logits=policy_logits)
                position = dist.sample()
                log_probs.append(dist.log_prob(position))
                entropies.append(dist.entropy())
            elif stage_two:
                position = torch.full((batch,), self.scan[(step - 1) % len(self.scan)], dtype=torch.long)
            else:
                position = torch.randint(len(self.positions), (batch,))
            crops.append(position)
            state = self.cell(self.local_net(self._crop(x, position)), state)
            head_logits.append(self.classifier(state))
        ones = x.new_ones(batch)
        counts = {"glance_net": ones, "local_net": ones * (self.max_steps - 1), "cell": ones * self.max_steps,
                  "classifier": ones * self.max_steps}
        if self.policy is not None:
            counts["policy"] = ones * (self.max_steps - 1)
        records = {"glance_steps": torch.full((batch,), self.max_steps, dtype=torch.long),
                   "crops": torch.stack(crops, dim=1)}
        if log_probs:
            records["log_probs"] = torch.stack(log_probs, dim=1)
            records["entropies"] = torch.stack(entropies, dim=1)
        return DynamicOutput(head_logits[-1], Trace(counts, records), head_logits)

    def task_loss(self, output: DynamicOutput, target: torch.Tensor) -> torch.Tensor:
        """GFNet's classification loss: the mean cross-entropy over the steps (eval output: the answer's)."""
        if output.head_logits is None:
            return F.cross_entropy(output.logits, target)
        return sum(F.cross_entropy(logits, target) for logits in output.head_logits) / len(output.head_logits)

    def training_loss(self, output: DynamicOutput, target: torch.Tensor) -> torch.Tensor:
        return self.task_loss(output, target) + self.policy_loss(output, target)

    def policy_loss(self, output: DynamicOutput, target: torch.Tensor) -> torch.Tensor:
        """REINFORCE on GFNet's reward: the rise of the true class's probability at each focus step,
        less its batch mean (the baseline), minus ``entropy_weight`` times the policy's entropy."""
        records = output.trace.records
        if "log_probs" not in records or output.head_logits is None:
            return torch.zeros(())
        with torch.no_grad():
            true_prob = torch.stack([logits.softmax(dim=1).gather(1, target[:, None])[:, 0]
                                     for logits in output.head_logits], dim=1)
            reward = true_prob[:, 1:] - true_prob[:, :-1]
            advantage = reward - reward.mean(dim=0, keepdim=True)
        pg = -(advantage * records["log_probs"]).sum(dim=1)
        return (pg - self.entropy_weight * records["entropies"].sum(dim=1)).mean()

    def _forward_eval(self, x: torch.Tensor) -> DynamicOutput:
        """Hard per-sample exits: a sample that leaves is not computed further (batch 1: the loop ends)."""
        batch = x.shape[0]
        crops = torch.full((batch, self.max_steps - 1), -1, dtype=torch.long)
        steps = torch.ones(batch, dtype=torch.long)
        alive = torch.arange(batch)
        state = self.cell(self.glance_net(self._glance_input(x)))
        logits = self.classifier(state)
        out = logits.new_zeros(batch, logits.shape[1])
        for step in range(1, self.max_steps):
            leave = self._leaves(logits)
            if leave.any():
                out[alive[leave]] = logits[leave]
                stay = ~leave
                alive, state, x = alive[stay], state[stay], x[stay]
                if alive.numel() == 0:
                    return self._eval_output(out, steps, crops)
            position = self._eval_position(state, step)
            crops[alive, step - 1] = position
            state = self.cell(self.local_net(self._crop(x, position)), state)
            logits = self.classifier(state)
            steps[alive] += 1
        out[alive] = logits
        return self._eval_output(out, steps, crops)

    def _eval_output(self, logits, steps, crops) -> DynamicOutput:
        """The answers and their Trace, whose counts follow from the steps each sample ran
        (``_step_counts``) and are derived only when read: the loop keeps one count per sample."""
        return DynamicOutput(logits, Trace.derived({"glance_steps": steps, "crops": crops}, self._step_counts))

    def _step_counts(self, records: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The glance once, then per focus step the policy (if learned), the local network, and the cell
        and classifier at every step."""
        steps = records["glance_steps"].float()
        ran = {"glance_net": torch.ones(len(steps)), "local_net": steps - 1, "cell": steps, "classifier": steps.clone(),
               "policy": steps - 1}
        return {name: ran[name] for name in self._component_names}

    # -- operating points from one pass ----------------------------------------------
    @torch.no_grad()
    def record(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``logits`` [B, max_steps, K], ``scores`` (max softmax probability) [B, max_steps] and ``crops``
        [B, max_steps - 1] of every step for every sample. The crops and states never depend on the
        threshold (the policy reads the state, not the exit decision), so the threshold decides only
        where a sample stops: ``replay`` takes that decision on the recorded scores."""
        batch = x.shape[0]
        state = self.cell(self.glance_net(self._glance_input(x)))
        logits, crops = [self.classifier(state)], []
        for step in range(1, self.max_steps):
            position = self._eval_position(state, step)
            crops.append(position)
            state = self.cell(self.local_net(self._crop(x, position)), state)
            logits.append(self.classifier(state))
        stacked = torch.stack(logits, dim=1)
        scores = torch.stack([exit_score("confidence", step_logits) for step_logits in logits], dim=1)
        return {"logits": stacked, "scores": scores,
                "crops": torch.stack(crops, dim=1) if crops else torch.zeros(batch, 0, dtype=torch.long)}

    def replay(self, records: dict[str, torch.Tensor]) -> DynamicOutput:
        """The first step whose score reaches the threshold (the last step always answers), as the eval loop."""
        logits, scores = records["logits"], records["scores"]
        batch = logits.shape[0]
        leaves = rules.at_least(scores[:, :-1], self.threshold)
        always = torch.ones(batch, 1, dtype=torch.bool)
        taken = torch.cat([leaves, always], dim=1).int().argmax(dim=1)  # index of the answering step
        steps = taken + 1
        ran = torch.arange(self.max_steps - 1)[None, :] < taken[:, None]
        crops = torch.where(ran, records["crops"], torch.full_like(records["crops"], -1))
        return self._eval_output(logits[torch.arange(batch), taken], steps, crops)
