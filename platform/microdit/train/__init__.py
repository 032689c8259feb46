"""Ray Train wiring: the per-worker loop, the TorchTrainer driver, checkpoints, EMA, cost."""
