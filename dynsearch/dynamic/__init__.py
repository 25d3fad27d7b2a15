"""Dynamic mechanisms: one module per family, registered through ``base.register_mechanism``."""
from dynsearch.dynamic import depth, exits, experts, gates, halting  # noqa: F401  (registration side effect)
from dynsearch.dynamic.base import (
    MECHANISMS,
    DynamicModel,
    DynamicOutput,
    Trace,
    build_model,
    register_mechanism,
)

__all__ = ["MECHANISMS", "DynamicModel", "DynamicOutput", "Trace", "build_model", "register_mechanism"]
