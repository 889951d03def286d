"""The sweep: an Optuna study over search_space.suggest, its worker processes, what it stores, recovery, reproduction and the baselines at a budget."""
