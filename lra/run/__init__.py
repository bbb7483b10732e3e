"""One run: `train(cfg)` read top to bottom, the chunked step, the run's state, checkpoints, the schedule,
batches, progress and memory."""
