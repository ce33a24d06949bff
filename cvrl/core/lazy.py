"""A module imported on first use: `tf = lazy.Module("tensorflow")`.

What a sampler or a source is (its views, frames, counts) is read where TensorFlow may be
absent (the train step, experiments.bench_step, the sources' own package); the functions
that build tf.data graphs load TensorFlow on their first attribute access.
"""
from __future__ import annotations

import importlib


class Module:
  """Stands for the module `name` until an attribute is read, then imports it."""

  def __init__(self, name: str):
    self._name = name

  def __getattr__(self, attr):
    if attr.startswith("__"):
      raise AttributeError(attr)
    return getattr(importlib.import_module(self._name), attr)
