"""User backbones (``backbone.kind: user``): the stages a user's callable returns, checked.

The callable is named in the recipe as ``package.module:function`` and
imported by ``dynsearch.user_code``; exits go between the stages it returns.
"""
from __future__ import annotations

from typing import Any, Sequence

from dynsearch.errors import UserError
from dynsearch.models.backbones import stage_output_shapes
from dynsearch.user_code import call_user, one_line

MAX_STAGES = 8  # the exit spaces have parameters for at most 8 stages


# -- user backbones ------------------------------------------------------------------
def user_stages(backbone: dict[str, Any]) -> list:
    """The stages a user backbone's callable returns (an ``nn.ModuleList``, ``nn.Sequential``
    or list of modules), checked: 2 to ``MAX_STAGES`` modules."""
    from torch import nn

    spec, field = backbone["callable"], "backbone.callable"
    stages = call_user(spec, backbone.get("module_path"), field, backbone.get("kwargs"))
    if isinstance(stages, (nn.ModuleList, nn.Sequential, list, tuple)):
        stages = list(stages)
    else:
        raise UserError(f"{field} {spec!r}: returned {type(stages).__name__}; return an nn.ModuleList "
                        "(or nn.Sequential) of the backbone's stages")
    if not all(isinstance(s, nn.Module) for s in stages):
        raise UserError(f"{field} {spec!r}: every stage must be an nn.Module; return an nn.ModuleList of stages")
    if not 2 <= len(stages) <= MAX_STAGES:
        raise UserError(f"{field} {spec!r}: returned {len(stages)} stage(s); return 2 to {MAX_STAGES} stages "
                        "(exits go between stages)")
    return stages


def check_user_backbone(backbone: dict[str, Any], input_shape: Sequence[int]) -> list[tuple[int, ...]]:
    """Dry-run a user backbone on the data's input shape; its stage output shapes, or a UserError."""
    from torch import nn

    stages = user_stages(backbone)
    try:
        return stage_output_shapes(nn.Identity(), stages, input_shape)
    except Exception as exc:
        raise UserError(f"backbone.callable {backbone['callable']!r}: its stages fail on inputs of shape "
                        f"{tuple(input_shape)} (the data's, no batch dim): {one_line(exc)}; "
                        "make the first stage take that shape") from None
