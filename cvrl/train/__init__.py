"""Training loops and what they share: state, optimizers, checkpoints, metrics."""
