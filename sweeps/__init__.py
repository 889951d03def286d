"""mnist-sweeps: orchestration around train_trial (data, CLI edges, and later the sweep)."""
