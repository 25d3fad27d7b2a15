"""dynsearch: search the architecture and runtime policy of dynamic neural networks.

Importing the package is light (no torch, Ray or Optuna, and not even the recipe model until a
name below is used: ``dynsearch --help`` answers at once): each function imports what it needs.
"""
from dynsearch.errors import UserError
from dynsearch.version import __version__

__all__ = [
    "Recipe", "SearchResult", "UserError", "export", "load", "load_recipe", "pareto", "search", "train", "trials",
    "__version__",
]
_FROM = {"Recipe": "dynsearch.recipe", "load_recipe": "dynsearch.recipe"}


def __getattr__(name: str):
    # PEP 562: the API (and with it pydantic and the recipe model) is imported on first use.
    if name in __all__:
        import importlib

        value = getattr(importlib.import_module(_FROM.get(name, "dynsearch.api")), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'dynsearch' has no attribute {name!r}")
