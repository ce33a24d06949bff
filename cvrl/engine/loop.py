"""The training engine every job runs on: pretraining, the linear probe, fine-tuning.

A job hands the engine a `Task` (what differs: the model, which variables train, the
loss, the data, the optimizer's parameter groups); the engine owns everything else:
- a Mesh of all devices; the state created already sharded and donated to one jit step;
  the host-local batches form one global batch, so BatchNorm statistics and the loss span
  it (synchronised BN; per-device BN with `parallel.batch_norm='local'`);
- device prefetch, the log cadence (`log.every_steps`): DIR/metrics.jsonl, TensorBoard
  and one progress line with ETA;
- orbax checkpoints in `WORKDIR/checkpoints/<step>/` carrying the config, every
  `checkpoint.every_steps` and at the end; a restart resumes from the latest one with the
  data stream at the same step, so it ends with the parameters of a run that never stopped;
- SIGTERM: save and return cleanly; a NaN/inf loss stops the run with an error and keeps
  the last good checkpoint;
- evaluators (cvrl.eval.common) every `every_steps`, their rows under
  `eval/<name>/...`, their time reported apart from the training clips/s.
"""
from __future__ import annotations

import dataclasses
import math
import os
import signal
import threading
import time
from typing import Any, Iterator, Sequence

import jax
import ml_collections
import numpy as np
import optax
from absl import logging
from flax import nnx
from jax.experimental import multihost_utils

from cvrl.core import parallel
from cvrl.core import paths
from cvrl.core import runtime
from cvrl.data import device as device_aug
from cvrl.engine import checkpoint as checkpoint_lib
from cvrl.engine import input as input_lib
from cvrl.engine import local_bn
from cvrl.engine import metrics as metrics_lib
from cvrl.engine import state as state_lib
from cvrl.engine import step_inputs


class NonFiniteLossError(FloatingPointError):
  """The loss (or gradient norm) became NaN or inf; the run stops without saving it."""


# ------------------------------------------------------------------------------ the task

CLIPS = "video"  # the batch entry of clips, as cvrl.data.pipeline ships them


class Task:
  """What a job declares; the engine calls nothing else.

  make_model() builds the model (called under eval_shape and jit: no concrete arrays);
  initialize(model) may then overwrite variables in place once, on a fresh (not resumed)
  run, e.g. with a pretrained encoder; `trainable` selects what the optimizer updates;
  batches(...) -> (iterator of host batches from `start_step`, stats with as_dict());
  optimizer(total, warmup) -> (optax transform, schedule, peak lr(s)); encoder(model) is
  what evaluators look at. `rules` is what the train step calls, an Objective's protocol
  (cvrl.objectives.base): `trainable`, loss(model, batch, step=, rng=) -> (scalar,
  metrics) under jit in the model's mode, after_update and apply_update; by default the
  task's own methods, for pretraining the objective itself. `input_key`: the batch entry
  the loss reads; CLIPS ('video' [B, V, T, H, W, 3] as the pipeline ships them) are
  finished on device by the step (cvrl.data.device) and counted in the log's clips/s.
  """
  name = "task"
  trainable: Any = nnx.Param
  input_key = CLIPS

  @property
  def rules(self):
    return self

  def make_model(self) -> nnx.Module:
    raise NotImplementedError

  def initialize(self, model: nnx.Module) -> None:
    del model

  def loss(self, model, batch, *, step, rng):
    raise NotImplementedError

  def after_update(self, model, *, step) -> None:
    del model, step

  def apply_update(self, model, *, step):
    """None (always apply), or a traced bool: False keeps this step's state as it was."""
    del model, step
    return None

  def batches(self, *, batch_size: int, start_step: int, process_index: int,
              process_count: int) -> tuple[Iterator[dict], Any]:
    raise NotImplementedError

  def optimizer(self, total_steps: int, warmup_steps: int):
    raise NotImplementedError

  def encoder(self, model: nnx.Module) -> nnx.Module:
    return model.encoder


def skip(batches: Iterator[dict], start_step: int) -> Iterator[dict]:
  """A deterministic stream resumed at `start_step` by reading past the first batches
  (for in-memory or cached streams; the pipeline seeks instead)."""
  for _ in range(int(start_step)):
    next(batches)
  return batches


# ----------------------------------------------------------------- the run's fields

@dataclasses.dataclass(frozen=True)
class RunSpec:
  """What the loop takes of a training job's config (`config_lib.run_args`), checked when
  made: the seed, the global batch (videos), config.data (the step finishes clips with
  it), config.parallel, config.checkpoint (every_steps, keep, async_save), config.log
  (every_steps, tensorboard) and `record`: the whole config as JSON values, what every
  checkpoint stores and what a resume compares its data stream against."""
  seed: int
  batch_size: int
  data: Any
  parallel: Any
  checkpoint: Any
  log: Any
  record: dict

  def __post_init__(self):
    p = self.parallel
    if p.batch_norm not in local_bn.BATCH_NORM_MODES:
      raise ValueError(f"config.parallel.batch_norm must be one of "
                       f"{list(local_bn.BATCH_NORM_MODES)}, got {p.batch_norm!r}")
    parallel.check_param_sharding(p.param_sharding)
    if not float(p.fsdp_min_kib) >= 0:
      raise ValueError(f"config.parallel.fsdp_min_kib must be >= 0, got {p.fsdp_min_kib}")
    if int(self.batch_size) <= 0:
      raise ValueError(f"config.batch_size must be > 0, got {self.batch_size}")
    for section, key in (("checkpoint", "every_steps"), ("checkpoint", "keep"),
                         ("log", "every_steps")):
      if int(getattr(self, section)[key]) < 1:
        raise ValueError(f"config.{section}.{key} must be >= 1, got "
                         f"{getattr(self, section)[key]}")


# ---------------------------------------------------------------------------- the step

def make_train_step(task, graphdef, tx, schedule, batch_sharding, seed: int, data_config=None,
                    state_shardings=None):
  """jit(state, batch) -> (state, metrics), the state donated; batch placed by
  `batch_sharding` (cvrl.core.parallel.batch_sharding: over 'data' of its mesh).
  `task` needs `trainable`, `loss` and `after_update` (an Objective has them).
  `data_config`: config.data of a task on clips (`clip_data`: the step finishes their
  photometric stage on device); None: the batch reaches the loss as shipped.
  `state_shardings`: the state's NamedShardings (state.shardings of its abstract state;
  default replicated); the gradients are placed like the parameters (fsdp: reduce-scattered)."""
  trainable = task.trainable
  replicated = parallel.replicated(batch_sharding.mesh)
  state_shardings = replicated if state_shardings is None else state_shardings
  grad_shardings = replicated if state_shardings is replicated else state_shardings.params
  whole = lambda tree: jax.lax.with_sharding_constraint(tree, replicated)
  base_key = jax.random.key(int(seed))

  def step_fn(state: state_lib.TrainState, batch):
    rng = jax.random.fold_in(base_key, state.step)
    # The host ships uint8 clips and per-clip photometric parameters: finish them here.
    if data_config is not None:
      batch = device_aug.finish_batch(batch, data_config)

    def loss_fn(params):
      # fsdp: the model computes on whole (gathered) variables, as replicated does
      model = state_lib.merge(graphdef, whole(params), whole(state.rest))
      loss, metrics = task.loss(model, batch, step=state.step, rng=rng)
      _, _, rest = state_lib.split(model, trainable)
      return loss, (metrics, whole(rest))

    (loss, (metrics, rest)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    grads = jax.lax.with_sharding_constraint(whole(grads), grad_shardings)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    # A step the task skips leaves parameters and optimizer state as they were (no weight
    # decay, no momentum): e.g. MoCo while its queue fills.
    apply = task.apply_update(state_lib.merge(graphdef, state.params, state.rest), step=state.step)
    if apply is not None:
      params, opt_state = jax.tree.map(lambda new, old: jax.numpy.where(apply, new, old),
                                       (params, opt_state), (state.params, state.opt_state))
    model = state_lib.merge(graphdef, params, rest)
    task.after_update(model, step=state.step)
    _, params, rest = state_lib.split(model, trainable)
    metrics = dict(metrics, loss=loss, learning_rate=schedule(state.step),
                   grad_norm=optax.tree.norm(grads))
    new_state = state_lib.TrainState(step=state.step + 1, params=params, rest=rest,
                                     opt_state=opt_state)
    return new_state, metrics

  return jax.jit(step_fn, in_shardings=(state_shardings, batch_sharding),
                 out_shardings=(state_shardings, replicated), donate_argnums=(0,))


def clip_data(task: Task, data: ml_collections.ConfigDict) -> ml_collections.ConfigDict | None:
  """`data` (config.data) for a task on clips (what `make_train_step` finishes them with),
  else None."""
  return data if task.input_key == CLIPS else None


def abstract_step(task, spec: RunSpec, sampler, total_steps: int, warmup_steps: int) -> dict:
  """The step `run` compiles for `task` on the run's mesh, on abstract inputs (nothing
  allocated): {step (the jitted step), state and batch (ShapeDtypeStructs with their
  shardings: the spec's parallel.param_sharding, one global batch of its batch_size as
  the pipeline ships it for `sampler`), graphdef, tx}. `step.lower(state,
  batch).compile()` is what would run."""
  tx, schedule, _ = task.optimizer(total_steps, warmup_steps)
  graphdef, state = step_inputs.abstract_state(task, spec.parallel, tx)
  step = make_train_step(task.rules, graphdef, tx, schedule, parallel.batch_sharding(),
                         int(spec.seed), clip_data(task, spec.data), state_lib.shardings(state))
  batch = step_inputs.batch_spec(spec.data, sampler, int(spec.batch_size))
  return dict(step=step, state=state, batch=batch, graphdef=graphdef, tx=tx)


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
  """jax.distributed.initialize starts JAX's preemption service unless it is switched off."""
  return jax.distributed.is_initialized() and bool(jax.config.jax_enable_preemption_service)


# ------------------------------------------------------------------------------- run

def enable_compilation_cache(directory: str) -> None:
  """JAX's persistent compilation cache for this process: a restarted (preempted) run or
  a repeated job loads its compiled programs instead of compiling them again."""
  jax.config.update("jax_compilation_cache_dir", os.fspath(paths.as_path(directory)))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)


def setup(p) -> jax.sharding.Mesh:
  """Compilation cache, jax.distributed (multi-host) and the Mesh of every device, as `p`
  (config.parallel) sets them."""
  if p.compilation_cache_dir:
    enable_compilation_cache(p.compilation_cache_dir)
  parallel.maybe_initialize_distributed(p.coordinator_address, p.num_processes, p.process_id)
  return parallel.make_mesh()


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


def current_model(graphdef, state: state_lib.TrainState) -> nnx.Module:
  """The model of a train state (a copy: evaluating it never writes into the state)."""
  return state_lib.merge(graphdef, state.params, state.rest)


def run(task: Task, spec: RunSpec, workdir: str, *, total_steps: int,
        warmup_steps: int = 0, evaluators: Sequence[Any] = (), describe: str = "",
        process: runtime.Process | None = None) -> dict[str, Any]:
  """Trains `task` to `total_steps` (resuming from workdir's latest checkpoint) on the
  run's mesh (the job's `jax.set_mesh`; none set: `setup`'s, for this run).

  Returns {step, total_steps, preempted, resumed, loss, metrics (the last log line's),
  last_step_metrics, state, graphdef, model (the final model, None if preempted), evals
  ({name: last metrics}), checkpoint_dir}.
  `evaluators`: objects with `name`, `due(step, total)` and `__call__(encoder, step)`.
  `spec`: what the loop takes of the job's config (`RunSpec`, checked when made).
  `process`: the job's record (cvrl.core.runtime.job), told each step's progress so that a
  lost peer is reported with it; None: one of this run's own.
  """
  mesh = jax.sharding.get_mesh()
  with jax.set_mesh(setup(spec.parallel) if mesh.empty else mesh):  # for all of it
    with _Run(task, spec, workdir, int(total_steps), int(warmup_steps), evaluators,
              describe, process or runtime.Process()) as training:
      training.loop()
    return training.result()


class _Run:
  """One run of the loop, a context: the state (created or resumed), the step, the input,
  and the hooks `loop` calls between steps: check (one step late, so the host never waits
  on the device), log, save, evaluate; `close` on the way out, whatever happened."""

  def __init__(self, task: Task, spec: RunSpec, workdir: str, total_steps: int,
               warmup_steps: int, evaluators: Sequence[Any], describe: str,
               process: runtime.Process):
    self.task, self.spec, self.evaluators = task, spec, evaluators
    self.process = process
    self.total_steps = total_steps
    p = spec.parallel
    batch_size = int(spec.batch_size)
    tx, schedule, peak = task.optimizer(total_steps, warmup_steps)
    self.ckpt = checkpoint_lib.Checkpointer(
        workdir, keep=int(spec.checkpoint.keep),
        async_save=bool(spec.checkpoint.async_save))
    self.graphdef, target = step_inputs.abstract_state(task, spec.parallel, tx)
    shardings = state_lib.shardings(target)
    self.resumed = self.ckpt.latest_step() is not None
    if self.resumed:  # restored into this run's shardings, whatever wrote the checkpoint
      input_lib.check_resume(checkpoint_lib.load_config(workdir), spec.record)
      self.state = self.ckpt.restore(target, self.graphdef, task.trainable)
      metrics_lib.say(f"resumed from {self.ckpt.directory} at step {int(self.state.step)}")
    else:
      make = step_inputs.model_maker(task, step_inputs.batch_norm(p))
      _, state = state_lib.create(make, task.trainable, tx, parallel.placement_from_config(p))
      self.state = _initialized(task, self.graphdef, state, tx, shardings)
    self.start_step = self.step = int(jax.device_get(self.state.step))
    self.train_step = make_train_step(task.rules, self.graphdef, tx, schedule,
                                      parallel.batch_sharding(),
                                      int(spec.seed), clip_data(task, spec.data), shardings)
    self.writer = metrics_lib.MetricWriter(
        workdir, enabled=jax.process_index() == 0,
        tensorboard=bool(spec.log.tensorboard))
    peak_text = (", ".join(f"{k} {v:.4g}" for k, v in peak.items()) if isinstance(peak, dict)
                 else f"{peak:.4g}")
    metrics_lib.say(f"{describe or task.name}: {total_steps} steps, global batch {batch_size} "
                    f"on {jax.device_count()} devices ({jax.process_count()} processes), "
                    f"warm-up {warmup_steps}, peak lr {peak_text}")
    host_iter, self.pipeline_stats = task.batches(
        batch_size=parallel.local_batch_size(batch_size), start_step=self.start_step,
        process_index=jax.process_index(), process_count=jax.process_count())
    self.prefetch = input_lib.DevicePrefetcher(host_iter, parallel.batch_sharding(),
                                               size=int(p.device_prefetch))
    self.preemption = _Preemption()
    self.interval = _Interval()
    self.last_logged: dict[str, float] = {}
    self.latest: dict[str, float] = {}  # the metrics of the last step checked
    self.evals: dict[str, dict] = {}
    self.clips_per_step = None
    self.saved_step = None
    self.preempted = False

  def __enter__(self) -> "_Run":
    return self

  def __exit__(self, kind, failure, traceback) -> bool:
    self.close(failure)
    return False  # a failure goes on

  def loop(self) -> None:
    spec, total = self.spec, self.total_steps
    if self.evaluators and self.start_step == 0:
      self.evaluate(0)
    pending = None  # (step, device metrics) of the last dispatched step, checked one step late
    while self.step < total:
      self.process.progress(self.step, self.ckpt.directory)  # a lost peer -> one line
      batch, waited = self.prefetch.next()
      self.interval.wait += waited
      if self.clips_per_step is None:
        self.clips_per_step = (int(np.prod(batch[CLIPS].shape[:2]))
                               if self.task.input_key == CLIPS else int(spec.batch_size))
      self.state, device_metrics = self.train_step(self.state, batch)
      self.step += 1
      if pending is not None:
        self.check(pending)
      pending = (self.step, device_metrics)
      log_now = self.step % int(spec.log.every_steps) == 0 or self.step == total
      save_now = self.step % int(spec.checkpoint.every_steps) == 0 or self.step == total
      self.preempted = self.preemption.should_stop(self.step)
      eval_now = (any(ev.due(self.step, total) for ev in self.evaluators)
                  and not self.preempted)
      if log_now or save_now or self.preempted or eval_now:
        self.check(pending)
        pending = None
      if log_now and self.interval.steps:
        self.log()
      if save_now or self.preempted:
        self.save()
      if self.preempted:
        break
      if eval_now:
        self.evaluate(self.step)
        self.interval.reset()  # evaluator time is not training time

  def check(self, step_and_metrics) -> None:
    """A finished step's metrics: finite, or the run stops; summed into the interval."""
    done_step, device_metrics = step_and_metrics
    scalars = _to_floats(device_metrics)
    self.latest.clear()
    self.latest.update(scalars)
    for key in ("loss", "grad_norm"):
      if not math.isfinite(scalars[key]):
        raise NonFiniteLossError(
            f"{key} is {scalars[key]} at step {done_step}: stopping. The last good checkpoint "
            f"(step {self.ckpt.latest_step()}) is kept in {self.ckpt.directory}; lower the "
            "learning rate or check the data.")
    if self.interval.steps == 0 and done_step == self.start_step + 1:
      self.interval.reset()  # the first step includes compilation: time from its end
      self.interval.last = scalars
      return
    self.interval.add(scalars)

  def log(self) -> None:
    interval = self.interval
    elapsed = time.perf_counter() - interval.start
    scalars = {k: v / interval.steps for k, v in interval.sums.items()}
    scalars["learning_rate"] = interval.last["learning_rate"]
    scalars["clips_per_sec"] = interval.steps * self.clips_per_step / max(elapsed, 1e-9)
    scalars["data_wait_fraction"] = min(1.0, interval.wait / max(elapsed, 1e-9))
    scalars.update({f"data_{k}": v for k, v in self.pipeline_stats.as_dict().items()})
    self.writer.write(self.step, scalars)
    self.writer.log_progress(self.step, self.total_steps, scalars,
                             (self.total_steps - self.step) * elapsed / interval.steps)
    self.last_logged = scalars
    interval.reset()

  def save(self) -> None:
    if self.saved_step != self.step:
      self.ckpt.save(self.state, self.spec.record)
      self.saved_step = self.step

  def evaluate(self, now: int) -> None:
    encoder = self.task.encoder(current_model(self.graphdef, self.state))
    for ev in self.evaluators:
      if not ev.due(now, self.total_steps):
        continue
      start = time.perf_counter()
      out = ev(encoder, now)
      seconds = time.perf_counter() - start
      out = dict(out, seconds=seconds)
      self.evals[ev.name] = out
      self.writer.write(now, {f"eval/{ev.name}/{k}": v for k, v in out.items()
                              if isinstance(v, (int, float)) and not isinstance(v, bool)})
      metrics_lib.say(f"eval/{ev.name} step {now}: " + metrics_lib.format_scalars(
          out, getattr(ev, "headline", ())) + f" ({seconds:.1f}s)")

  def close(self, failure: BaseException | None) -> None:
    self.prefetch.close()
    self.preemption.restore()
    self.writer.close()
    # Waits for the async saves already started (never the bad state); not after a lost
    # peer, whose saves can never finish (their barrier would hang until JAX aborts).
    if not runtime.peer_lost(failure):
      self.ckpt.close()

  def result(self) -> dict[str, Any]:
    if self.preempted:
      metrics_lib.say(f"preempted at step {self.step}: checkpoint saved in "
                      f"{self.ckpt.directory}")
    return {"step": self.step, "total_steps": self.total_steps, "preempted": self.preempted,
            "loss": self.last_logged.get("loss", self.interval.last.get("loss")),
            "checkpoint_dir": self.ckpt.directory, "metrics": self.last_logged,
            "last_step_metrics": dict(self.latest), "evals": self.evals, "state": self.state,
            "graphdef": self.graphdef, "resumed": self.resumed,
            "model": None if self.preempted else current_model(self.graphdef, self.state)}


def _initialized(task, graphdef, state, tx, shardings) -> state_lib.TrainState:
  """The fresh state after `task.initialize` (a no-op keeps the state as created), placed
  by `shardings` (the state's, e.g. state.shardings of its abstract state)."""
  if type(task).initialize is Task.initialize:
    return state
  model = current_model(graphdef, state)
  task.initialize(model)
  _, params, rest = state_lib.split(model, task.trainable)
  # Copies: the step donates its state, and these may be the caller's own arrays.
  params, rest = jax.jit(lambda t: jax.tree.map(_copy, t),
                         out_shardings=(shardings.params, shardings.rest))((params, rest))
  opt_state = jax.jit(tx.init, out_shardings=shardings.opt_state)(params)
  return state_lib.TrainState(step=state.step, params=params, rest=rest, opt_state=opt_state)


def _copy(x):
  """A fresh buffer of `x` inside jit (an output that is an input would be forwarded)."""
  if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
    return jax.random.wrap_key_data(jax.random.key_data(x) + 0, impl=jax.random.key_impl(x))
  return x + jax.numpy.zeros((), x.dtype)
