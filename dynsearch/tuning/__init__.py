"""The search: Ray Tune runs trials, a Searcher over Optuna's ask/tell proposes them; run-time progress."""
