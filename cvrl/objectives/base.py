"""What a pretext method is, to the trainer.

Adding a method is one new file, `cvrl/objectives/<name>.py`, whose entry point `make` is its
`Objective` subclass (cvrl.core.discovery), plus a config: `config.objective.name=<name>`
imports that module by its name, and `names()` lists the methods. The trainer never
branches on the method's name.
"""
from __future__ import annotations

import abc
from typing import Any

import jax
import ml_collections
from flax import nnx

from cvrl import models
from cvrl.core import discovery

Metrics = dict[str, jax.Array]

def names() -> list[str]:
  """Every method: the modules of cvrl/objectives/ that define `make`."""
  return discovery.names("cvrl.objectives")


def get(config: ml_collections.ConfigDict) -> "Objective":
  """The objective named by `config.objective.name`, bound to the whole config."""
  name = config.objective.name
  objective = discovery.find("cvrl.objectives", name, "config.objective.name")(config)
  if models.extra_frames(objective.encoder_config()) and not objective.sampler().get(
      "extra_frames"):
    raise ValueError(f"config.model.input='dif' needs clips of T + 1 frames, which objective "
                     f"{name!r} does not sample (3DRotNet's objective.input='dif' does)")
  return objective


class Objective(abc.ABC):
  """A pretext task: the clips it needs, the modules it owns, its loss.

  `build` returns one NNX module holding `.encoder` (an R3D) and whatever heads, target
  networks or buffers the method needs. The trainer optimises the variables selected by
  `trainable` (nnx.Param by default: exclude e.g. momentum targets), carries every other
  variable through the step as state, and calls `loss` under jit in train mode.
  """
  def __init__(self, config: ml_collections.ConfigDict):
    self.config = config

  @property
  def name(self) -> str:
    """The method's name: its module's, as the config gives it."""
    return self.config.objective.name

  @abc.abstractmethod
  def sampler(self) -> dict[str, Any]:
    """The data sampler spec, e.g. {'name': 'cvrl'} (see cvrl.data.pipeline)."""

  @abc.abstractmethod
  def build(self, rngs: nnx.Rngs) -> nnx.Module:
    """The whole model: `.encoder` plus heads and any non-trained state."""

  @abc.abstractmethod
  def loss(self, model: nnx.Module, batch: dict[str, jax.Array], *, step: jax.Array,
           rng: jax.Array) -> tuple[jax.Array, Metrics]:
    """Scalar loss and metrics for one global batch. May update non-trained state in place."""

  def encoder_config(self) -> ml_collections.ConfigDict:
    """The model config `.encoder` is built with (config.model unless the method sets
    fields of its own, e.g. 3DRotNet's input='dif'). Downstream jobs take it as the
    checkpoint encoder's config (clips they sample, model.json they save), so it is the
    one record of what the encoder expects."""
    return self.config.model

  @property
  def trainable(self) -> Any:
    """An nnx filter selecting the variables the optimizer updates."""
    return nnx.Param

  def apply_update(self, model: nnx.Module, *, step: jax.Array) -> jax.Array | None:
    """Whether this step's optimizer update is applied, judged on the model before the step
    (inside jit). None (the default): always. A False step leaves parameters and optimizer
    state untouched (no weight decay, no momentum), as the reference skipping
    `optimizer.step()`; the objective's own state (queues, BN statistics) still advances."""
    return None

  def after_update(self, model: nnx.Module, *, step: jax.Array) -> None:
    """Runs after the optimizer step, inside jit: EMA targets, prototype normalisation."""

  def shown_views(self, video: jax.Array) -> tuple[jax.Array, list[str]]:
    """The clips of a finished batch [B, V, T, H, W, 3] as `loss` feeds them to the network
    ([B, V', T, H, W, 3]) and a name for each view: what `python -m cvrl.tools.show_clips`
    and the first batch's TensorBoard picture show (cvrl.engine.pictures)."""
    return video, [f"clip {v + 1}" for v in range(video.shape[1])]
