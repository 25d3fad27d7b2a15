"""How a statistic of a mechanism is drawn: the StatView a mechanism declares and a report reads back.

Mechanisms declare one ``StatView`` per list-valued key of their ``trace_stats``
(``DynamicModel.stat_views``); a trial records them in its metrics.json
(``stat_views``), and the report draws each statistic from that record, so the
report needs no mechanism. This module imports nothing of dynsearch.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class StatView:
    """One statistic's panel: its title, axis labels and the stats key naming each bar (else: bar index).

    ``final_label``: the last entry is the model's final classifier, not one more position of the same kind
    (an exit histogram): each trial's bars are then drawn at its own positions, the last named so.
    ``absent_label``: what a position one trial has and another lacks means for the one that lacks it
    ("no gate on this block"), drawn apart from a recorded 0.
    """

    title: str
    x_label: str
    y_label: str
    labels_key: str | None = None
    final_label: str | None = None
    absent_label: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "StatView":
        return cls(str(data["title"]), str(data["x_label"]), str(data["y_label"]), data.get("labels_key"),
                   data.get("final_label"), data.get("absent_label"))

    @classmethod
    def generic(cls, key: str) -> "StatView":
        """The panel of a statistic no mechanism declared a view for."""
        return cls(key.replace("_", " "), "index", key)
