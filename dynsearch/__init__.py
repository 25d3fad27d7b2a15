"""dynsearch: search the architecture and runtime policy of dynamic neural networks."""
from dynsearch.api import SearchResult, pareto, search, train
from dynsearch.deploy.export import export
from dynsearch.deploy.load import load
from dynsearch.errors import UserError
from dynsearch.recipe import Recipe, load_recipe
from dynsearch.version import __version__

__all__ = [
    "Recipe", "SearchResult", "UserError", "export", "load", "load_recipe", "pareto", "search", "train", "__version__",
]
