"""Pretext objectives; `get(config)` returns the one the config names."""
from cvrl.objectives.base import Objective, get, names

__all__ = ["Objective", "get", "names"]
