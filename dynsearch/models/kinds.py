"""The backbone kinds a recipe may name (models/backbones.py builds them; imports nothing)."""
from __future__ import annotations

from typing import Any, Optional

BACKBONE_KINDS = ("cnn", "mlp", "resnet", "transformer", "user", "recurrent")


def backbone_extras(kind: str, kernel: int = 3, dropout: float = 0.0, ffn_width: Optional[int] = None
                    ) -> dict[str, Any]:
    """The backbone config keys beyond kind / widths / depth / heads, only where they differ from
    the defaults (kernel 3, no dropout, feed-forward twice the width): configs written before these
    keys existed build the same models, and a fixed backbone's config is what it was."""
    extras: dict[str, Any] = {}
    if kind in ("cnn", "resnet") and int(kernel) != 3:
        extras["kernel"] = int(kernel)
    if kind == "mlp" and dropout:
        extras["dropout"] = float(dropout)
    if kind == "transformer" and ffn_width is not None:
        extras["ffn_width"] = int(ffn_width)
    return extras
