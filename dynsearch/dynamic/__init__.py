"""Dynamic mechanisms: one module per family, registered through ``base.register_mechanism``.

Mechanisms of installed plugins (entry point group ``dynsearch.plugins``, see
plugins.py) are registered the first time ``build_model`` or ``mechanisms()``
is asked for one.
"""
from __future__ import annotations

from typing import Any

from dynsearch.dynamic import depth, exits, experts, gates, glance, halting  # noqa: F401  (registration side effect)
from dynsearch.dynamic.base import MECHANISMS, DynamicModel, DynamicOutput, MechanismInfo, Trace, register_mechanism
from dynsearch.errors import UserError
from dynsearch.plugins import load_plugins

__all__ = ["MECHANISMS", "DynamicModel", "DynamicOutput", "MechanismInfo", "Trace", "build_model", "mechanisms",
           "register_mechanism"]


def mechanisms() -> dict[str, MechanismInfo]:
    """Every registered mechanism by name: the built-in ones and those of installed plugins."""
    load_plugins()
    return MECHANISMS


def build_model(config: dict[str, Any]) -> DynamicModel:
    """Build the DynamicModel a trial config describes."""
    name = config.get("mechanism")
    if name not in MECHANISMS:
        load_plugins()
    if name not in MECHANISMS:
        raise UserError(
            f"config field 'mechanism': unknown mechanism {name!r}; use one of {sorted(MECHANISMS)}"
        )
    return MECHANISMS[name].cls(config)
