"""Plugins: packages outside dynsearch that add mechanisms or search spaces.

A plugin declares an entry point in the group ``dynsearch.plugins`` whose value
is a module; importing that module registers what it adds
(``@register_mechanism`` for a DynamicModel, ``register_space`` for a search
space). dynsearch imports every plugin module once, the first time it looks up
a mechanism or a space by name, so an installed plugin is found by the CLI, the
search, its Ray workers and ``dynsearch.load`` alike, with no file of dynsearch
edited. In a project's ``pyproject.toml``::

    [project.entry-points."dynsearch.plugins"]
    my_mechanism = "my_package.my_mechanism"
"""
from __future__ import annotations

import importlib
from importlib import metadata

from dynsearch.errors import UserError

GROUP = "dynsearch.plugins"
_loaded: set[str] = set()


def load_plugins() -> list[str]:
    """Import every plugin module not imported yet; return the names of those imported now."""
    imported = []
    for entry in metadata.entry_points(group=GROUP):
        if entry.value in _loaded:
            continue
        _loaded.add(entry.value)
        try:
            importlib.import_module(entry.value)
        except Exception as exc:
            first = (str(exc).splitlines() or [""])[0][:200]
            raise UserError(f"plugin {entry.name!r} ({entry.value}): importing it raised "
                            f"{exc.__class__.__name__}: {first}; fix or uninstall the plugin") from None
        imported.append(entry.value)
    return imported
