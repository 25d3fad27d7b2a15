"""Resolve search spaces by name and evaluate their default point."""
from __future__ import annotations

import functools
import importlib
import json
import pkgutil
import warnings
from typing import Any

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
    params = {**space.DEFAULTS, **recipe.defaults}
    unknown = sorted(set(recipe.defaults) - set(space.DEFAULTS))
    if unknown:
        raise UserError(
            f"recipe field 'defaults': unknown parameter(s) {unknown} for space {recipe.space!r}; "
            f"use {sorted(space.DEFAULTS)}"
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

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    trial = optuna.create_study().ask()
    get_space(recipe.space).define(trial, recipe, data)
    if not trial.distributions:
        raise UserError(
            f"recipe field 'space': search space {recipe.space!r} asks for no parameters, so there is nothing "
            "to search; use 'dynsearch train' for a single model or a space with parameters"
        )


@functools.lru_cache(maxsize=16)
def _user_stage_count(backbone_json: str) -> int:
    from dynsearch.models.user import user_stages

    return len(user_stages(json.loads(backbone_json)))


def num_stages(backbone) -> int:
    """Stages of a recipe's backbone: one per width, or as many as a user backbone's callable returns."""
    if backbone.kind != "user":
        return len(backbone.widths)
    return _user_stage_count(json.dumps(backbone.model_dump(), sort_keys=True))


def suggest_exit_stages(trial, count: int, prefix: str = "exit_after_stage") -> list[int]:
    """Ask, for each of the first ``count`` stages, whether an exit head follows it."""
    return [i for i in range(count) if trial.suggest_categorical(f"{prefix}_{i}", [True, False])]


def trial_config(trial, recipe, data, mechanism: str, parts: dict[str, Any],
                 lr_range: tuple[float, float] = (1e-3, 2e-2)) -> dict[str, Any]:
    """A trial config: what every space shares around the mechanism's own ``parts``.

    The learning rate is asked here, after the mechanism's parameters (the
    order in which a trial asks is part of what a seeded sampler reproduces).
    """
    return {
        "mechanism": mechanism,
        "input_shape": list(data.input_shape),
        "num_classes": data.num_classes,
        "backbone": recipe.backbone.as_config(),
        **parts,
        "train": {
            "lr": trial.suggest_float("lr", *lr_range, log=True),
            "epochs": recipe.epochs,
            "batch_size": recipe.batch_size,
            "seed": recipe.seed + trial.number,
        },
        "trial": trial.number,
    }
