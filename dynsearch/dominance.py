"""The one Pareto filter: which items no other item dominates on given objectives.

Pure Python, at the bottom of the house, so that every layer that ranks (the
fronts of a run in run/front.py, a trial's own operating points in
measure/points.py) uses the same rule.
"""
from __future__ import annotations

from typing import Any, Sequence


def non_dominated(items: list[dict[str, Any]], objectives: Sequence[tuple[str, str]]) -> list[dict[str, Any]]:
    """Items no other item dominates on ``objectives`` = (key, "max" | "min") pairs; ties are all kept.

    The one Pareto filter: the front of trials and the front of operating points
    both use it, with the recipe's objectives (``latency_ms`` included).
    """
    signs = [(key, 1.0 if direction == "max" else -1.0) for key, direction in objectives]
    gains = [tuple(sign * float(item[key]) for key, sign in signs) for item in items]

    def dominates(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
        return all(x >= y for x, y in zip(a, b)) and any(x > y for x, y in zip(a, b))

    # In decreasing lexicographic order of gains, whatever dominates an item comes before it, and if a
    # dominated item dominates it, so does a kept one: each item is checked against the kept ones only
    # (thousands of one-shot evaluations' points in about n x front comparisons, not n^2).
    kept: list[int] = []
    for i in sorted(range(len(items)), key=lambda i: gains[i], reverse=True):
        if not any(dominates(gains[k], gains[i]) for k in kept):
            kept.append(i)
    return [items[i] for i in sorted(kept)]
