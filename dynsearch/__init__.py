"""dynsearch: search the architecture and runtime policy of dynamic neural networks."""
from dynsearch.api import SearchResult, search, train
from dynsearch.bundle import export, load
from dynsearch.errors import UserError
from dynsearch.front import pareto
from dynsearch.recipe import Recipe, load_recipe

__version__ = "0.1.0"
__all__ = [
    "Recipe", "SearchResult", "UserError", "export", "load", "load_recipe", "pareto", "search", "train", "__version__",
]
