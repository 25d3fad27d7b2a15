"""Halting: a recurrent cell that ponders its input for a per-sample number of steps.

The backbone (kind ``recurrent``) is a GRU cell that reads the same input at
every step, plus a flag that is 1 at the first step only; a halting unit
h_n = sigmoid(W s_n + b) reads each new state. In eval the loop stops per
sample: a halted sample's later steps are never computed (at batch 1 the loop
ends), and the trace counts how many steps of the ``cell`` each sample ran.
The halting unit is not run at the last allowed step, where halting is forced.

- ``act`` -- Adaptive Computation Time (Graves 2016, arXiv 1603.08983): halt
  at the first step N with h_1 + ... + h_N >= 1 - epsilon (or at
  ``max_steps``); the remainder R = 1 - (h_1 + ... + h_{N-1}) weights step N,
  h_n the others; the classifier reads the halting-weighted sum of the states.
  Training adds the ponder cost tau * mean(N + R) (its gradient flows through R).
- ``pondernet`` -- PonderNet (Banino, Balaguer & Blundell 2021, arXiv
  2107.05407): lambda_n = h_n is the probability of halting at step n given
  that the loop got there, p_n = lambda_n * prod_{j<n} (1 - lambda_j) (lambda
  at ``max_steps`` is 1). Training runs every step and minimises
  sum_n p_n * CE(classifier(s_n)) + beta * KL(p || Geometric(lambda_p))
  (the geometric prior truncated to ``max_steps`` and renormalised). At
  inference this implementation does not sample: it halts at the first step
  whose cumulative halting probability p_1 + ... + p_n reaches
  ``threshold`` (deterministic, so a batch decides as batch 1 does, and an
  export reproduces its accuracy); the classifier reads that step's state.

``halting_threshold`` (ACT's 1 - epsilon; PonderNet's cumulative-probability
threshold) is a runtime knob: it can change after training.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from dynsearch.dynamic import rules
from dynsearch.dynamic.base import (
    DynamicModel, DynamicOutput, StatView, Trace, probability_knob, register_mechanism, tiny_train,
)

KNOB = "halting_threshold"


def _tiny(mechanism: str, **halting: Any) -> dict[str, Any]:
    return {
        "mechanism": mechanism,
        "input_shape": [6],
        "num_classes": 3,
        "backbone": {"kind": "recurrent", "widths": [8], "depth": 1},
        "halting": {"max_steps": 4, **halting},
        "train": tiny_train(),
        "trial": 0,
    }


class HaltingNet(DynamicModel):
    """Base of the halting mechanisms: the pondering loop, cost, statistics and knobs.

    Config keys: ``input_shape`` (flattened), ``num_classes``, ``backbone``
    (kind ``recurrent``, ``widths[0]`` = hidden width of the GRU cell) and
    ``halting``: ``max_steps`` (>= 2), ``bias_init`` (halting-unit bias),
    plus the mechanism's own keys.
    """

    default_threshold: float = 0.5
    knob_values: tuple[float, ...] = ()

    def __init__(self, config: dict[str, Any]):
        super().__init__(config)
        if config["backbone"]["kind"] != "recurrent":
            raise ValueError(f"halting needs backbone kind 'recurrent' (got {config['backbone']['kind']!r})")
        halting = config["halting"]
        self.max_steps = int(halting["max_steps"])
        if self.max_steps < 2:
            raise ValueError(f"halting.max_steps must be at least 2 (got {self.max_steps})")
        self.hidden = int(config["backbone"]["widths"][0])
        in_features = math.prod(config["input_shape"])
        self.cell = nn.GRUCell(in_features + 1, self.hidden)  # + the first-step flag
        self.halting = nn.Linear(self.hidden, 1)
        nn.init.constant_(self.halting.bias, float(halting.get("bias_init", 0.0)))
        self.classifier = nn.Linear(self.hidden, config["num_classes"])
        self.threshold = float(halting.get("threshold", self.default_threshold))
        self._component_names = list(self.components())

    # -- display ------------------------------------------------------------
    stat_views = {"ponder_histogram": StatView("ponder-step distribution", "ponder steps", "share of samples",
                                               "ponder_steps")}

    @classmethod
    def stat_summary(cls, stats: dict[str, Any]) -> list[tuple[str, str]]:
        if "mean_ponder_steps" not in stats:
            return []
        return [("ponder steps", f"{stats['mean_ponder_steps']:.2f} per sample on average")]

    # -- contract -----------------------------------------------------------
    def components(self) -> dict[str, nn.Module]:
        return {"cell": self.cell, "halting": self.halting, "classifier": self.classifier}

    def static_components(self) -> list[str]:
        return ["cell"] * self.max_steps + ["classifier"]  # max_steps steps, no halting unit

    def decision_components(self) -> list[str]:
        return ["halting"]

    def trace_stats(self, trace: Trace) -> dict[str, Any]:
        """``mean_ponder_steps`` and ``ponder_histogram``: the share of samples that ran each step count."""
        steps = trace.counts["cell"].round().long()
        shares = torch.bincount(steps, minlength=self.max_steps + 1)[1:].double() / max(1, len(steps))
        return {"mean_ponder_steps": float(steps.double().mean()),
                "ponder_steps": list(range(1, self.max_steps + 1)),
                "ponder_histogram": [float(s) for s in shares]}

    def runtime_policy(self) -> dict[str, Any]:
        return {"kind": "halting", "mechanism": self.config["mechanism"], "rule": self.rule,
                KNOB: self.threshold, "max_steps": self.max_steps}

    def runtime_knobs(self) -> dict[str, list[float]]:
        return {KNOB: sorted({*self.knob_values, self.threshold})}  # the trained value is a point too

    def set_runtime_knobs(self, values: dict[str, float]) -> None:
        threshold = probability_knob(values, KNOB, type(self).__name__)
        if threshold is not None:
            self.threshold = self.config["halting"]["threshold"] = threshold  # an export rebuilds at this point

    def timed_components(self, device: torch.device):
        calls = super().timed_components(device)
        halting_call = calls["halting"]  # the halting unit's time includes its decision and the sync it needs
        calls["halting"] = lambda: bool(rules.halts(torch.sigmoid(halting_call())[0, 0], self.threshold))
        return calls

    # -- the loop -------------------------------------------------------------
    def _step_inputs(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        flat = x.flatten(1)
        flag = flat.new_ones(flat.shape[0], 1)
        return torch.cat([flat, flag], dim=1), torch.cat([flat, 0 * flag], dim=1)

    def _halting_prob(self, state: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.halting(state))[:, 0]

    def forward_static(self, x: torch.Tensor) -> torch.Tensor:
        first, rest = self._step_inputs(x)
        state = x.new_zeros(x.shape[0], self.hidden)
        for n in range(self.max_steps):
            state = self.cell(first if n == 0 else rest, state)
        return self.classifier(state)

    def forward(self, x: torch.Tensor) -> DynamicOutput:
        return self._forward_train(x) if self.training else self._forward_halting(x)

    def _forward_halting(self, x: torch.Tensor) -> DynamicOutput:
        """Eval: per-sample hard halting; halted samples leave the loop (batch 1: the loop ends)."""
        batch = x.shape[0]
        first, rest = self._step_inputs(x)
        steps = torch.zeros(batch, dtype=torch.long)
        readout = x.new_zeros(batch, self.hidden)
        alive = torch.arange(batch)
        state = x.new_zeros(batch, self.hidden)
        halted_so_far = x.new_zeros(batch)  # ACT: sum of h; PonderNet: sum of p
        for n in range(self.max_steps):
            state = self.cell((first if n == 0 else rest)[alive], state)
            h = None if n == self.max_steps - 1 else self._halting_prob(state)  # none at the forced last step
            halt = self._eval_step(n, state, h, alive, steps, readout, halted_so_far)
            alive, state = alive[~halt], state[~halt]
            if alive.numel() == 0:
                break
        return self._eval_output(steps, readout)

    def _eval_step(self, n: int, state: torch.Tensor, h: torch.Tensor | None, alive: torch.Tensor,
                   steps: torch.Tensor, readout: torch.Tensor, halted_so_far: torch.Tensor) -> torch.Tensor:
        """Step ``n`` of the eval loop for the samples ``alive`` (their new ``state`` and halting
        probability ``h``, None at the last step): count it in ``steps``, add the state to the readout
        with its weight, carry the halted quantity; returns which of them halt. The eval forward and
        ``replay`` both take their steps here, so a replayed point decides and reads out as the real one does."""
        steps[alive] += 1
        if h is None:
            halt = torch.ones(len(alive), dtype=torch.bool)
            readout[alive] += self._eval_weight(None, halted_so_far[alive], halt)[:, None] * state
            return halt
        halt, so_far = self._eval_halt(h, halted_so_far[alive], n)
        readout[alive] += self._eval_weight(h, halted_so_far[alive], halt)[:, None] * state
        halted_so_far[alive] = so_far
        return halt

    def _eval_output(self, steps: torch.Tensor, readout: torch.Tensor) -> DynamicOutput:
        """The classifier on the readout of every sample; the Trace of the steps they ran, its counts
        derived from ``ponder_steps`` when read (``_step_counts``): the loop keeps one count per sample."""
        return DynamicOutput(self.classifier(readout), Trace.derived({"ponder_steps": steps}, self._step_counts))

    def _step_counts(self, records: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The cell ran once per step; the halting unit at every step but the forced last one."""
        steps = records["ponder_steps"].float()
        ran = {"cell": steps, "halting": steps.clamp(max=self.max_steps - 1), "classifier": torch.ones(len(steps))}
        return {name: ran[name] for name in self._component_names}

    # -- operating points from one pass --------------------------------------------
    @torch.no_grad()
    def record(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``states`` [B, max_steps, hidden] and halting probabilities ``h`` [B, max_steps - 1] of every
        step for every sample. A step's state never depends on the threshold (the cell reads the same
        input whenever the loop stops), so the threshold changes only where a sample halts and the
        weights of its readout, which ``replay`` computes from these exactly as the loop does."""
        first, rest = self._step_inputs(x)
        state = x.new_zeros(x.shape[0], self.hidden)
        states, probs = [], []
        for n in range(self.max_steps):
            state = self.cell(first if n == 0 else rest, state)
            states.append(state)
            if n < self.max_steps - 1:
                probs.append(self._halting_prob(state))
        return {"states": torch.stack(states, dim=1), "h": torch.stack(probs, dim=1)}

    def replay(self, records: dict[str, torch.Tensor]) -> DynamicOutput:
        """The eval loop's steps (``_eval_step``) over the recorded states, then the classifier on the
        readouts of the whole batch, as the eval forward runs it."""
        states, probs = records["states"], records["h"]
        batch = states.shape[0]
        steps = torch.zeros(batch, dtype=torch.long)
        readout = states.new_zeros(batch, self.hidden)
        halted_so_far = states.new_zeros(batch)
        alive = torch.arange(batch)
        for n in range(self.max_steps):
            h = None if n == self.max_steps - 1 else probs[alive, n]
            halt = self._eval_step(n, states[alive, n], h, alive, steps, readout, halted_so_far)
            alive = alive[~halt]
            if alive.numel() == 0:
                break
        return self._eval_output(steps, readout)


@register_mechanism("act", family="halting",
                    paper="Adaptive Computation Time (Graves 2016, arXiv 1603.08983)")
class ACTNet(HaltingNet):
    """ACT on a GRU cell. ``halting`` keys: ``epsilon`` (threshold 1 - epsilon, default 0.01),
    ``tau`` (ponder-cost weight), ``max_steps``, ``bias_init``."""

    knob_values = (0.5, 0.7, 0.9, 0.95, 0.99)
    rule = ("halt at the first step whose summed halting units reach halting_threshold (1 - epsilon) "
            "or at max_steps; the classifier reads the halting-weighted sum of the states")

    def __init__(self, config: dict[str, Any]):
        halting = config["halting"]
        threshold = float(halting.get("threshold", 1.0 - float(halting.get("epsilon", 0.01))))  # a knob may set it
        config = {**config, "halting": {**halting, "threshold": threshold}}
        super().__init__(config)
        self.config["halting"] = dict(halting)
        self.tau = float(halting.get("tau", 0.01))

    @classmethod
    def tiny_configs(cls) -> list[dict[str, Any]]:
        return [_tiny("act", tau=0.01, epsilon=0.01, bias_init=-1.0),
                _tiny("act", tau=0.05, epsilon=0.05, bias_init=0.0)]

    def _eval_halt(self, h, summed, n):
        summed = summed + h
        return rules.halts(summed, self.threshold), summed

    def _eval_weight(self, h, summed, halt):
        remainder = 1.0 - summed
        return remainder if h is None else torch.where(halt, remainder, h)

    def aux_loss(self, trace: Trace) -> torch.Tensor:
        ponder = trace.records.get("ponder_cost")
        return torch.zeros(()) if ponder is None else self.tau * ponder.mean()

    def _forward_train(self, x: torch.Tensor) -> DynamicOutput:
        """Every sample runs until it halts (the batch until all have); N + R is differentiable in R."""
        batch = x.shape[0]
        first, rest = self._step_inputs(x)
        state = x.new_zeros(batch, self.hidden)
        readout = x.new_zeros(batch, self.hidden)
        summed = x.new_zeros(batch)
        running = torch.ones(batch, dtype=torch.bool)
        steps, remainder = x.new_zeros(batch), x.new_zeros(batch)
        for n in range(self.max_steps):
            state = self.cell(first if n == 0 else rest, state)
            steps = steps + running.float()
            h = self._halting_prob(state)
            halt = running & (rules.halts(summed + h, self.threshold) | (n == self.max_steps - 1))
            weight = torch.where(halt, 1.0 - summed, torch.where(running, h, torch.zeros_like(h)))
            readout = readout + weight[:, None] * state
            remainder = torch.where(halt, 1.0 - summed, remainder)
            summed = torch.where(running & ~halt, summed + h, summed)
            running = running & ~halt
            if not running.any():
                break
        counts = {"cell": steps.detach(), "halting": steps.detach(), "classifier": x.new_ones(batch)}
        logits = self.classifier(readout)
        records = {"ponder_steps": steps.detach().long(), "ponder_cost": steps.detach() + remainder}
        return DynamicOutput(logits, Trace(counts, records), [logits])


@register_mechanism("pondernet", family="halting",
                    paper="PonderNet (Banino, Balaguer & Blundell 2021, arXiv 2107.05407)")
class PonderNet(HaltingNet):
    """PonderNet on a GRU cell. ``halting`` keys: ``lambda_p`` (geometric prior), ``beta``
    (KL weight), ``threshold`` (cumulative halting probability at inference, default 0.5),
    ``max_steps``, ``bias_init``."""

    knob_values = (0.1, 0.3, 0.5, 0.7, 0.9)
    rule = ("halt at the first step whose cumulative halting probability p_1 + ... + p_n reaches "
            "halting_threshold (no sampling) or at max_steps; the classifier reads that step's state")

    def __init__(self, config: dict[str, Any]):
        super().__init__(config)
        halting = config["halting"]
        self.lambda_p = float(halting.get("lambda_p", 0.3))
        self.beta = float(halting.get("beta", 0.01))
        steps = torch.arange(self.max_steps, dtype=torch.float32)
        prior = self.lambda_p * (1.0 - self.lambda_p) ** steps
        self.register_buffer("prior", prior / prior.sum(), persistent=False)

    @classmethod
    def tiny_configs(cls) -> list[dict[str, Any]]:
        return [_tiny("pondernet", lambda_p=0.3, beta=0.01, threshold=0.5, bias_init=-1.0),
                _tiny("pondernet", lambda_p=0.5, beta=0.1, threshold=0.8, bias_init=0.0)]

    def _eval_halt(self, h, halted_so_far, n):
        # Carry the probability of having halted: p_n = h_n * (1 - halted_so_far).
        so_far = halted_so_far + h * (1.0 - halted_so_far)
        return rules.halts(so_far, self.threshold), so_far

    def _eval_weight(self, h, halted_so_far, halt):
        return halt.float()  # the classifier reads the state of the halting step

    def task_loss(self, output: DynamicOutput, target: torch.Tensor) -> torch.Tensor:
        probs = output.trace.records.get("halting_probs")
        if probs is None or output.head_logits is None:
            return F.cross_entropy(output.logits, target)
        losses = torch.stack([F.cross_entropy(logits, target, reduction="none") for logits in output.head_logits], 1)
        return (probs * losses).sum(dim=1).mean()

    def aux_loss(self, trace: Trace) -> torch.Tensor:
        probs = trace.records.get("halting_probs")
        if probs is None:
            return torch.zeros(())
        kl = (probs * (probs.clamp_min(1e-12).log() - self.prior.log())).sum(dim=1)
        return self.beta * kl.mean()

    def _forward_train(self, x: torch.Tensor) -> DynamicOutput:
        """Every step for every sample: the halting distribution p and each step's logits."""
        batch = x.shape[0]
        first, rest = self._step_inputs(x)
        state = x.new_zeros(batch, self.hidden)
        not_halted = x.new_ones(batch)
        probs, head_logits = [], []
        for n in range(self.max_steps):
            state = self.cell(first if n == 0 else rest, state)
            head_logits.append(self.classifier(state))
            h = self._halting_prob(state) if n < self.max_steps - 1 else x.new_ones(batch)
            probs.append(not_halted * h)
            not_halted = not_halted * (1.0 - h)
        halting_probs = torch.stack(probs, dim=1)
        logits = (halting_probs[:, :, None] * torch.stack(head_logits, dim=1)).sum(dim=1)
        expected_steps = (halting_probs * torch.arange(1, self.max_steps + 1)).sum(dim=1).detach()
        full = x.new_full((batch,), float(self.max_steps))
        counts = {"cell": full, "halting": full - 1, "classifier": full}
        records = {"halting_probs": halting_probs, "expected_steps": expected_steps}
        return DynamicOutput(logits, Trace(counts, records), head_logits)
