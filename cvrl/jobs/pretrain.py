"""The pretraining job: any objective, data parallel over every device, resumable.

A `PretrainTask` on the training engine (cvrl.engine.loop: sharded donated step,
checkpoints carrying the config, exact resume, SIGTERM save, NaN stop, metrics.jsonl,
TensorBoard, progress line). `config.evals` names evaluators (cvrl.eval.common: kNN,
linear probe on cached features, multi-view test, or any other cvrl/eval/<kind>.py) that
watch the encoder every `every_steps`; their final values go to DIR/results.json.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import ml_collections

from cvrl import config_lib, objectives
from cvrl.core import runtime
from cvrl.data import sources
from cvrl.engine import loop as engine
from cvrl.eval import common
from cvrl.engine import optim
from cvrl.eval import results as R
from cvrl.engine import tasks

NEEDS_WORKDIR = True


@dataclasses.dataclass(frozen=True)
class Pretrain:
  """What the job takes of its config, parsed and checked once (`parse`): the method, its
  task's training fields, the loop's `RunSpec`, the schedule in steps and config.evals."""
  objective: objectives.Objective
  training: tasks.Training
  spec: engine.RunSpec
  total_steps: int
  warmup_steps: int
  evals: Any


def parse(config: ml_collections.ConfigDict) -> Pretrain:
  """The job's typed arguments; everything that can be checked without touching a device
  (the backend must stay uninitialised until jax.distributed has started)."""
  objective = objectives.method(**config_lib.method_args(config))
  optim.validate(config.optim)
  spec = engine.RunSpec(**config_lib.run_args(config))  # the loop's fields
  total, warmup = config_lib.durations(config)
  if total <= 0 or warmup < 0:
    raise ValueError(f"need total steps > 0 and warm-up >= 0, got {total} and {warmup}")
  common.from_config(config.evals)  # kinds, keys and each kind's checks
  return Pretrain(objective, tasks.Training(**config_lib.training(config)), spec, total, warmup,
                  config.evals)


def picture_dir(log, workdir: str) -> str:
  """Where the first batch's picture goes (TensorBoard, cvrl.engine.pictures): the workdir
  with `log` (config.log)'s tensorboard and first_batch_picture on, else nowhere ('')."""
  return workdir if log.tensorboard and log.first_batch_picture else ""


def _eval_splits(job: Pretrain) -> common.Splits:
  """What the evaluators read: every train video (pretraining ignores data.label_fraction),
  clips of the frames the method's encoder takes."""
  return common.Splits(job.spec.data, job.spec.seed, job.objective.encoder_spec.extra_frames,
                       label_fraction=1.0)


def run(job: Pretrain, workdir: str) -> dict[str, Any]:
  """Pretrains on a parsed config (`parse`: cvrl.main checks it before any work), on the
  mesh the engine sets up (its evaluators run inside the loop)."""
  with runtime.job() as process:  # the job's JAX settings (rbg PRNG); a lost peer -> one line
    sources.prepare(job.spec.data, ["train", "eval"] if job.evals else ["train"])
    task = tasks.PretrainTask(job.training, job.spec.data, job.objective,
                              picture_dir=picture_dir(job.spec.log, workdir))
    evals = common.from_config(job.evals, lambda: task.make_model().encoder, _eval_splits(job))
    out = engine.run(task, job.spec, workdir, total_steps=job.total_steps,
                     warmup_steps=job.warmup_steps, evaluators=evals, process=process)
    return _result(workdir, out, job.spec.record if evals else None)


def _result(workdir: str, out: dict, evals_config: dict | None) -> dict[str, Any]:
  """The job's result from the engine's `out`; with evaluators (`evals_config`: the config
  as results.json records it), results.json of their last values."""
  result = {"job": "pretrain", **{k: out[k] for k in (
      "step", "total_steps", "preempted", "loss", "checkpoint_dir", "metrics", "state")}}
  if out["preempted"]:
    return result
  engine.metrics_lib.say(f"pretraining done at step {out['step']}; checkpoints in "
                         f"{out['checkpoint_dir']}")
  if evals_config is not None:
    result["evals"] = out["evals"]
    R.write_results(workdir, {"job": "pretrain", "step": out["step"], "evals": out["evals"],
                              "metrics": {f"{name}/{k}": v for name, m in out["evals"].items()
                                          for k, v in m.items()},
                              "checkpoint": out["checkpoint_dir"],
                              "config": evals_config})
  return result
