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


# -- ranking for successive halving (tuning/schedulers.py) -----------------------------------------
def promotion_order(gains: Sequence[Sequence[float]], tie_break: str = "epsilon-net") -> list[int]:
    """Indices of ``gains`` (one tuple per item, larger is better in every coordinate) best first.

    Non-dominated sorting: the items no other dominates come first, then those only the first layer
    dominates, and so on (Deb et al.'s fast non-dominated sort, by repeated filtering: a rung holds
    tens of trials). Within a layer, ``tie_break``: ``"epsilon-net"`` (Schmucker et al. 2021, MO-ASHA):
    start from the item best in the first coordinate, then repeatedly the item farthest from those
    already chosen, so the first k of a layer spread along it; ``"crowding"`` (NSGA-II): the largest
    crowding distance first (the layer's extremes, then the least crowded). Distances are taken on
    coordinates scaled to [0, 1] over all the items, so accuracy and MACs weigh alike. Deterministic:
    remaining ties go to the lower index.
    """
    points = [tuple(float(v) for v in g) for g in gains]
    if not points:
        return []
    dims = len(points[0])
    lows = [min(p[d] for p in points) for d in range(dims)]
    spans = [(max(p[d] for p in points) - lows[d]) or 1.0 for d in range(dims)]
    scaled = [tuple((p[d] - lows[d]) / spans[d] for d in range(dims)) for p in points]
    order: list[int] = []
    left = list(range(len(points)))
    while left:
        layer = [i for i in left if not any(_dominates(points[j], points[i]) for j in left if j != i)]
        order += _epsilon_net(layer, scaled) if tie_break == "epsilon-net" else _by_crowding(layer, scaled)
        left = [i for i in left if i not in set(layer)]
    return order


def _dominates(a: Sequence[float], b: Sequence[float]) -> bool:
    return all(x >= y for x, y in zip(a, b)) and any(x > y for x, y in zip(a, b))


def _epsilon_net(layer: list[int], scaled: list[tuple[float, ...]]) -> list[int]:
    first = min(layer, key=lambda i: (-scaled[i][0], i))
    chosen = [first]

    def distance(i: int, j: int) -> float:
        return sum((a - b) ** 2 for a, b in zip(scaled[i], scaled[j]))

    gap = {i: distance(i, first) for i in layer if i != first}  # each item's distance to the nearest chosen one
    while gap:
        far = max(gap, key=lambda i: (gap[i], -i))
        chosen.append(far)
        del gap[far]
        for i in gap:
            gap[i] = min(gap[i], distance(i, far))
    return chosen


def _by_crowding(layer: list[int], scaled: list[tuple[float, ...]]) -> list[int]:
    distance = {i: 0.0 for i in layer}
    for d in range(len(scaled[layer[0]])):
        ranked = sorted(layer, key=lambda i: (scaled[i][d], i))
        distance[ranked[0]] = distance[ranked[-1]] = float("inf")
        for before, i, after in zip(ranked, ranked[1:-1], ranked[2:]):
            distance[i] += scaled[after][d] - scaled[before][d]
    return sorted(layer, key=lambda i: (-distance[i], -scaled[i][0], i))
