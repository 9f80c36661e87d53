"""What a worker process runs: `worker.py` takes a task, builds its networks and stores its
result; `arena_ops.py` holds the arena's ops (train-pair, match, cross-train); `trial.py` runs a
tuning trial as a nested experiment; `process.py` sets a worker process up before torch starts."""
