"""The run directory: its files (RunDir), the Optuna study, the Pareto front and the report."""
