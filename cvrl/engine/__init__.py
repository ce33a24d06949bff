"""The training engine: one loop for every job and method, its step, state, optimiser, checkpoints, metrics and input."""
