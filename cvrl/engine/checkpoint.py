"""Pretraining checkpoints (orbax) and `load_pretrained` for the jobs that read them.

Layout: `WORKDIR/checkpoints/<step>/` with three items
  model   every variable of the objective's NNX model (`nnx.State`: encoder, heads,
          BatchNorm statistics, targets/queues), a PyTree (orbax's PyTree handler, `handlers`);
  train   {'step': int32, 'opt_state': the optax state} (resuming only);
  config  the full run config as JSON, so later jobs rebuild the model without being
          told its shape (read back with the fields it lacks at their defaults:
          `config_lib.filled`).
Every process takes part in saving (each writes the shards it owns); saves are
asynchronous, the manager keeps the newest `keep`. Paths go through `cvrl.core.paths`
(local or `gs://`).

A checkpoint that does not restore (array files truncated or missing, a copy cut short)
never ends a run: resuming takes the newest one that restores (by step number), says
which it skipped and why in one `warning:` line, and moves the bad one aside to
`checkpoints/<step>.corrupt` so the run's own later save of that step is not blocked;
`pretrained=` loading skips it the same way (and moves nothing: the run is someone
else's). None restores: ConfigError (one line, exit 2).
"""
from __future__ import annotations

import functools
import logging
import os
import sys
from typing import Any, Callable

import jax
import ml_collections
import orbax.checkpoint as ocp
from flax import nnx
from jax.experimental import multihost_utils

from cvrl import config_lib
from cvrl import objectives
from cvrl.core import parallel
from cvrl.core import paths
from cvrl.core.errors import ConfigError
from cvrl.engine import metrics as metrics_lib
from cvrl.engine import state as state_lib

CHECKPOINT_DIR = "checkpoints"
CORRUPT_SUFFIX = ".corrupt"
ITEMS = ("model", "train", "config")
_READ_ONLY = ocp.CheckpointManagerOptions(read_only=True, create=False, save_interval_steps=0)


class OneReplicaArrays:
  """Orbax's type handlers (its registry, read, never changed) but jax.Array's: each array
  saved from one replica instead of split over them. A TypeHandlerRegistry for the state's
  PyTree handlers (`handlers`), so no global orbax setting changes.

  Orbax's replica-parallel saving splits a replicated array across its replicas so that
  several hosts share the writing; it slices every array on every device, a small
  compiled program per shape and device. With one process there is no one to share
  with, and those compiles cost seconds per save (a tiny model on 8 CPU devices: 4 s
  against 0.3 s). Multi-host runs keep orbax's default.
  """

  def __init__(self):
    default = ocp.type_handlers.get_type_handler(jax.Array)
    self.array = ocp.type_handlers.ArrayHandler(
        use_replica_parallel=False,
        array_metadata_store=getattr(default, "_array_metadata_store", None))

  def get(self, ty):
    """The handler of a type (or a saved typestr): orbax's, this one for jax.Array."""
    handler = ocp.type_handlers.get_type_handler(ty)
    return self.array if handler.typestr() == self.array.typestr() else handler

  def has(self, ty) -> bool:
    return ocp.type_handlers.has_type_handler(ty)

  def add(self, *args, **kwargs):
    raise TypeError("OneReplicaArrays is read only: register with orbax's own registry")


def handlers() -> ocp.handlers.DefaultCheckpointHandlerRegistry:
  """The items' handlers: the state's as PyTrees (with one process on `OneReplicaArrays`),
  the config's as JSON."""
  types = {} if jax.process_count() > 1 else {"type_handler_registry": OneReplicaArrays()}
  registry = ocp.handlers.DefaultCheckpointHandlerRegistry()
  for item in ("model", "train"):
    handler = ocp.PyTreeCheckpointHandler(**types)
    registry.add(item, ocp.args.PyTreeSave, handler)
    registry.add(item, ocp.args.PyTreeRestore, handler)
  json_handler = ocp.JsonCheckpointHandler()
  registry.add("config", ocp.args.JsonSave, json_handler)
  registry.add("config", ocp.args.JsonRestore, json_handler)
  return registry


def _restore_args(target) -> ocp.args.PyTreeRestore:
  """Restores into `target`'s shapes, dtypes and shardings (ShapeDtypeStructs)."""
  return ocp.args.PyTreeRestore(target, ocp.checkpoint_utils.construct_restore_args(target))


class Checkpointer:
  """Saves and restores `TrainState`s of one run under `workdir/checkpoints`."""

  def __init__(self, workdir: str, *, keep: int | None = 3, async_save: bool = True):
    self.directory = os.fspath(paths.as_path(workdir) / CHECKPOINT_DIR)
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                           enable_async_checkpointing=async_save)
    self.manager = ocp.CheckpointManager(self.directory, options=options,
                                         handler_registry=handlers())

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self.manager.all_steps())

  def save(self, state: state_lib.TrainState, record: dict) -> bool:
    """Starts an (asynchronous) save of `state` at its step with `record` (the config as
    JSON values, config_lib.as_dict); returns whether it saved."""
    step = int(jax.device_get(state.step))
    if step in self.manager.all_steps():
      return False
    return self.manager.save(step, args=ocp.args.Composite(
        model=ocp.args.PyTreeSave(state_lib.full_state(state)),
        train=ocp.args.PyTreeSave({"step": state.step, "opt_state": state.opt_state}),
        config=ocp.args.JsonSave(record)), force=True)

  def restore(self, target: state_lib.TrainState, graphdef: nnx.GraphDef, trainable,
              step: int | None = None) -> state_lib.TrainState:
    """The state saved at `step` (default: the newest that restores, the ones after it
    moved aside with a warning), placed like `target` (abstract)."""
    load = functools.partial(self._restore_step, target, graphdef, trainable)
    if step is not None:
      return load(step)
    step, state, failed = newest_that_loads(self.directory, self.all_steps(), load)
    self._set_aside(failed, step)
    return state

  def _restore_step(self, target, graphdef, trainable, step: int) -> state_lib.TrainState:
    out = self.manager.restore(step, args=ocp.args.Composite(
        model=_restore_args(state_lib.full_state(target)),
        train=_restore_args({"step": target.step, "opt_state": target.opt_state})))
    _, params, rest = state_lib.split(nnx.merge(graphdef, out.model), trainable)
    return state_lib.TrainState(step=out.train["step"], params=params, rest=rest,
                                opt_state=out.train["opt_state"])

  def _set_aside(self, failed: dict[int, str], step: int) -> None:
    """Process 0 moves each skipped step's folder to `<step>.corrupt` (one warning line
    each); then every process sees the same steps, so a later save of such a step is
    not taken for done."""
    if not failed:
      return
    if jax.process_index() == 0:
      for bad, why in failed.items():
        moved = set_aside(paths.join(self.directory, str(bad)))
        metrics_lib.say(f"warning: checkpoint {bad} in {self.directory} does not restore "
                        f"({why}); resuming from step {step}, step {bad} moved to {moved}")
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices("cvrl_checkpoints_set_aside")
    self.manager.reload()

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def newest_that_loads(directory: str, steps, load: Callable[[int], Any]
                      ) -> tuple[int, Any, dict[int, str]]:
  """(step, load(step), {newer step skipped: why}) for the numerically newest of `steps`
  that loads (9 before 10); ConfigError if none loads."""
  failed = {}  # step -> why, newest first
  _drop_closed_loop_errors()  # before the first read: a failing one's reads end at any time
  for step in sorted((int(s) for s in steps), reverse=True):
    try:
      value = load(step)
    except Exception as e:  # pylint: disable=broad-except  (any failure: try the one before)
      failed[step] = paths.first_line(e)
      continue
    return step, value, failed
  if not failed:
    raise ConfigError(f"no checkpoint in {directory}")
  reasons = "; ".join(f"step {s}: {why}" for s, why in failed.items())
  raise ConfigError(f"no checkpoint in {directory} restores ({reasons}); restore the "
                    "folder from a copy, or give another workdir to start afresh")


def _closed_loop(unraisable) -> bool:
  return (isinstance(unraisable.exc_value, RuntimeError)
          and str(unraisable.exc_value) == "Event loop is closed")


class _FailedReadFilter(logging.Filter):
  """Drops asyncio's 'Task exception was never retrieved' records of orbax's reads."""

  def filter(self, record: logging.LogRecord) -> bool:
    msg = str(record.msg)
    return not (msg.startswith("Task exception was never retrieved")
                and "async_deserialize" in msg)


def _drop_closed_loop_errors() -> None:
  """A restore that failed leaves reads in flight: their callbacks reach orbax's closed
  event loop, each printing a traceback ('Event loop is closed') as an unraisable
  exception, and their failed tasks are logged by asyncio ('Task exception was never
  retrieved', one traceback per array). Those two are dropped from before the first
  restore on (every other unraisable exception and asyncio record is printed as before),
  so the skip stays one warning line: the reads end on tensorstore's threads, some before
  the failure reaches the caller, so a filter set after the failure misses them."""
  previous = sys.unraisablehook
  if getattr(previous, "cvrl_drops_closed_loop", False):
    return

  def hook(unraisable):
    if not _closed_loop(unraisable):
      previous(unraisable)
  hook.cvrl_drops_closed_loop = True
  sys.unraisablehook = hook
  logging.getLogger("asyncio").addFilter(_FailedReadFilter())


def _newest_pretrained(directory: str, steps, load) -> tuple[int, Any]:
  """`newest_that_loads` for another run's checkpoints: a warning line for each skipped
  (nothing moved: that run is not this one's to change)."""
  step, value, failed = newest_that_loads(directory, steps, load)
  for bad, why in failed.items():
    metrics_lib.say(f"warning: checkpoint {bad} in {directory} does not restore ({why}); "
                    f"using step {step}")
  return step, value


def set_aside(step_dir) -> str:
  """Renames a checkpoint's folder `<step>.corrupt` (`.corrupt.N` if taken); the new path."""
  step_dir = paths.as_path(step_dir)
  target, n = step_dir.parent / f"{step_dir.name}{CORRUPT_SUFFIX}", 1
  while target.exists():
    target, n = step_dir.parent / f"{step_dir.name}{CORRUPT_SUFFIX}.{n}", n + 1
  paths.move_tree(step_dir, target)
  return os.fspath(target)


def _steps(directory) -> list[int]:
  """The steps with a `model` item under a checkpoint manager's directory, ascending."""
  return sorted(int(d.name) for d in paths.as_path(directory).iterdir()
                if d.name.isdigit() and (d / "model").is_dir())


def _resolve(path: str, step: int | None) -> tuple[str, list[int]]:
  """(manager directory, its candidate steps: [step], or every step ascending) from a
  workdir, a checkpoints dir or one step's dir."""
  path = paths.check_readable(path)
  if (path / CHECKPOINT_DIR).is_dir():
    path = path / CHECKPOINT_DIR
  elif (path / "model").is_dir() and path.name.isdigit():
    if step is not None and step != int(path.name):
      raise ValueError(f"{path} is the checkpoint of step {path.name}, not {step}")
    return os.fspath(path.parent), [int(path.name)]
  if not path.is_dir():
    raise FileNotFoundError(f"no pretraining checkpoint at {path}")
  steps = _steps(path)
  if not steps:
    raise FileNotFoundError(f"no pretraining checkpoint in {path}")
  if step is None:
    return os.fspath(path), steps
  if step not in steps:
    raise FileNotFoundError(f"no checkpoint of step {step} in {path}; steps: {steps}")
  return os.fspath(path), [step]


def find(path: str, step: int | None = None) -> tuple[str, int]:
  """(checkpoint manager directory, step) of `path`: a pretraining workdir, its
  `checkpoints/` dir or one step's dir; `step` None: the newest. FileNotFoundError or
  ValueError naming what is missing (nothing is read but directory listings)."""
  directory, steps = _resolve(path, step)
  return directory, steps[-1]


def _read_config(directory: str, step: int) -> ml_collections.ConfigDict:
  with ocp.CheckpointManager(directory, item_names=ITEMS, options=_READ_ONLY) as manager:
    data = manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
  return config_lib.filled(data.config)  # a config from before a field: its default


def load_config(path: str, step: int | None = None) -> ml_collections.ConfigDict:
  """The config a pretraining checkpoint was made with (the newest that reads)."""
  directory, steps = _resolve(path, step)
  return _newest_pretrained(directory, steps, lambda s: _read_config(directory, s))[1]


def _read_model(directory: str, step: int, sharding: Any
                ) -> tuple[ml_collections.ConfigDict, nnx.Module]:
  config = _read_config(directory, step)
  objective = objectives.method(**config_lib.method_args(config), stored=True)
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


def restore_pretrained(path: str, step: int | None = None, *, sharding: Any = None
                       ) -> tuple[int, ml_collections.ConfigDict, nnx.Module]:
  """(step, config, model) of a pretraining run: `load_pretrained` with the step it took
  (`step` None: the newest that restores; the newer ones skipped with a warning)."""
  directory, steps = _resolve(path, step)
  step, (config, model) = _newest_pretrained(
      directory, steps, lambda s: _read_model(directory, s, sharding))
  return step, config, model


def load_pretrained(path: str, step: int | None = None, *, sharding: Any = None
                    ) -> tuple[ml_collections.ConfigDict, nnx.Module]:
  """(config, model) of a pretraining run: the objective's whole NNX model, restored.

  path: the pretraining workdir (local or gs://), its `checkpoints/` dir, or one step's dir.
  step: which checkpoint (default: the newest that restores).
  sharding: where the arrays go (default: replicated over all devices).
  `model.encoder` is the R3D backbone; heads and BatchNorm statistics come with it. The
  model is in train mode as built; call `model.eval()` for inference.
  """
  return restore_pretrained(path, step, sharding=sharding)[1:]
