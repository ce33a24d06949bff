"""Evaluation on frozen features: the view runner, evaluators (one module per kind,
found by name: cvrl.eval.common), retrieval, scores and results."""
