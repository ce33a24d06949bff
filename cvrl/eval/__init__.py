"""Evaluation on frozen features: the view runner, evaluators, retrieval, scores and results."""
