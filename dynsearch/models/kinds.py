"""The backbone kinds a recipe may name (models/backbones.py builds them; imports nothing)."""
from __future__ import annotations

from typing import Any, Optional

BACKBONE_KINDS = ("cnn", "mlp", "resnet", "transformer", "user", "recurrent")


CLASSIFIERS = ("pool", "flatten")  # the final classifier of a cnn / resnet (models/backbones.py make_head)


def backbone_extras(kind: str, kernel: int = 3, dropout: float = 0.0, ffn_width: Optional[int] = None,
                    classifier: str = "pool") -> dict[str, Any]:
    """The backbone config keys beyond kind / widths / depth / heads, only where they differ from
    the defaults (kernel 3, no dropout, feed-forward twice the width, pooled classifier): configs
    written before these keys existed build the same models, and a fixed backbone's config is what it was."""
    extras: dict[str, Any] = {}
    if kind in ("cnn", "resnet") and int(kernel) != 3:
        extras["kernel"] = int(kernel)
    if kind in ("cnn", "resnet") and classifier != "pool":
        extras["classifier"] = str(classifier)
    if kind == "mlp" and dropout:
        extras["dropout"] = float(dropout)
    if kind == "transformer" and ffn_width is not None:
        extras["ffn_width"] = int(ffn_width)
    return extras


def describe_backbone(backbone: dict[str, Any] | None) -> str:
    """A trial config's backbone in a few characters, e.g. ``cnn 16-32 d1 k3``, ``mlp 128-64 d1 p0.1``,
    ``transformer 32x4 d1 h2 f64``, ``recurrent 64``, ``user hidden=32``; ``-`` when there is none."""
    if not isinstance(backbone, dict) or "kind" not in backbone:
        return "-"
    kind, widths = backbone["kind"], list(backbone.get("widths") or [])
    if kind == "user":
        kwargs = backbone.get("kwargs") or {}
        name = str(backbone.get("callable", "")).rpartition(":")[2] or "user"
        shown = " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(kwargs.items()))
        return f"{name} {shown}".strip()
    if kind == "recurrent":
        return f"recurrent {widths[0] if widths else '?'}"
    depth = f"d{backbone.get('depth', 1)}"
    if kind == "transformer":
        width = widths[0] if widths else "?"
        ffn = backbone.get("ffn_width") or (2 * width if isinstance(width, int) else "?")
        return f"transformer {width}x{len(widths)} {depth} h{backbone.get('heads', 2)} f{ffn}"
    text = f"{kind} {'-'.join(map(str, widths))} {depth}"
    if kind in ("cnn", "resnet"):
        text += f" k{backbone.get('kernel', 3)}"
        if backbone.get("classifier", "pool") != "pool":
            text += f" {backbone['classifier']}"
    if kind == "mlp" and backbone.get("dropout"):
        text += f" p{float(backbone['dropout']):.2g}"
    return text
