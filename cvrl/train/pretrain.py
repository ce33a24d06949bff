"""The pretraining job: any objective, data parallel over every device, resumable.

One jit-compiled step (state donated) over a Mesh of all devices: the host-local batches
form one global batch, BatchNorm statistics and the loss span it (synchronised BN, or
per-device BN with `parallel.batch_norm='local'`). Checkpoints every
`checkpoint.every_steps` and at the end (async, keep `checkpoint.keep`); a restart resumes
from the latest one with the data stream at the same step, so it ends with the same
parameters as a run that never stopped. SIGTERM saves and returns cleanly. A NaN/inf loss
stops the run with an error and leaves the last good checkpoint in place. Process 0 writes
DIR/metrics.jsonl, TensorBoard events and a progress log line.
"""
from __future__ import annotations

import importlib.util
import math
import os
import signal
import threading
import time
from typing import Any

import jax
import ml_collections
import numpy as np
import optax
from absl import logging
from flax import nnx
from jax.experimental import multihost_utils

from cvrl import config_lib, objectives, parallel
from cvrl.data import device as device_aug
from cvrl.train import checkpoint as checkpoint_lib
from cvrl.train import input as input_lib
from cvrl.train import local_bn, optim
from cvrl.train import metrics as metrics_lib
from cvrl.train import state as state_lib

NEEDS_WORKDIR = True


class NonFiniteLossError(FloatingPointError):
  """The loss (or gradient norm) became NaN or inf; the run stops without saving it."""


# ------------------------------------------------------------------------------- config

def durations(config) -> tuple[int, int]:
  """(total steps, warm-up steps) from `{total,warmup}_{steps,epochs}`."""
  kw = dict(num_examples=config.data.get("num_train_examples"), batch_size=config.batch_size)
  return (config_lib.steps("total", config, **kw),
          config_lib.steps("warmup", config, default=0, **kw))


def validate(config) -> None:
  """Everything that can be checked without touching a device (the backend must stay
  uninitialised until jax.distributed has started)."""
  objectives.get(config)
  optim.validate(config.optim)
  if config.parallel.batch_norm not in local_bn.BATCH_NORM_MODES:
    raise ValueError(f"config.parallel.batch_norm must be one of "
                     f"{list(local_bn.BATCH_NORM_MODES)}, got {config.parallel.batch_norm!r}")
  if int(config.batch_size) <= 0:
    raise ValueError(f"config.batch_size must be > 0, got {config.batch_size}")
  total, warmup = durations(config)
  if total <= 0 or warmup < 0:
    raise ValueError(f"need total steps > 0 and warm-up >= 0, got {total} and {warmup}")
  for section, key in (("checkpoint", "every_steps"), ("checkpoint", "keep"),
                       ("log", "every_steps")):
    if int(config[section][key]) < 1:
      raise ValueError(f"config.{section}.{key} must be >= 1, got {config[section][key]}")


# ---------------------------------------------------------------------------- the step

def make_train_step(objective, graphdef, tx, schedule, mesh, seed: int, data_config=None):
  """jit(state, batch) -> (state, metrics), the state donated; batch sharded over 'data'."""
  trainable = objective.trainable
  base_key = jax.random.key(int(seed))

  def step_fn(state: state_lib.TrainState, batch):
    rng = jax.random.fold_in(base_key, state.step)
    # The host ships uint8 clips and per-clip photometric parameters: finish them here.
    batch = device_aug.finish_batch(batch, data_config)

    def loss_fn(params):
      model = state_lib.merge(graphdef, params, state.rest)
      loss, metrics = objective.loss(model, batch, step=state.step, rng=rng)
      _, _, rest = state_lib.split(model, trainable)
      return loss, (metrics, rest)

    (loss, (metrics, rest)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    model = state_lib.merge(graphdef, params, rest)
    objective.after_update(model, step=state.step)
    _, params, rest = state_lib.split(model, trainable)
    metrics = dict(metrics, loss=loss, learning_rate=schedule(state.step),
                   grad_norm=optax.tree.norm(grads))
    new_state = state_lib.TrainState(step=state.step + 1, params=params, rest=rest,
                                     opt_state=opt_state)
    return new_state, metrics

  replicated = parallel.replicated(mesh)
  return jax.jit(step_fn, in_shardings=(replicated, parallel.batch_sharding(mesh)),
                 out_shardings=(replicated, replicated), donate_argnums=(0,))


# ------------------------------------------------------------------------- preemption

class _Preemption:
  """SIGTERM -> save and stop, with every process stopping after the same step.

  One process: a Python SIGTERM handler sets a flag. Several processes: JAX's preemption
  service (started by jax.distributed) catches the signal on whichever host gets it, and
  `reached_preemption_sync_point` agrees on a common step without any device work; if the
  service is off, the flag is all-gathered every step instead.
  """

  def __init__(self):
    self.requested = False
    self._previous = None
    self._jax_service = (jax.process_count() > 1 and _preemption_service_running())
    if not self._jax_service and threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):  # pylint: disable=unused-argument
    logging.warning("SIGTERM: saving a checkpoint and stopping")
    self.requested = True

  def should_stop(self, step: int) -> bool:
    if jax.process_count() == 1:
      return self.requested
    if self._jax_service:
      if multihost_utils.reached_preemption_sync_point(step):
        logging.warning("preemption notice: saving a checkpoint at step %d and stopping", step)
        return True
      return False
    flags = multihost_utils.process_allgather(np.int32(self.requested))
    return bool(np.max(flags))

  def restore(self):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


def _preemption_service_running() -> bool:
  try:
    from jax._src import distributed  # pylint: disable=import-outside-toplevel
    return distributed.global_state.preemption_sync_manager is not None
  except (ImportError, AttributeError):
    return False


# ------------------------------------------------------------------------------- run

def enable_compilation_cache(directory: str) -> None:
  """JAX's persistent compilation cache for this process: a restarted (preempted) run or
  a repeated job loads its compiled programs instead of compiling them again."""
  jax.config.update("jax_compilation_cache_dir", os.path.abspath(directory))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)


class _Interval:
  """Sums per-step metrics between log lines; wall time and data wait since the last."""

  def __init__(self):
    self.reset()

  def reset(self):
    self.sums: dict[str, float] = {}
    self.last: dict[str, float] = {}
    self.steps = 0
    self.wait = 0.0
    self.start = time.perf_counter()

  def add(self, scalars: dict[str, float]):
    for k, v in scalars.items():
      self.sums[k] = self.sums.get(k, 0.0) + v
    self.last = scalars
    self.steps += 1


def _to_floats(metrics) -> dict[str, float]:
  return {k: float(v) for k, v in jax.device_get(metrics).items()}


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  validate(config)
  p = config.parallel
  if p.get("compilation_cache_dir"):
    enable_compilation_cache(p.compilation_cache_dir)
  parallel.maybe_initialize_distributed(p.get("coordinator_address"), p.get("num_processes"),
                                        p.get("process_id"))
  mesh = parallel.make_mesh()
  process_index, process_count = jax.process_index(), jax.process_count()
  batch_size = int(config.batch_size)
  local_batch = parallel.local_batch_size(batch_size, mesh)
  total_steps, warmup_steps = durations(config)
  objective = objectives.get(config)
  schedule = optim.warmup_cosine(optim.peak_learning_rate(config.optim, batch_size),
                                 warmup_steps, total_steps, config.optim.get("schedule", "cosine"))
  tx = optim.build(config.optim, schedule)
  groups = parallel.num_data_shards(mesh) if p.batch_norm == "local" else 1

  def make_model():
    model = objective.build(nnx.Rngs(int(config.seed)))
    return local_bn.use_local_batch_norm(model, groups) if groups > 1 else model

  ckpt = checkpoint_lib.Checkpointer(workdir, keep=int(config.checkpoint.keep),
                                     async_save=bool(config.checkpoint.async_save))
  graphdef, target = state_lib.abstract(make_model, objective.trainable, tx, mesh)
  if ckpt.latest_step() is not None:
    state = ckpt.restore(target, graphdef, objective.trainable)
    logging.info("resumed from %s at step %d", ckpt.directory, int(state.step))
  else:
    _, state = state_lib.create(make_model, objective.trainable, tx, mesh)
  start_step = int(jax.device_get(state.step))
  train_step = make_train_step(objective, graphdef, tx, schedule, mesh, int(config.seed),
                               config.data)

  writer = metrics_lib.MetricWriter(workdir, enabled=process_index == 0,
                                    tensorboard=bool(config.log.tensorboard))
  if process_index == 0:
    logging.info("pretraining %s: %d steps, global batch %d on %d devices (%d processes), "
                 "warm-up %d, peak lr %.4g", objective.name, total_steps, batch_size,
                 jax.device_count(), process_count, warmup_steps,
                 optim.peak_learning_rate(config.optim, batch_size))
  host_iter, pipeline_stats = input_lib.host_batches(
      config, objective.sampler(), batch_size=local_batch, start_step=start_step,
      process_index=process_index, process_count=process_count)
  # Every array the pipeline yields goes to the step (video, label, index, and with
  # data.photometric='device' the per-clip photometric parameters finish_batch applies).
  prefetch = input_lib.DevicePrefetcher(host_iter, mesh, size=int(p.device_prefetch))
  preemption = _Preemption()
  interval = _Interval()
  last_logged: dict[str, float] = {}
  pending = None  # (step, device metrics) of the last dispatched step, checked one step late
  clips_per_step = None
  saved_step = None
  step = start_step
  preempted = False

  def check(step_and_metrics):
    done_step, device_metrics = step_and_metrics
    scalars = _to_floats(device_metrics)
    for key in ("loss", "grad_norm"):
      if not math.isfinite(scalars[key]):
        raise NonFiniteLossError(
            f"{key} is {scalars[key]} at step {done_step}: stopping. The last good checkpoint "
            f"(step {ckpt.latest_step()}) is kept in {ckpt.directory}; lower the learning "
            "rate or check the data.")
    if interval.steps == 0 and done_step == start_step + 1:
      interval.reset()  # the first step includes compilation: time from its end
      interval.last = scalars
      return
    interval.add(scalars)

  def save():
    nonlocal saved_step
    if saved_step != step:
      ckpt.save(state, config)
      saved_step = step

  try:
    with jax.set_mesh(mesh):
      while step < total_steps:
        batch, waited = prefetch.next()
        interval.wait += waited
        if clips_per_step is None:
          clips_per_step = int(np.prod(batch["video"].shape[:2]))
        state, device_metrics = train_step(state, batch)
        step += 1
        if pending is not None:
          check(pending)
        pending = (step, device_metrics)
        log_now = step % int(config.log.every_steps) == 0 or step == total_steps
        save_now = step % int(config.checkpoint.every_steps) == 0 or step == total_steps
        preempted = preemption.should_stop(step)
        if log_now or save_now or preempted:
          check(pending)
          pending = None
        if log_now and interval.steps:
          elapsed = time.perf_counter() - interval.start
          scalars = {k: v / interval.steps for k, v in interval.sums.items()}
          scalars["learning_rate"] = interval.last["learning_rate"]
          scalars["clips_per_sec"] = interval.steps * clips_per_step / max(elapsed, 1e-9)
          scalars["data_wait_fraction"] = min(1.0, interval.wait / max(elapsed, 1e-9))
          scalars.update({f"data_{k}": v for k, v in pipeline_stats.as_dict().items()})
          writer.write(step, scalars)
          writer.log_progress(step, total_steps, scalars,
                              (total_steps - step) * elapsed / interval.steps)
          last_logged = scalars
          interval.reset()
        if save_now or preempted:
          save()
        if preempted:
          break
  finally:
    prefetch.close()
    preemption.restore()
    writer.close()
    ckpt.close()  # waits for the async saves already started (never the bad state)

  final_loss = last_logged.get("loss", interval.last.get("loss"))
  result = {"job": "pretrain", "step": step, "total_steps": total_steps, "preempted": preempted,
            "loss": final_loss, "checkpoint_dir": ckpt.directory, "metrics": last_logged,
            "state": state}
  if preempted:
    logging.info("preempted at step %d: checkpoint saved in %s", step, ckpt.directory)
    return result
  if process_index == 0:
    logging.info("pretraining done at step %d; checkpoints in %s", step, ckpt.directory)
  result["probe"] = maybe_run_probe(config, workdir, ckpt.directory)
  return result


def maybe_run_probe(config, workdir: str, checkpoint_dir: str):
  """The linear probe on the final checkpoint when `config.probe` is set and the probe job
  exists in this version of cvrl (the demo chain)."""
  if not config.get("probe"):
    return None
  if importlib.util.find_spec("cvrl.train.probe") is None:
    logging.info("config.probe is set but cvrl.train.probe is not available: no probe")
    return None
  from cvrl.train import probe  # pylint: disable=import-outside-toplevel
  return probe.run_after_pretrain(config, workdir, checkpoint_dir)
