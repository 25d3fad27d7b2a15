"""Mixtures of experts: sparse top-k expert layers (``moe``) and conditionally parameterised convolutions (``condconv``).

- ``moe`` -- the sparsely-gated mixture-of-experts layer (Shazeer et al., ICLR
  2017, arXiv 1701.06538) with the Switch Transformer's load-balancing loss and
  capacity factor (Fedus, Zoph & Shazeer, JMLR 2022, arXiv 2101.03961; GShard,
  Lepikhin et al. 2020, arXiv 2006.16668). Chosen layers of an MLP (a
  Linear+ReLU layer) or of a Transformer encoder (its feed-forward block)
  become ``count`` experts of the same shape behind a router: each token (a
  sample for an MLP) goes to the ``top_k`` experts of softmax(router(x)), whose
  outputs are weighted by those probabilities. Only the chosen experts run,
  each on its tokens alone (at batch 1 in eval an unchosen expert is never
  called), and the trace counts per expert how many tokens it processed.
  Load balance: alpha * E * sum_i f_i * P_i per expert layer, f_i the fraction
  of token assignments routed to expert i, P_i its mean router probability.
  Capacity: an expert takes at most ceil(capacity_factor * tokens * k / E)
  tokens of a group (first choices first, then in token order); overflowing
  assignments are dropped (the token's other choices, or the residual path,
  carry it). The group is the whole batch in training, as in Switch, and one
  sample in eval, so that a sample's routing never depends on its batch.
- ``condconv`` -- CondConv (Yang, Bender, Le & Ngiam, NeurIPS 2019, arXiv
  1904.04971): the 3x3 convolutions of chosen CNN or ResNet blocks hold
  ``experts`` kernels mixed per example, W = sum_i r_i W_i with
  r = sigmoid(FC(GAP(x))), then one convolution per example. Every component
  runs for every sample (the input decides weights, not work); the routing FC
  and the mixing (a matrix product, so FlopCounterMode counts it) are part of
  the block's MACs.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from dynsearch.models.backbones import final_classifier, self_attention, stage_output_shapes
from dynsearch.models.build import build_backbone
from dynsearch.dynamic.base import DynamicModel, DynamicOutput, StatView, Trace, listed, register_mechanism, tiny_train


def within_capacity(chosen: torch.Tensor, num_experts: int, capacity: int) -> torch.Tensor:
    """Which assignments of ``chosen`` [G, T, k] (expert ids per token, best first) fit their
    expert's ``capacity`` in their group: first choices before second ones, then in token order."""
    groups, tokens, k = chosen.shape
    order = chosen.transpose(1, 2).reshape(groups, k * tokens)  # rank-major
    onehot = F.one_hot(order, num_experts)
    position = ((onehot.cumsum(dim=1) - 1) * onehot).sum(dim=2)
    return (position < capacity).view(groups, k, tokens).transpose(1, 2)


class ExpertMixture(nn.Module):
    """A router and ``count`` experts; ``forward(x [B, T, d])`` runs each token through its top-k experts.

    Returns the weighted sum [B, T, d_out] and, per sample, the tokens each
    expert processed [B, E], the mean router probabilities [B, E] and the
    fraction of token assignments routed to each expert [B, E].
    """

    def __init__(self, experts: list[nn.Module], in_features: int, top_k: int, capacity_factor: float):
        super().__init__()
        if not 1 <= top_k <= len(experts):
            raise ValueError(f"experts.top_k={top_k} must be between 1 and experts.count={len(experts)}")
        self.router = nn.Linear(in_features, len(experts))
        self.experts = nn.ModuleList(experts)
        self.top_k, self.capacity_factor = top_k, capacity_factor
        self.out_features = [m for m in experts[0].modules() if isinstance(m, nn.Linear)][-1].out_features

    def forward(self, x: torch.Tensor):
        batch, tokens, _ = x.shape
        num_experts = len(self.experts)
        probs = self.router(x).softmax(dim=-1)  # [B, T, E]
        weights, chosen = probs.topk(self.top_k, dim=-1)  # [B, T, k]
        with torch.no_grad():
            groups = chosen.reshape(1, batch * tokens, self.top_k) if self.training else chosen
            capacity = math.ceil(self.capacity_factor * groups.shape[1] * self.top_k / num_experts)
            kept = within_capacity(groups, num_experts, capacity).view(batch, tokens, self.top_k)
        # Kept assignments grouped by expert (token order within each): one gather, one call per expert.
        assignment = kept.flatten().nonzero().flatten()
        expert_of = chosen.flatten()[assignment]
        assignment = assignment[expert_of.argsort(stable=True)]
        expert_of, token_of = chosen.flatten()[assignment], assignment // self.top_k
        rows = x.reshape(batch * tokens, -1)[token_of]
        gate = weights.flatten()[assignment, None]
        outputs, start = [], 0
        for expert, count in zip(self.experts, torch.bincount(expert_of, minlength=num_experts).tolist()):
            if count or self.training:  # in training it runs on no rows too, so its parameters get a zero gradient
                outputs.append(expert(rows[start : start + count]) * gate[start : start + count])
            start += count
        out = x.new_zeros(batch * tokens, self.out_features)
        if outputs:
            out = out.index_add(0, token_of, torch.cat(outputs))
        processed = x.new_zeros(batch, num_experts).index_put_(
            (token_of // tokens, expert_of), x.new_ones(len(token_of)), accumulate=True)
        dispatch = F.one_hot(chosen, num_experts).sum(dim=2).float().mean(dim=1) / self.top_k
        return out.view(batch, tokens, -1), processed, probs.mean(dim=1), dispatch


class SelfAttention(nn.Module):
    """The attention half of an encoder layer (backbones.self_attention), a component of its own."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        self.heads, self.norm1, self.qkv, self.proj = layer.heads, layer.norm1, layer.qkv, layer.proj

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self_attention(self, x)


class MoEEncoderLayer(nn.Module):
    """An encoder layer whose feed-forward block is an ``ExpertMixture`` of copies of its shape."""

    def __init__(self, layer: nn.Module, count: int, top_k: int, capacity_factor: float):
        super().__init__()
        self.attention, self.norm2 = SelfAttention(layer), layer.norm2
        width, ffn_width = layer.ffn[0].in_features, layer.ffn[0].out_features
        experts = [nn.Sequential(nn.Linear(width, ffn_width), nn.GELU(), nn.Linear(ffn_width, width))
                   for _ in range(count)]
        self.mixture = ExpertMixture(experts, width, top_k, capacity_factor)

    def forward(self, x: torch.Tensor):
        h = self.attention(x)
        y, *info = self.mixture(self.norm2(h))
        return h + y, info

    def forward_dense(self, x: torch.Tensor) -> torch.Tensor:
        h = self.attention(x)
        return h + self.mixture.experts[0](self.norm2(h))


class MoEMLPLayer(nn.Module):
    """An MLP layer (Linear+ReLU) as an ``ExpertMixture`` of ``count`` layers of its shape; one token per sample."""

    def __init__(self, layer: nn.Sequential, count: int, top_k: int, capacity_factor: float):
        super().__init__()
        linear, tail = layer[0], [m for m in layer[1:] if isinstance(m, nn.Dropout)]
        experts = [nn.Sequential(nn.Linear(linear.in_features, linear.out_features), nn.ReLU(),
                                 *(nn.Dropout(m.p) for m in tail)) for _ in range(count)]
        self.mixture = ExpertMixture(experts, linear.in_features, top_k, capacity_factor)

    def forward(self, x: torch.Tensor):
        y, *info = self.mixture(x[:, None])
        return y[:, 0], info

    def forward_dense(self, x: torch.Tensor) -> torch.Tensor:
        return self.mixture.experts[0](x)


def _linear_groups(stage: nn.Sequential) -> list[list[nn.Module]]:
    """An MLP stage's modules split into layers, each starting at a Linear."""
    groups: list[list[nn.Module]] = []
    for module in stage:
        if isinstance(module, nn.Linear) or not groups:
            groups.append([])
        groups[-1].append(module)
    return groups


def _moe_tiny(kind: str, **experts: Any) -> dict[str, Any]:
    transformer = kind == "transformer"
    return {
        "mechanism": "moe",
        "input_shape": [6, 8] if transformer else [12],
        "num_classes": 4,
        "backbone": {"kind": kind, "widths": [8, 8], "depth": 1, **({"heads": 2} if transformer else {})},
        "experts": {"balance_weight": 0.01, "capacity_factor": 1.0, **experts},
        "train": tiny_train(),
        "trial": 0,
    }


@register_mechanism(
    "moe",
    family="experts",
    paper="Sparsely-gated mixture of experts (Shazeer et al., ICLR 2017, arXiv 1701.06538); load-balancing "
    "loss and capacity factor of the Switch Transformer (Fedus et al., JMLR 2022, arXiv 2101.03961)",
)
class MoENet(DynamicModel):
    """An MLP or Transformer encoder whose chosen layers are top-k mixtures of experts.

    Config keys: ``input_shape``, ``num_classes``, ``backbone`` (kind ``mlp``
    or ``transformer``) and ``experts``: ``layers`` (indices, over all
    layers of all stages, of the layers that become expert layers),
    ``count`` (experts per layer), ``top_k``, ``balance_weight`` (alpha) and
    ``capacity_factor``.
    """

    def __init__(self, config: dict[str, Any]):
        super().__init__(config)
        kind, spec = config["backbone"]["kind"], config["experts"]
        if kind not in ("mlp", "transformer"):
            raise ValueError(f"moe needs backbone kind 'mlp' or 'transformer' (got {kind!r})")
        self.stem, stages = build_backbone(config)
        if kind == "mlp":  # each stage is [Linear, ReLU (, Dropout)] * depth: one layer per Linear
            layers = [nn.Sequential(*group) for stage in stages for group in _linear_groups(stage)]
        else:
            layers = [layer for stage in stages for layer in stage]
        shapes = stage_output_shapes(self.stem, stages, config["input_shape"])
        self.moe_layers = sorted({int(i) for i in spec["layers"] if 0 <= int(i) < len(layers)})
        self.count, self.top_k = int(spec["count"]), int(spec.get("top_k", 1))
        self.balance_weight = float(spec.get("balance_weight", 0.01))
        capacity = float(spec.get("capacity_factor", 1.25))
        moe_class = MoEMLPLayer if kind == "mlp" else MoEEncoderLayer
        self.layers = nn.ModuleList(
            moe_class(layer, self.count, self.top_k, capacity) if i in self.moe_layers else layer
            for i, layer in enumerate(layers)
        )
        self.classifier = final_classifier(shapes[-1], config)
        self.tokens = int(config["input_shape"][0]) if kind == "transformer" else 1

    @classmethod
    def tiny_configs(cls) -> list[dict[str, Any]]:
        return [
            _moe_tiny("mlp", layers=[0, 1], count=4, top_k=1),
            _moe_tiny("mlp", layers=[1], count=3, top_k=2, capacity_factor=1.25),
            _moe_tiny("transformer", layers=[1], count=4, top_k=2),
        ]

    # -- display ------------------------------------------------------------
    stat_views = {"expert_load": StatView("expert load", "expert (L<layer>e<expert>)", "share of routed tokens",
                                          "expert_ids")}

    @classmethod
    def placement(cls, config: dict[str, Any]) -> str:
        """The layers that are expert layers."""
        return listed(config["experts"].get("layers"))

    # -- contract -----------------------------------------------------------
    def components(self) -> dict[str, nn.Module]:
        parts: dict[str, nn.Module] = {"stem": self.stem}
        for i, layer in enumerate(self.layers):
            if i not in self.moe_layers:
                parts[f"layer{i}"] = layer
                continue
            if isinstance(layer, MoEEncoderLayer):
                parts[f"attention{i}"] = layer.attention
            parts[f"router{i}"] = layer.mixture.router
            parts.update({f"expert{i}_{e}": expert for e, expert in enumerate(layer.mixture.experts)})
        parts["classifier"] = self.classifier
        return parts

    def static_components(self) -> list[str]:
        """The dense counterpart: one expert in place of each expert layer, no router."""
        names = ["stem"]
        for i, layer in enumerate(self.layers):
            if i not in self.moe_layers:
                names.append(f"layer{i}")
            else:
                names += [*([f"attention{i}"] if isinstance(layer, MoEEncoderLayer) else []), f"expert{i}_0"]
        return [*names, "classifier"]

    def macs_full(self) -> int:
        macs = self.component_macs()  # an expert's MACs are per token: the dense layer runs every token
        return int(sum(macs[name] * (self.tokens if name.startswith("expert") else 1)
                       for name in self.static_components()))

    def decision_components(self) -> list[str]:
        return [f"router{i}" for i in self.moe_layers]

    def aux_loss(self, trace: Trace) -> torch.Tensor:
        """Switch's load balance: alpha * E * sum_i f_i * P_i, summed over expert layers."""
        probs, dispatch = trace.records.get("router_probs"), trace.records.get("dispatch")
        if probs is None or probs.shape[1] == 0:
            return torch.zeros(())
        return self.balance_weight * self.count * (dispatch.mean(dim=0) * probs.mean(dim=0)).sum()

    def trace_stats(self, trace: Trace) -> dict[str, Any]:
        """``expert_load``: per expert layer, the share of routed tokens (samples) each expert processed
        (``expert_ids`` names them ``L<layer>e<expert>``; each layer's shares sum to 1)."""
        ids, load = [], []
        for i in self.moe_layers:
            processed = [float(trace.counts[f"expert{i}_{e}"].sum()) for e in range(self.count)]
            total = sum(processed) or 1.0
            ids += [f"L{i}e{e}" for e in range(self.count)]
            load += [p / total for p in processed]
        return {"expert_ids": ids, "expert_load": load}

    def runtime_policy(self) -> dict[str, Any]:
        return {
            "kind": "experts",
            "rule": "per expert layer, a router sends each token (a sample for an MLP) to its top_k experts by "
                    "softmax probability; only those run and their outputs are summed weighted by it; an expert "
                    "takes at most ceil(capacity_factor * tokens * top_k / count) tokens of a sample",
            "expert_layers": list(self.moe_layers),
            "count": self.count,
            "top_k": self.top_k,
            "capacity_factor": float(self.config["experts"].get("capacity_factor", 1.25)),
        }

    # -- forward --------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> DynamicOutput:
        batch = x.shape[0]
        ones = x.new_ones(batch)
        counts: dict[str, torch.Tensor] = {"stem": ones}
        probs, dispatch = [], []
        h = self.stem(x)
        for i, layer in enumerate(self.layers):
            if i not in self.moe_layers:
                h = layer(h)
                counts[f"layer{i}"] = ones
                continue
            h, (processed, layer_probs, layer_dispatch) = layer(h)
            if isinstance(layer, MoEEncoderLayer):
                counts[f"attention{i}"] = ones
            counts[f"router{i}"] = ones
            counts.update({f"expert{i}_{e}": processed[:, e] for e in range(self.count)})
            probs.append(layer_probs)
            dispatch.append(layer_dispatch)
        logits = self.classifier(h)
        counts["classifier"] = ones
        records = {}
        if self.training:
            empty = x.new_zeros(batch, 0, self.count)
            records = {"router_probs": torch.stack(probs, dim=1) if probs else empty,
                       "dispatch": torch.stack(dispatch, dim=1) if dispatch else empty}
        return DynamicOutput(logits, Trace(counts, records), [logits] if self.training else None)

    def forward_static(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        for i, layer in enumerate(self.layers):
            h = layer.forward_dense(h) if i in self.moe_layers else layer(h)
        return self.classifier(h)


# -- CondConv -------------------------------------------------------------------
class CondConv2d(nn.Module):
    """A convolution with ``experts`` kernels mixed per example: W = sum_i r_i W_i, r = sigmoid(FC(GAP(x)))
    (Yang et al. 2019). The mixing is a matrix product and the convolution a grouped one (one group per
    example), so FlopCounterMode counts the routing FC, the mixing and one convolution per example."""

    def __init__(self, conv: nn.Conv2d, experts: int):
        super().__init__()
        self.stride, self.padding = conv.stride, conv.padding
        self.kernel_shape = conv.weight.shape  # [out, in, kh, kw]
        self.router = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(conv.in_channels, experts))
        weight = torch.empty(experts, *self.kernel_shape)
        for kernel in weight:  # each expert initialised as nn.Conv2d initialises its kernel
            nn.init.kaiming_uniform_(kernel, a=math.sqrt(5))
        self.weight = nn.Parameter(weight.flatten(1))
        self.last_routing: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        routing = torch.sigmoid(self.router(x))  # [B, E]
        self.last_routing = routing.detach()
        kernels = (routing @ self.weight).view(batch * self.kernel_shape[0], *self.kernel_shape[1:])
        out = F.conv2d(x.reshape(1, batch * channels, height, width), kernels,
                       stride=self.stride, padding=self.padding, groups=batch)
        return out.view(batch, self.kernel_shape[0], *out.shape[2:])


def _condconv_tiny(kind: str, layers: list[int], experts: int) -> dict[str, Any]:
    return {
        "mechanism": "condconv",
        "input_shape": [1, 8, 8],
        "num_classes": 4,
        "backbone": {"kind": kind, "widths": [4, 8], "depth": 1 if kind == "cnn" else 2},
        "condconv": {"layers": layers, "experts": experts},
        "train": tiny_train(),
        "trial": 0,
    }


@register_mechanism(
    "condconv",
    family="experts",
    paper="CondConv: conditionally parameterized convolutions (Yang et al., NeurIPS 2019, arXiv 1904.04971)",
)
class CondConvNet(DynamicModel):
    """A CNN or ResNet whose chosen blocks convolve with per-example mixtures of expert kernels.

    Config keys: ``input_shape``, ``num_classes``, ``backbone`` (kind ``cnn``
    or ``resnet``) and ``condconv``: ``layers`` (indices of the blocks, over
    all stages, whose 3x3 convolutions become CondConv) and ``experts``.
    """

    skips_work = False  # the input decides the kernels, not what runs

    def __init__(self, config: dict[str, Any]):
        super().__init__(config)
        kind, spec = config["backbone"]["kind"], config["condconv"]
        if kind not in ("cnn", "resnet"):
            raise ValueError(f"condconv needs backbone kind 'cnn' or 'resnet' (got {kind!r})")
        self.stem, stages = build_backbone(config)
        shapes = stage_output_shapes(self.stem, stages, config["input_shape"])
        self.blocks = nn.ModuleList(block for stage in stages for block in stage)
        self.cond_blocks = sorted({int(k) for k in spec["layers"] if 0 <= int(k) < len(self.blocks)})
        self.experts = int(spec["experts"])
        self.condconvs: list[CondConv2d] = []
        for k in self.cond_blocks:
            convs = self.blocks[k].residual if kind == "resnet" else self.blocks[k]
            for j, module in enumerate(convs):
                if isinstance(module, nn.Conv2d):
                    convs[j] = CondConv2d(module, self.experts)
                    self.condconvs.append(convs[j])
        self.classifier = final_classifier(shapes[-1], config)

    @classmethod
    def tiny_configs(cls) -> list[dict[str, Any]]:
        return [_condconv_tiny("cnn", [0, 1], 3), _condconv_tiny("resnet", [1, 2], 2)]

    stat_views = {"expert_routing": StatView("CondConv routing weight", "expert kernel (L<layer>e<expert>)",
                                             "mean r_i", "expert_ids")}

    @classmethod
    def placement(cls, config: dict[str, Any]) -> str:
        """The blocks whose convolutions are CondConv."""
        return listed(config["condconv"].get("layers"))

    def components(self) -> dict[str, nn.Module]:
        return {"stem": self.stem, **{f"block{k}": b for k, b in enumerate(self.blocks)}, "classifier": self.classifier}

    def static_components(self) -> list[str]:
        return list(self.components())

    def decision_components(self) -> list[str]:
        return [f"block{k}" for k in self.cond_blocks]  # they hold the routers

    def trace_stats(self, trace: Trace) -> dict[str, Any]:
        """``expert_routing``: per CondConv layer, each expert kernel's mean routing weight r_i
        (``expert_ids`` names them ``L<layer>e<expert>``, layers counted over the CondConv convolutions)."""
        routing = trace.records["routing"].mean(dim=0)  # [layers, E]
        ids = [f"L{j}e{e}" for j in range(routing.shape[0]) for e in range(routing.shape[1])]
        return {"expert_ids": ids, "expert_routing": [float(r) for r in routing.flatten()]}

    def runtime_policy(self) -> dict[str, Any]:
        return {
            "kind": "condconv",
            "rule": "per CondConv layer, r = sigmoid(FC(global average pool(x))) mixes the expert kernels "
                    "(W = sum_i r_i W_i) and one convolution per example runs with W",
            "condconv_blocks": list(self.cond_blocks),
            "experts": self.experts,
        }

    def forward(self, x: torch.Tensor) -> DynamicOutput:
        logits = self.forward_static(x)
        batch = x.shape[0]
        routing = (torch.stack([c.last_routing for c in self.condconvs], dim=1) if self.condconvs
                   else x.new_zeros(batch, 0, self.experts))
        ones = x.new_ones(batch)
        trace = Trace({name: ones for name in self.components()}, {"routing": routing})
        return DynamicOutput(logits, trace, [logits] if self.training else None)

    def forward_static(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        for block in self.blocks:
            h = block(h)
        return self.classifier(h)
