"""dynsearch: search the architecture and runtime policy of dynamic neural networks.

Importing the package is light (no torch, Ray or Optuna): each function imports what it needs.
"""
from dynsearch.api import SearchResult, export, load, pareto, search, train
from dynsearch.errors import UserError
from dynsearch.recipe import Recipe, load_recipe
from dynsearch.version import __version__

__all__ = [
    "Recipe", "SearchResult", "UserError", "export", "load", "load_recipe", "pareto", "search", "train", "__version__",
]
