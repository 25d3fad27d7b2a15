"""One-shot supernets: one set of weights from which every sub-network of a recipe's space is sliced.

A sub-network is named by its trial config: exactly the config a multi-trial trial of the same
recipe samples (``space.define(trial, recipe, data)``), so one config language serves both
strategies. It is an ordinary DynamicModel (here ``EarlyExitNet``) whose every weight is a slice of
the supernet's:

- **depth**: a stage keeps its first blocks (block ``j`` of a sub-network is the supernet's block ``j``);
- **stages**: a sub-network of ``S`` stages is the supernet's first ``S`` stages and the final
  classifier the supernet keeps for ``S`` stages (``classifiers.<S-1>``: a flattened classifier's
  input size changes with the stage count, so there is one per stage count);
- **width**: a layer keeps its first output channels / units, and reads the first ones of its input
  (no importance sorting: the sandwich rule trains the smallest widths from the first step, which
  makes the first channels the ones every sub-network relies on -- OFA sorts channels because it
  shrinks a network trained at full width first; BigNAS, like this, does not);
- **kernel**: a ``k x k`` convolution is the centre of the supernet's largest kernel (OFA's learned
  kernel transformation is not used: not measured to help at these sizes);
- **exit heads**: one after every stage that can carry an exit, in two forms (linear for
  ``head_width: 0``, one hidden layer otherwise, its width elastic); a sub-network keeps those it asks for.

``sub_state(model)`` maps each tensor of a sub-network to its slice (views: gradients reach the
supernet through ``torch.func.functional_call``, which is how training runs a sub-network);
``subnet(config)`` builds the standalone sub-network with copies of those slices, which exports,
loads and is measured like any trained trial (no supernet code is needed to load it).

How a mechanism declares its elastic dimensions: a ``Supernet`` subclass, registered for a search
space with ``@register_supernet(space)``, says which backbone kinds it slices (``backbone_kinds``),
which of the space's parameters are training settings fixed by the supernet's training rather than
searched (``training_params``: parameter name -> the recipe's ``supernet`` field holding its value),
how a sampled config is trained (``training_config``: e.g. every exit head attached) and how a
sub-network's tensor names map to the supernet's (``source_name``); the slicing itself
(``sub_state``) is shared. A space with no registered supernet (gates, experts, halting, ...) is
refused by ``check_supported`` with one line.
"""
from __future__ import annotations

import copy
import functools
import json
from typing import Any, Callable, Sequence

import torch
from torch import nn

from dynsearch.dynamic import build_model
from dynsearch.errors import UserError
from dynsearch.models.backbones import final_classifier, make_head, stage_output_shapes
from dynsearch.models.build import build_backbone

_SUPERNETS: dict[str, type["Supernet"]] = {}


def register_supernet(space: str) -> Callable[[type["Supernet"]], type["Supernet"]]:
    def register(cls: type["Supernet"]) -> type["Supernet"]:
        cls.space = space
        _SUPERNETS[space] = cls
        return cls

    return register


def supported() -> dict[str, tuple[str, ...]]:
    """Search space -> the backbone kinds its supernet slices."""
    return {space: cls.backbone_kinds for space, cls in sorted(_SUPERNETS.items())}


def _supported_text() -> str:
    return "; ".join(f"space {space} with backbone.kind {' / '.join(kinds)}" for space, kinds in supported().items())


def check_supported(recipe) -> None:  # the recipe is read, not imported (mechanisms import no recipe)
    """A UserError (one line) unless a supernet slices the recipe's space and backbone."""
    cls = _SUPERNETS.get(recipe.space)
    what = None
    if cls is None:
        what = f"space {recipe.space!r}"
    elif recipe.backbone.kind not in cls.backbone_kinds:
        what = f"backbone.kind {recipe.backbone.kind!r}"
    elif "dropout" in (recipe.backbone.search or {}):
        what = "a searched backbone.search.dropout"
    elif recipe.measures_latency:
        what = "latency objectives (latency_ms, latency.measure)"
    if what is not None:
        raise UserError(f"recipe field 'strategy': one-shot does not support {what} yet; it supports "
                        f"{_supported_text()} (or use strategy: multi-trial)")


def supernet_class(space: str) -> type["Supernet"]:
    return _SUPERNETS[space]


def build_supernet(space: str, largest: dict[str, Any], smallest: dict[str, Any]) -> "Supernet":
    return supernet_class(space)(largest, smallest)


def calibration_images(train_x: torch.Tensor, count: int, seed: int) -> torch.Tensor:
    """The training images every sub-network's batch-norm statistics are recomputed on: the first
    ``count`` of a permutation seeded by ``seed`` (the same for every evaluation and export)."""
    order = torch.randperm(len(train_x), generator=torch.Generator().manual_seed(seed))
    return train_x[order[:min(count, len(train_x))]]


def calibrated_subnet(supernet: "Supernet", config: dict[str, Any], calibration: torch.Tensor,
                      batch_size: int = 256) -> nn.Module:
    """Sub-network ``config`` standalone, its batch-norm statistics recomputed on ``calibration``: what a
    one-shot search evaluates and exports (inherited weights, no retraining). Eval mode."""
    return recalibrate(supernet.subnet(config), calibration, batch_size)


# -- slicing ---------------------------------------------------------------------------------------
def slice_to(tensor: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """The slice of a supernet tensor a sub-network's tensor of ``shape`` takes: the first entries of
    every dimension, and the centre of a convolution's kernel (dimensions 2 and 3 of a 4-D weight)."""
    if tensor.dim() != len(shape):
        raise ValueError(f"cannot slice a {tuple(tensor.shape)} tensor to {tuple(shape)}")
    if tensor.dim() == 4 and tuple(tensor.shape[2:]) != tuple(shape[2:]):
        (kh, kw), (sh, sw) = tensor.shape[2:], shape[2:]
        top, left = (kh - sh) // 2, (kw - sw) // 2
        tensor = tensor[:, :, top:top + sh, left:left + sw]
    for dim, size in enumerate(shape):
        if size > tensor.shape[dim]:
            raise ValueError(f"a sub-network tensor of shape {tuple(shape)} is larger than the supernet's "
                             f"{tuple(tensor.shape)}")
        if size != tensor.shape[dim]:
            tensor = tensor.narrow(dim, 0, size)
    return tensor


def config_key(config: dict[str, Any]) -> str:
    return json.dumps(config, sort_keys=True, default=str)


class Supernet(nn.Module):
    """The weights every sub-network of one recipe is sliced from (see the module docstring)."""

    space: str = ""
    backbone_kinds: tuple[str, ...] = ()
    training_params: dict[str, str] = {}

    def __init__(self, largest: dict[str, Any], smallest: dict[str, Any]):
        """``largest`` and ``smallest``: the trial configs of the space's largest and smallest
        sub-networks (training/supernet.py asks the space for them), which bound every other."""
        super().__init__()
        self.largest = copy.deepcopy(largest)
        self.smallest = copy.deepcopy(smallest)

    def training_config(self, config: dict[str, Any]) -> dict[str, Any]:
        """The config a sampled sub-network trains as (e.g. with every head attached)."""
        return config

    def source_name(self, name: str, config: dict[str, Any]) -> str:
        """The supernet tensor a sub-network's tensor ``name`` is sliced from."""
        return name

    # -- slicing ---------------------------------------------------------------------------------
    def sub_state(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """Each tensor (parameter or buffer) of sub-network ``model`` as a slice (a view) of the supernet's."""
        own = dict(self.named_parameters())
        own.update(self.named_buffers())
        state = {}
        for name, tensor in model.state_dict(keep_vars=True).items():
            source = own.get(self.source_name(name, model.config))
            if source is None:
                raise KeyError(f"the supernet has no tensor for sub-network tensor {name!r} "
                               f"(looked for {self.source_name(name, model.config)!r})")
            state[name] = source if source.dim() == 0 else slice_to(source, tensor.shape)
        return state

    @functools.lru_cache(maxsize=128)
    def _shell(self, key: str) -> nn.Module:
        """A sub-network module to run with the supernet's slices (``functional_call``); its own
        weights are never used. Cached by config: building one costs a dry run."""
        return build_model(json.loads(key))

    def shell(self, config: dict[str, Any]) -> nn.Module:
        return self._shell(config_key(config))

    def run(self, config: dict[str, Any], x: torch.Tensor, buffers: dict[str, torch.Tensor] | None = None):
        """Sub-network ``config`` inside the supernet on ``x`` (the supernet's mode): its output, with
        gradients reaching the supernet's weights. ``buffers`` replaces batch-norm statistics."""
        shell = self.shell(config)
        shell.train(self.training)
        state = self.sub_state(shell)
        if buffers:
            state.update(buffers)
        return torch.func.functional_call(shell, state, (x,), strict=True)

    def subnet(self, config: dict[str, Any]) -> nn.Module:
        """The standalone sub-network ``config`` with copies of its slices, in eval mode."""
        model = build_model(copy.deepcopy(config))
        model.load_state_dict({k: v.detach().clone() for k, v in self.sub_state(model).items()})
        return model.eval()


@register_supernet("exits")
class ExitSupernet(Supernet):
    """Early-exit networks (BranchyNet, space ``exits``) over an elastic cnn, resnet or mlp backbone.

    Tensors: ``stem``, ``stages`` (the largest backbone: most stages, widest, deepest, largest
    kernel), ``exit_linear.<i>`` and ``exit_hidden.<i>`` (the two head forms after stage ``i``,
    the hidden one at the space's largest head width), ``classifiers.<s>`` (the final classifier
    of a sub-network whose last stage is ``s``).
    """

    backbone_kinds = ("cnn", "resnet", "mlp")
    training_params = {"exit_loss_weight": "exit_loss_weight", "lr": "lr"}

    def __init__(self, largest: dict[str, Any], smallest: dict[str, Any]):
        super().__init__(largest, smallest)
        largest = self.largest
        self.stem, stages = build_backbone(largest)
        self.stages = nn.ModuleList(stages)
        shapes = stage_output_shapes(self.stem, stages, largest["input_shape"])
        classes = largest["num_classes"]
        hidden = int(largest["exits"].get("head_width") or 0)
        last = len(stages) - 1
        first_last = len(self.smallest["backbone"]["widths"]) - 1
        self.exit_linear = nn.ModuleDict({str(i): make_head(shapes[i], classes) for i in range(last)})
        self.exit_hidden = nn.ModuleDict(
            {str(i): make_head(shapes[i], classes, hidden) for i in range(last)} if hidden else {})
        self.classifiers = nn.ModuleDict(
            {str(s): final_classifier(shapes[s], largest) for s in range(first_last, last + 1)})

    def training_config(self, config: dict[str, Any]) -> dict[str, Any]:
        """Every exit head attached (exits do not change the backbone's computation, so each sampled
        backbone trains all of its heads); ``joint`` training with the supernet's loss weight."""
        config = copy.deepcopy(config)
        stages = len(config["backbone"]["widths"])
        config["exits"]["stages"] = list(range(stages - 1))
        return config

    def source_name(self, name: str, config: dict[str, Any]) -> str:
        head, _, rest = name.partition(".")
        if head == "heads":
            stage, _, rest = rest.partition(".")
            form = "exit_hidden" if config["exits"].get("head_width") else "exit_linear"
            return f"{form}.{stage}.{rest}"
        if head == "classifier":
            return f"classifiers.{len(config['backbone']['widths']) - 1}.{rest}"
        return name


# -- batch-norm statistics of a sub-network ------------------------------------------------------------
def batch_norms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@torch.no_grad()
def recalibrate(model: nn.Module, inputs: torch.Tensor, batch_size: int) -> nn.Module:
    """Recompute ``model``'s batch-norm statistics on ``inputs`` (BigNAS: a sub-network's statistics
    are not the supernet's): reset, then a cumulative average over the batches in training mode.
    Deterministic for the same inputs and thread count. Returns the model in eval mode."""
    norms = batch_norms(model)
    if not norms:
        return model.eval()
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    try:
        for start in range(0, len(inputs), batch_size):
            model(inputs[start:start + batch_size])
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
    return model.eval()
