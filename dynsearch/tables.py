"""Tables the command prints: rich in a terminal, plain aligned lines otherwise (never cut to 80 columns).

A pipe, a file or CI gets one line per row, columns separated by two spaces,
whatever their width, so ``grep`` and ``awk`` see every cell whole. Imports
nothing of dynsearch; rich only when stdout is a terminal.
"""
from __future__ import annotations

import sys
from typing import Sequence


def plain_lines(title: str, columns: Sequence[str], rows: Sequence[Sequence[str]],
                right: Sequence[bool] | None = None) -> list[str]:
    """The table as plain text lines: the title, the header, one line per row; no trailing spaces."""
    right = list(right) if right is not None else [False] * len(columns)
    widths = [max([len(c)] + [len(r[i]) for r in rows]) for i, c in enumerate(columns)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.rjust(w) if r else c.ljust(w) for c, w, r in zip(cells, widths, right)).rstrip()

    return [title, line(columns)] + [line(row) for row in rows]


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[str]],
                right: Sequence[bool] | None = None, wrap: Sequence[str] = ()) -> None:
    """Print a table on stdout: rich when stdout is a terminal, ``plain_lines`` otherwise.

    ``right``: per column, right-aligned (numbers); ``wrap``: columns a narrow terminal may wrap.
    """
    right = list(right) if right is not None else [False] * len(columns)
    if not sys.stdout.isatty():
        print("\n".join(plain_lines(title, columns, rows, right)))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for column, is_right in zip(columns, right):
        table.add_column(column, justify="right" if is_right else "left", no_wrap=column not in wrap)
    for row in rows:
        table.add_row(*row)
    Console().print(table)
