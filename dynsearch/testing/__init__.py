"""Reusable test suites shipped with the package (as optuna ships ``optuna.testing``)."""
