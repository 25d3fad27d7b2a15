"""Resolve search spaces by name and evaluate their default point."""
from __future__ import annotations

import functools
import importlib
import json
import pkgutil
import warnings
from typing import Any

from dynsearch.models.kinds import backbone_extras
from dynsearch.plugins import load_plugins

# Spaces registered at run time (a user's own, or a test's), by name.
_REGISTERED: dict[str, Any] = {}


def register_space(name: str, space: Any) -> None:
    """Make ``space`` (anything with ``DEFAULTS`` and ``define(trial, recipe, data)``)
    usable as ``space: name`` in recipes of this process."""
    if not callable(getattr(space, "define", None)) or not isinstance(getattr(space, "DEFAULTS", None), dict):
        raise TypeError("a search space needs a DEFAULTS dict and a define(trial, recipe, data) function")
    _REGISTERED[name] = space


def require_backbone_kind(recipe, space: str, kind: str) -> None:
    """The check a space makes when it builds on one backbone kind (raised as a recipe error)."""
    if recipe.backbone.kind != kind:
        raise ValueError(f"space '{space}' needs backbone.kind: {kind} (got {recipe.backbone.kind}); set it")


def available_spaces() -> list[str]:
    load_plugins()
    # The shipped spaces live outside dynsearch/ (search_spaces/, installed as dynsearch.search_spaces)
    # and are found by name, like a user's registered ones.
    package = importlib.import_module("dynsearch.search_spaces")
    shipped = {m.name for m in pkgutil.iter_modules(package.__path__) if not m.name.startswith("_")}
    return sorted(shipped | set(_REGISTERED))


def get_space(name: str) -> Any:
    """The space ``name``: registered (a plugin's, a user's) or shipped in dynsearch.search_spaces."""
    if name not in _REGISTERED:
        load_plugins()
    if name in _REGISTERED:
        return _REGISTERED[name]
    return importlib.import_module(f"dynsearch.search_spaces.{name}")


def default_config(recipe, data) -> dict[str, Any]:
    """The trial config of the space's default point, with the recipe's ``defaults`` applied."""
    import optuna

    from dynsearch.errors import UserError

    space = get_space(recipe.space)
    known = {**backbone_defaults(recipe), **space.DEFAULTS}
    params = {**known, **recipe.defaults}
    unknown = sorted(set(recipe.defaults) - set(known))
    if unknown:
        raise UserError(
            f"recipe field 'defaults': unknown parameter(s) {unknown} for space {recipe.space!r}; "
            f"use {sorted(known)}"
        )
    trial = optuna.trial.FixedTrial(params, number=0)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # out-of-range values are reported below instead
            config = space.define(trial, recipe, data)
    except ValueError as exc:  # a categorical value outside its choices
        raise UserError(f"recipe field 'defaults': {exc}; pick one of the space's choices") from None
    for name, distribution in trial.distributions.items():
        if not _inside(distribution, params[name]):
            raise UserError(
                f"recipe field 'defaults.{name}': {params[name]!r} is outside the space ({distribution}); "
                "pick a value inside it"
            )
    return config


def _inside(distribution, value) -> bool:
    """Whether ``value`` lies in an Optuna distribution: its public ``choices``, or ``low``/``high``/``step``.

    The same test as the distributions' own (private) ``_contains``, tolerance of float steps included.
    """
    import optuna

    number = distribution.to_internal_repr(value)  # raises ValueError for a value of the wrong type
    if isinstance(distribution, optuna.distributions.CategoricalDistribution):
        return True  # to_internal_repr found it among the choices
    if not distribution.low <= number <= distribution.high:
        return False
    if distribution.step is None:
        return True
    if isinstance(distribution, optuna.distributions.IntDistribution):
        return (number - distribution.low) % distribution.step == 0
    steps = (number - distribution.low) / distribution.step
    return abs(steps - round(steps)) < 1.0e-8


def check_space(recipe, data) -> None:
    """Refuse a search space that asks for no parameters (nothing to search).

    The space defines one trial of a throwaway in-memory study; nothing is written.
    """
    import optuna

    from dynsearch.errors import UserError

    check_augment(recipe, data.input_shape)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    trial = optuna.create_study().ask()
    get_space(recipe.space).define(trial, recipe, data)
    if not trial.distributions:
        raise UserError(
            f"recipe field 'space': search space {recipe.space!r} asks for no parameters, so there is nothing "
            "to search; use 'dynsearch train' for a single model or a space with parameters"
        )


def check_augment(recipe, input_shape) -> None:
    """Refuse ``augment`` on data that is not images ``[C, H, W]``."""
    from dynsearch.errors import UserError

    if recipe.augment and len(tuple(input_shape)) != 3:
        raise UserError(
            f"recipe field 'augment': {', '.join(recipe.augment)} needs image data [C, H, W], but this data's "
            f"inputs have shape {list(input_shape)}; remove 'augment' for this data"
        )


@functools.lru_cache(maxsize=64)
def _user_stage_count(backbone_json: str) -> int:
    from dynsearch.models.user import user_stages

    return len(user_stages(json.loads(backbone_json)))


def _as_dict(backbone) -> dict[str, Any]:
    """A backbone as a trial config's ``backbone`` dict (a recipe's BackboneSpec: its fixed form)."""
    return backbone if isinstance(backbone, dict) else backbone.as_config()


def num_stages(backbone) -> int:
    """Stages of a backbone (a trial config's ``backbone`` dict, or a recipe's fixed one): one per
    width, or as many as a user backbone's callable returns with its keyword arguments."""
    backbone = _as_dict(backbone)
    if backbone["kind"] != "user":
        return len(backbone["widths"])
    return _user_stage_count(json.dumps(backbone, sort_keys=True, default=str))


def num_blocks(backbone) -> int:
    """Blocks (layers) of a built-in backbone over all its stages: stages x depth."""
    backbone = _as_dict(backbone)
    return len(backbone["widths"]) * int(backbone["depth"])


# -- the backbone's architecture, searched (recipe backbone.search) ---------------------------
BACKBONE_PREFIX = "backbone_"


def _suggest_dimension(trial, name: str, dim: dict[str, Any]) -> Any:
    if "choices" in dim:
        return trial.suggest_categorical(name, list(dim["choices"]))
    if "int" in dim:
        low, high = dim["int"]
        return trial.suggest_int(name, low, high, step=dim.get("step") or 1, log=bool(dim.get("log")))
    low, high = dim["float"]
    return trial.suggest_float(name, low, high, step=dim.get("step"), log=bool(dim.get("log")))


def suggest_backbone(trial, recipe) -> dict[str, Any]:
    """The trial's backbone config: the recipe's fixed backbone, with every dimension that
    ``backbone.search`` names asked of ``trial`` first (define-by-run).

    Parameter names are stable whatever else the trial chose: ``backbone_stages``,
    ``backbone_width_<i>`` (stage i; cnn, resnet, mlp), ``backbone_width`` (transformer,
    recurrent: one width), ``backbone_depth``, ``backbone_kernel``, ``backbone_dropout``,
    ``backbone_heads``, ``backbone_ffn_width``, and ``backbone_<kwarg>`` for a user backbone.
    With no search section it asks nothing (seeded searches of older recipes reproduce).
    Asking twice in one trial returns the same values (Optuna keeps a trial's parameters).
    """
    spec = recipe.backbone
    config = spec.as_config()
    search = spec.search or {}
    if not search:
        return config
    def ask(name: str, suffix: str = "") -> Any:
        return _suggest_dimension(trial, BACKBONE_PREFIX + name + suffix, search[name])

    if spec.kind == "user":
        config["kwargs"] = {**config.get("kwargs", {}), **{name: ask(name) for name in search}}
        return config
    stages = ask("stages") if "stages" in search else len(spec.widths)
    if spec.kind in ("transformer", "recurrent"):
        heads = ask("heads") if "heads" in search else spec.heads
        width = ask("width") if "width" in search else spec.widths[0]
        widths = [width] * (stages if spec.kind == "transformer" else 1)
    else:
        heads = spec.heads
        widths = [ask("width", f"_{i}") if "width" in search else spec.widths[min(i, len(spec.widths) - 1)]
                  for i in range(stages)]
    depth = ask("depth") if "depth" in search else spec.depth
    kernel = ask("kernel") if "kernel" in search else spec.kernel
    dropout = ask("dropout") if "dropout" in search else spec.dropout
    ffn_width = ask("ffn_width") if "ffn_width" in search else spec.ffn_width
    config.update(widths=[int(w) for w in widths], depth=int(depth), heads=int(heads))
    for key in ("kernel", "dropout", "ffn_width", "classifier"):
        config.pop(key, None)
    config.update(backbone_extras(spec.kind, kernel, dropout, ffn_width, spec.classifier))
    return config


def _nearest(dim: dict[str, Any], value: Any) -> Any:
    """The value of ``dim`` nearest ``value`` (the fixed backbone's, as the default point)."""
    if "choices" in dim:
        choices = list(dim["choices"])
        if value in choices:
            return value
        numbers = [c for c in choices if isinstance(c, (int, float)) and not isinstance(c, bool)]
        if numbers and isinstance(value, (int, float)) and not isinstance(value, bool):
            return min(numbers, key=lambda c: abs(c - value))
        return choices[0]
    kind = "int" if "int" in dim else "float"
    low, high = dim[kind]
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        value = low
    value = min(max(value, low), high)
    step = dim.get("step")
    if step:
        value = low + round((value - low) / step) * step
        if value > high:
            value -= step
    return int(value) if kind == "int" else float(value)


def backbone_defaults(recipe) -> dict[str, Any]:
    """The default point's backbone parameters: the recipe's fixed fields, moved into the ranges."""
    spec = recipe.backbone
    search = spec.search or {}
    if spec.kind == "user":
        return {BACKBONE_PREFIX + name: _nearest(dim, spec.kwargs.get(name)) for name, dim in search.items()}
    fixed = {"stages": len(spec.widths), "depth": spec.depth, "kernel": spec.kernel, "dropout": spec.dropout,
             "heads": spec.heads, "ffn_width": spec.ffn_width or 2 * spec.widths[0]}
    defaults = {BACKBONE_PREFIX + name: _nearest(dim, fixed[name]) for name, dim in search.items() if name != "width"}
    if "width" in search:
        if spec.kind in ("transformer", "recurrent"):
            defaults[BACKBONE_PREFIX + "width"] = _nearest(search["width"], spec.widths[0])
        else:
            for i in range(8):
                defaults[f"{BACKBONE_PREFIX}width_{i}"] = _nearest(search["width"], spec.widths[min(i, len(spec.widths) - 1)])
    return defaults


def default_backbone(recipe) -> dict[str, Any]:
    """The backbone config of the default point (``backbone_defaults`` asked of a fixed trial)."""
    import optuna

    return suggest_backbone(optuna.trial.FixedTrial(backbone_defaults(recipe)), recipe)


def _largest(dim: dict[str, Any] | None, fixed: int) -> int:
    if dim is None:
        return fixed
    if "choices" in dim:
        return max(dim["choices"])
    return dim["int"][1]


def backbone_upper_bounds(recipe) -> tuple[int, int]:
    """The most stages and the greatest depth the recipe's backbone can have (fixed or searched)."""
    spec, search = recipe.backbone, recipe.backbone.search or {}
    if spec.kind == "user":
        return num_stages(default_backbone(recipe)), 1
    return _largest(search.get("stages"), len(spec.widths)), _largest(search.get("depth"), spec.depth)


def suggest_exit_stages(trial, count: int, prefix: str = "exit_after_stage") -> list[int]:
    """Ask, for each of the first ``count`` stages, whether an exit head follows it."""
    return [i for i in range(count) if trial.suggest_categorical(f"{prefix}_{i}", [True, False])]


def trial_config(trial, recipe, data, mechanism: str, parts: dict[str, Any],
                 lr_range: tuple[float, float] = (1e-3, 2e-2), backbone: dict[str, Any] | None = None,
                 ) -> dict[str, Any]:
    """A trial config: what every space shares around the mechanism's own ``parts``.

    ``backbone`` is the trial's backbone as the space asked it first (``suggest_backbone``);
    a space that did not ask gets it asked here (the same values if it was asked already).

    The learning rate is asked here, after the mechanism's parameters (the
    order in which a trial asks is part of what a seeded sampler reproduces).
    """
    return {
        "mechanism": mechanism,
        "input_shape": list(data.input_shape),
        "num_classes": data.num_classes,
        "backbone": backbone if backbone is not None else suggest_backbone(trial, recipe),
        **parts,
        "train": {
            "lr": trial.suggest_float("lr", *lr_range, log=True),
            "epochs": recipe.epochs,
            "batch_size": recipe.batch_size,
            "lr_schedule": recipe.lr_schedule,
            "augment": list(recipe.augment),
            "channels_last": recipe.channels_last,
            "seed": recipe.seed + trial.number,
        },
        "trial": trial.number,
    }
