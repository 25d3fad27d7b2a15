"""A user's own code named in a recipe as ``package.module:function`` (data and backbones).

At recipe time ``find_module_dir`` resolves where the module lives (``module_path``,
else the recipe file's folder, else the current directory, else ``sys.path``) and the
recipe records that folder as an absolute path. Ray trial workers, whose working
directory is a per-trial folder (PITFALLS.md), and ``dynsearch.load`` import the
module from there, or from ``sys.path`` when the folder is gone: an exported
model with a user backbone needs its module importable to be rebuilt.
"""
from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import re
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

from dynsearch.errors import UserError

_CALLABLE = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*$")


def check_callable_syntax(spec: str, field: str) -> None:
    if not _CALLABLE.match(spec):
        raise ValueError(f"{field} {spec!r} is not 'package.module:function'; write it like my_data:load")


def find_module_dir(spec: str, field: str, search_dirs: Sequence[Path]) -> str | None:
    """The folder among ``search_dirs`` holding ``spec``'s top-level module, or None when it is
    installed (on ``sys.path``); ValueError naming ``field`` and the fix when it is nowhere."""
    check_callable_syntax(spec, field)
    top = spec.split(":")[0].split(".")[0]
    for folder in search_dirs:
        if importlib.machinery.PathFinder.find_spec(top, [str(folder)]) is not None:
            return str(folder)
    if top in sys.modules or importlib.util.find_spec(top) is not None:
        return None
    where = " or ".join(str(d) for d in dict.fromkeys(search_dirs))
    raise ValueError(f"{field} {spec!r}: module {top!r} not found in {where} or on sys.path; "
                     f"put {top}.py next to the recipe or set {field.rpartition('.')[0]}.module_path")


def import_callable(spec: str, module_path: str | None, field: str) -> Callable[..., Any]:
    """The function ``spec`` names, imported from ``module_path`` (if that folder exists) or ``sys.path``."""
    module_name, _, function_name = spec.partition(":")
    if module_path and Path(module_path).is_dir() and module_path not in sys.path:
        sys.path.insert(0, module_path)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        where = f"{module_path} nor " if module_path else ""
        raise UserError(f"{field} {spec!r}: module {exc.name!r} cannot be imported (not in {where}sys.path); "
                        f"put {module_name.split('.')[0]}.py on PYTHONPATH or in the current directory") from None
    except Exception as exc:
        raise UserError(f"{field} {spec!r}: importing {module_name} raised {one_line(exc)}; fix the module") from None
    function = getattr(module, function_name, None)
    if not callable(function):
        raise UserError(f"{field} {spec!r}: module {module_name} has no function {function_name!r}; "
                        "check the name after the colon")
    return function


def call_user(spec: str, module_path: str | None, field: str, kwargs: dict[str, Any] | None = None) -> Any:
    """Import and call ``spec``; an exception it raises becomes a one-line UserError."""
    function = import_callable(spec, module_path, field)
    try:
        return function(**(kwargs or {}))
    except Exception as exc:
        raise UserError(f"{field} {spec!r} raised {one_line(exc)}; fix the function") from None


def one_line(exc: BaseException) -> str:
    first = (str(exc).splitlines() or [""])[0][:300]
    return f"{exc.__class__.__name__}: {first}" if first else exc.__class__.__name__
