"""Pretext objectives; `from_config(config)` returns the one a pretraining config names,
`get(spec, encoder, run)` the one of typed arguments."""
from cvrl.objectives.base import EncoderSpec, Objective, Run, from_config, get, names

__all__ = ["EncoderSpec", "Objective", "Run", "from_config", "get", "names"]
