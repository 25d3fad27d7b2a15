"""The prepared problem: everything a run needs, checked and loaded once, before any run directory exists.

``prepare(recipe)`` is the one step between a validated recipe and a run: it
checks the target device, loads the data splits, checks a user's backbone
against the data, and (for a search) that the search space asks for something.
Anything the user can fix fails here, as a one-line ``UserError``, before a
file is written. ``dynsearch train`` and every search strategy start from the
``Problem`` it returns; the search loop (``tuning/``) receives it and never
loads data or builds models itself.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dynsearch.recipe import Recipe


@dataclass(frozen=True)
class DataShape:
    """What a search space needs to know of the data: the shape of one input and the number of classes."""

    input_shape: tuple[int, ...]
    num_classes: int


@dataclass
class Problem:
    """A recipe with its data loaded and checked.

    ``splits``: the train / validation / test tensors (``dynsearch.data.Splits``), loaded
    once by the driver and shipped to the trials through Ray's object store.
    """

    recipe: Recipe
    splits: Any

    @property
    def shape(self) -> DataShape:
        return DataShape(tuple(self.splits.input_shape), int(self.splits.num_classes))


def prepare(recipe: Recipe, search: bool = True) -> Problem:
    """Check and load what a run of ``recipe`` needs; raise ``UserError`` (one line) for what the user can fix.

    ``search`` False: for ``dynsearch train`` (one model at the default point: the space
    need not ask for parameters, and latency is timed here, so the device must be here).
    """
    from dynsearch.data import load_data
    from dynsearch.measure.device import resolve_device
    from dynsearch.spaces import check_augment, check_space, default_backbone

    if recipe.measures_latency and not (search and recipe.latency.resource):
        resolve_device(recipe.latency.device)  # timed on another node (latency.resource): checked there
    splits = load_data(recipe.data)
    problem = Problem(recipe, splits)
    if recipe.backbone.kind == "user":
        from dynsearch.models.user import check_user_backbone

        check_user_backbone(default_backbone(recipe), splits.input_shape)
    if search:
        if recipe.one_shot:
            from dynsearch.dynamic.supernet import check_supported

            check_supported(recipe)
        check_space(recipe, problem.shape)  # augment included
    else:
        check_augment(recipe, splits.input_shape)
    return problem

