"""MkDocs hook: the pages and pictures made at build time rather than committed under docs/.

- ``recipe-reference.md``, written from the recipe schema at every build, so it cannot drift from
  ``dynsearch/recipe.py``: every field of ``Recipe`` and of its sections, with its type, default,
  bounds and description, the searchable backbone dimensions, the registered datasets and the
  search spaces. ``tests/test_docs.py`` checks that every field of the schema is on it.
- ``assets/default_search_pareto.png``: the README's picture, taken from ``benchmarks/results/``
  where ``benchmarks/default_search.py`` writes it (one copy in the repository).
"""
from __future__ import annotations

import types
import typing
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from pathlib import Path

PAGE = "recipe-reference.md"
PICTURE = "assets/default_search_pareto.png"
REPO = Path(__file__).resolve().parents[2]


def _type_name(annotation: Any) -> str:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Literal:
        return " \\| ".join(f"`{a}`" for a in args)
    if origin in (typing.Union, types.UnionType):
        names = [_type_name(a) for a in args if a is not type(None)]
        return " \\| ".join(names) + (" or null" if type(None) in args else "")
    if origin in (list, dict):
        return f"{origin.__name__} of " + ", ".join(_type_name(a) for a in args) if args else origin.__name__
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "section"
    return getattr(annotation, "__name__", str(annotation)).replace("typing.", "")


def _default(field) -> str:
    if field.default_factory is not None:
        made = field.default_factory()
        if isinstance(made, BaseModel):
            return "see below"
        value = [o.model_dump() if isinstance(o, BaseModel) else o for o in made] if isinstance(made, list) else made
        return f"`{value}`"
    if field.default is PydanticUndefined:
        return "required"
    return f"`{field.default}`" if field.default is not None else "none"


def _bounds(field) -> str:
    words = []
    for item in field.metadata:
        for attr, symbol in (("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<"), ("min_length", "length ≥"),
                             ("max_length", "length ≤")):
            value = getattr(item, attr, None)
            if value is not None:
                words.append(f"{symbol} {value}")
    return ", ".join(words)


def _rows(model: type[BaseModel], prefix: str, sections: list) -> list[str]:
    rows = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        inner = typing.get_args(annotation)[0] if typing.get_origin(annotation) is list else annotation
        if isinstance(inner, type) and issubclass(inner, BaseModel):
            item = "[]" if inner is not annotation else ""  # a list of sections: objectives[].name
            sections.append((f"{prefix}{name}{item}", inner, field.description))
        bounds = _bounds(field)
        text = (field.description or "").replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")
        rows.append(f"| `{prefix}{name}` | {_type_name(annotation)} | {_default(field)} | {bounds} | {text} |")
    return rows


def render() -> str:
    """The whole reference page as Markdown."""
    from dynsearch.data import DATASETS
    from dynsearch.recipe import SEARCH_DIMENSIONS, Recipe
    from dynsearch.spaces import available_spaces

    header = "| field | type | default | bounds | meaning |\n|---|---|---|---|---|"
    lines = [
        "# Recipe reference",
        "",
        "Generated from the recipe schema (`dynsearch/recipe.py`) each time the docs are built.",
        "A recipe is YAML read with `yaml.safe_load` and validated by pydantic: an unknown or invalid",
        "field stops the command with one line naming the field and the fix (exit code 2).",
        "[Recipes](recipes.md) explains how the fields work together.",
        "",
        "## Top level",
        "",
        header,
    ]
    sections: list = []
    lines += _rows(Recipe, "", sections)
    while sections:
        path, model, description = sections.pop(0)
        lines += ["", f"## `{path}`", ""]
        if description:
            lines += [description[0].upper() + description[1:] + ".", ""]
        lines += [header] + _rows(model, f"{path}.", sections)
    lines += ["", "## Searchable backbone dimensions (`backbone.search`)", "",
              "Each dimension is `[low, high]`, `{int: [low, high]}` or `{float: [low, high]}` (with optional",
              "`log: true` or `step: N`), or `{choices: [...]}`. With `kind: user`, any keyword argument of",
              "your callable.", "", "| kind | dimensions (value type) |", "|---|---|"]
    for kind, dims in SEARCH_DIMENSIONS.items():
        lines.append(f"| `{kind}` | " + ", ".join(f"`{d}` ({t})" for d, t in dims.items()) + " |")
    lines += ["", "## Datasets (`data.name`)", "", "| name | description |", "|---|---|"]
    for name, info in sorted(DATASETS.items()):
        lines.append(f"| `{name}` | {info.description} |")
    lines += ["", "## Search spaces (`space`)", "", ", ".join(f"`{s}`" for s in available_spaces()) + "", ""]
    return "\n".join(lines)


def on_files(files, config):  # MkDocs event: add the generated page to the site
    from mkdocs.structure.files import File

    files.append(File.generated(config, PAGE, content=render()))
    files.append(File.generated(config, PICTURE, abs_src_path=str(REPO / "benchmarks/results/default_search_pareto.png")))
    return files
