"""What a pretext method is, to the trainer.

Adding a method is one new file, `cvrl/objectives/<name>.py`, whose entry point `make` is its
`Objective` subclass (cvrl.core.discovery), plus a config: `config.objective.name=<name>`
imports that module by its name, and `names()` lists the methods. The subclass's
constructor is its config schema (cvrl.core.schema): the job gives the encoder spec and
the run, config.objective's fields are its keyword arguments. The trainer never branches
on the method's name.
"""
from __future__ import annotations

import abc
import dataclasses
from typing import Any

import jax
import ml_collections
from flax import nnx

from cvrl import models
from cvrl.core import discovery, schema

PACKAGE = "cvrl.objectives"

Metrics = dict[str, jax.Array]
# The constructor's arguments the job gives; every other keyword argument is a field.
RUNTIME = ("self", "encoder", "run", "name")


@dataclasses.dataclass(frozen=True)
class EncoderSpec:
  """The encoder a method builds, as one value: config.model's fields (what
  `models.build_encoder` reads and a checkpoint records as the encoder's config)."""
  fields: dict

  @classmethod
  def of(cls, model) -> EncoderSpec:
    """The spec of a model section (a ConfigDict or dict)."""
    return cls(dict(model.to_dict() if hasattr(model, "to_dict") else model))

  def config(self) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(self.fields)

  def with_input(self, mode: str) -> EncoderSpec:
    return EncoderSpec({**self.fields, "input": mode})

  @property
  def bn(self) -> dict:
    """The encoder's BatchNorm settings, for a method's heads to share."""
    return dict(bn_momentum=self.fields["bn_momentum"], bn_eps=self.fields["bn_eps"])

  @property
  def extra_frames(self) -> int:
    return models.extra_frames(self.config())

  def build(self, rngs: nnx.Rngs):
    return models.build_encoder(self.config(), rngs)


@dataclasses.dataclass(frozen=True)
class Run:
  """What a method knows of the run it trains in: the global batch (videos), the steps,
  and the train split's size, for durations given in epochs (None: unknown)."""
  batch_size: int
  total_steps: int | None = None
  num_train_examples: int | None = None


def names() -> list[str]:
  """Every method: the modules of cvrl/objectives/ that define `make`."""
  return discovery.names(PACKAGE)


def get(spec, encoder: EncoderSpec, run: Run, *, stored: bool = False) -> "Objective":
  """The method `spec` (config.objective) names, made from its fields (unknown keys are
  errors, unless `stored`: a checkpoint's config, whose fields the method no longer takes
  are dropped), the encoder spec and the run."""
  name = spec.get("name")
  cls = discovery.find(PACKAGE, name, "config.objective.name")
  if stored:
    taken = schema.defaults(cls, RUNTIME)
    spec = {k: v for k, v in spec.items() if k in taken or k == "name"}
  objective = cls(encoder, run, name=name,
                  **schema.fields(cls, RUNTIME, spec, "config.objective", "name"))
  if objective.encoder_spec.extra_frames and not objective.sampler().get("extra_frames"):
    raise ValueError(f"config.model.input='dif' needs clips of T + 1 frames, which objective "
                     f"{name!r} does not sample (3DRotNet's objective.input='dif' does)")
  return objective


def method(*, spec, model, batch_size: int, total_steps: int | None,
           num_train_examples: int | None, stored: bool = False) -> "Objective":
  """The method `spec` (config.objective) names on an encoder of `model` (config.model),
  in a run of global batch `batch_size`, `total_steps` and `num_train_examples` (None:
  unknown): a pretraining config's (a job's, or one a checkpoint `stored`) as
  `cvrl.config_lib.method_args` picks them."""
  run = Run(int(batch_size), total_steps, num_train_examples)
  return get(spec, EncoderSpec.of(model), run, stored=stored)


def defaults(cls: type["Objective"], name: str) -> dict:
  """config.objective of method `cls` at its defaults: its name and its fields (a field
  that may be None keeps its type: a FieldReference)."""
  fields = schema.defaults(cls, RUNTIME)
  return {"name": name, **dict(fields.items(preserve_field_references=True))}


class Objective(abc.ABC):
  """A pretext task: the clips it needs, the modules it owns, its loss.

  `build` returns one NNX module holding `.encoder` (an R3D) and whatever heads, target
  networks or buffers the method needs. The trainer optimises the variables selected by
  `trainable` (nnx.Param by default: exclude e.g. momentum targets), carries every other
  variable through the step as state, and calls `loss` under jit in train mode.

  Its constructor is its config schema: `make(encoder, run, name=..., **fields)`, the
  fields keyword arguments with their defaults and checks in the method's own module.
  """
  def __init__(self, encoder: EncoderSpec, run: Run, *, name: str = ""):
    self.encoder_spec, self.run, self.name = encoder, run, name

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
    return self.encoder_spec.config()

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
