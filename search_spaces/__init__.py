"""Define-by-run search spaces, one module per space, installed as ``dynsearch.search_spaces``.

A space module provides ``DEFAULTS`` (parameter values of its default point)
and ``define(trial, recipe, data) -> dict``, which asks an Optuna trial for
its parameters and returns the trial config (a JSON-serialisable dict that
``dynsearch.dynamic.build_model`` turns into a model).
"""
