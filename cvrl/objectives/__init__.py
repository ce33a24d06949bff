"""Pretext objectives; `method(**config_lib.method_args(config))` returns the one a
pretraining config names, `get(spec, encoder, run)` the one of typed arguments."""
from cvrl.objectives.base import EncoderSpec, Objective, Run, get, method, names

__all__ = ["EncoderSpec", "Objective", "Run", "get", "method", "names"]
