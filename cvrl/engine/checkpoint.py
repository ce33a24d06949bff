"""Pretraining checkpoints (orbax) and `load_pretrained` for the jobs that read them.

Layout: `WORKDIR/checkpoints/<step>/` with three items
  model   every variable of the objective's NNX model (`nnx.State`: encoder, heads,
          BatchNorm statistics, targets/queues), as saved by StandardSave;
  train   {'step': int32, 'opt_state': the optax state} (resuming only);
  config  the full run config as JSON, so later jobs rebuild the model without being
          told its shape.
Every process takes part in saving (each writes the shards it owns); saves are
asynchronous, the manager keeps the newest `keep`.
"""
from __future__ import annotations

import json
import os
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp
from flax import nnx

from cvrl.core import parallel
from cvrl.engine import state as state_lib

CHECKPOINT_DIR = "checkpoints"
ITEMS = ("model", "train", "config")
_READ_ONLY = ocp.CheckpointManagerOptions(read_only=True, create=False, save_interval_steps=0)


def config_to_json(config: ml_collections.ConfigDict) -> dict:
  return json.loads(config.to_json_best_effort())


def config_from_json(data: dict) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(data)


def configure_array_saving() -> None:
  """With one process, save each array from one replica instead of splitting it.

  Orbax's replica-parallel saving splits a replicated array across its replicas so that
  several hosts share the writing; it slices every array on every device, a small
  compiled program per shape and device. With one process there is no one to share
  with, and those compiles cost seconds per save (a tiny model on 8 CPU devices: 4 s
  against 0.3 s). Multi-host runs keep orbax's default.
  """
  if jax.process_count() > 1:
    return
  current = ocp.type_handlers.get_type_handler(jax.Array)
  if getattr(current, "_cvrl_single_process", False):
    return
  handler = ocp.type_handlers.ArrayHandler(
      use_replica_parallel=False,
      array_metadata_store=getattr(current, "_array_metadata_store", None))
  handler._cvrl_single_process = True  # pylint: disable=protected-access
  ocp.type_handlers.register_type_handler(jax.Array, handler, override=True)


class Checkpointer:
  """Saves and restores `TrainState`s of one run under `workdir/checkpoints`."""

  def __init__(self, workdir: str, *, keep: int | None = 3, async_save: bool = True):
    configure_array_saving()
    self.directory = os.path.join(os.path.abspath(workdir), CHECKPOINT_DIR)
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                           enable_async_checkpointing=async_save)
    self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=ITEMS)

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self.manager.all_steps())

  def save(self, state: state_lib.TrainState, config: ml_collections.ConfigDict) -> bool:
    """Starts an (asynchronous) save of `state` at its step; returns whether it saved."""
    step = int(jax.device_get(state.step))
    if step in self.manager.all_steps():
      return False
    return self.manager.save(step, args=ocp.args.Composite(
        model=ocp.args.StandardSave(state_lib.full_state(state)),
        train=ocp.args.StandardSave({"step": state.step, "opt_state": state.opt_state}),
        config=ocp.args.JsonSave(config_to_json(config))), force=True)

  def restore(self, target: state_lib.TrainState, graphdef: nnx.GraphDef, trainable,
              step: int | None = None) -> state_lib.TrainState:
    """The state saved at `step` (default: the latest), placed like `target` (abstract)."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {self.directory}")
    out = self.manager.restore(step, args=ocp.args.Composite(
        model=ocp.args.StandardRestore(state_lib.full_state(target)),
        train=ocp.args.StandardRestore({"step": target.step, "opt_state": target.opt_state})))
    _, params, rest = state_lib.split(nnx.merge(graphdef, out.model), trainable)
    return state_lib.TrainState(step=out.train["step"], params=params, rest=rest,
                                opt_state=out.train["opt_state"])

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def _resolve(path: str, step: int | None) -> tuple[str, int]:
  """(manager directory, step) from a workdir, a checkpoints dir or one step's dir."""
  path = os.path.abspath(path)
  if os.path.isdir(os.path.join(path, CHECKPOINT_DIR)):
    path = os.path.join(path, CHECKPOINT_DIR)
  elif os.path.isdir(os.path.join(path, "model")) and os.path.basename(path).isdigit():
    if step is not None and step != int(os.path.basename(path)):
      raise ValueError(f"{path} is the checkpoint of step {os.path.basename(path)}, not {step}")
    return os.path.dirname(path), int(os.path.basename(path))
  if not os.path.isdir(path):
    raise FileNotFoundError(f"no pretraining checkpoint at {path}")
  steps = sorted(int(d) for d in os.listdir(path)
                 if d.isdigit() and os.path.isdir(os.path.join(path, d, "model")))
  if not steps:
    raise FileNotFoundError(f"no pretraining checkpoint in {path}")
  if step is None:
    return path, steps[-1]
  if step not in steps:
    raise FileNotFoundError(f"no checkpoint of step {step} in {path}; steps: {steps}")
  return path, step


def find(path: str, step: int | None = None) -> tuple[str, int]:
  """(checkpoint manager directory, step) of `path`: a pretraining workdir, its
  `checkpoints/` dir or one step's dir; `step` None: the latest. FileNotFoundError or
  ValueError naming what is missing (nothing is read but directory listings)."""
  return _resolve(path, step)


def load_config(path: str, step: int | None = None) -> ml_collections.ConfigDict:
  """The config a pretraining checkpoint was made with."""
  directory, step = _resolve(path, step)
  with ocp.CheckpointManager(directory, item_names=ITEMS,
                             options=_READ_ONLY) as manager:
    data = manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
  return config_from_json(data.config)


def load_pretrained(path: str, step: int | None = None, *, sharding: Any = None
                    ) -> tuple[ml_collections.ConfigDict, nnx.Module]:
  """(config, model) of a pretraining run: the objective's whole NNX model, restored.

  path: the pretraining workdir, its `checkpoints/` dir, or one step's dir.
  step: which checkpoint (default: the latest).
  sharding: where the arrays go (default: replicated over all devices).
  `model.encoder` is the R3D backbone; heads and BatchNorm statistics come with it. The
  model is in train mode as built; call `model.eval()` for inference.
  """
  # pylint: disable=import-outside-toplevel
  from cvrl import objectives
  directory, step = _resolve(path, step)
  config = load_config(directory, step)
  objective = objectives.get(config)
  abstract_model = nnx.eval_shape(lambda: objective.build(nnx.Rngs(0)))
  graphdef, abstract_state = nnx.split(abstract_model)
  if sharding is None:
    sharding = parallel.replicated(parallel.make_mesh())
  target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
                        abstract_state)
  with ocp.CheckpointManager(directory, item_names=ITEMS,
                             options=_READ_ONLY) as manager:
    restored = manager.restore(step, args=ocp.args.Composite(
        model=ocp.args.StandardRestore(target)))
  return config, nnx.merge(graphdef, restored.model)
