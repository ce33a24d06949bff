"""The pretraining job: any objective, data parallel over every device, resumable.

A `PretrainTask` on the training engine (cvrl.engine.loop: sharded donated step,
checkpoints carrying the config, exact resume, SIGTERM save, NaN stop, metrics.jsonl,
TensorBoard, progress line). `config.evals` names evaluators (cvrl.eval.common: kNN,
linear probe on cached features, multi-view test, or any other cvrl/eval/<kind>.py) that
watch the encoder every `every_steps`; their final values go to DIR/results.json.
"""
from __future__ import annotations

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


def validate(config) -> None:
  """Everything that can be checked without touching a device (the backend must stay
  uninitialised until jax.distributed has started)."""
  objectives.from_config(config)
  optim.validate(config.optim)
  engine.RunSpec(**config_lib.run_args(config))  # the loop's fields
  total, warmup = config_lib.durations(config)
  if total <= 0 or warmup < 0:
    raise ValueError(f"need total steps > 0 and warm-up >= 0, got {total} and {warmup}")
  common.from_config(config.get("evals"))  # kinds, keys and each kind's checks


def picture_dir(config, workdir: str) -> str:
  """Where the first batch's picture goes (TensorBoard, cvrl.engine.pictures): the workdir
  with config.log.tensorboard and config.log.first_batch_picture on, else nowhere ('')."""
  log = config.log
  return workdir if log.get("tensorboard", True) and log.get("first_batch_picture", True) else ""


def _eval_splits(config, objective) -> common.Splits:
  """What the evaluators read: every train video (pretraining ignores data.label_fraction),
  clips of the frames the method's encoder takes."""
  return common.Splits(config.data, int(config.seed),
                       objective.encoder_spec.extra_frames, label_fraction=1.0)


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Pretrains on a config `validate` passed (cvrl.main checks it before any work), on the
  mesh the engine sets up (its evaluators run inside the loop)."""
  with runtime.job() as process:  # the job's JAX settings (rbg PRNG); a lost peer -> one line
    sources.prepare(config.data, ["train", "eval"] if config.get("evals") else ["train"])
    objective = objectives.from_config(config)
    task = tasks.PretrainTask(tasks.Training(**config_lib.training(config)), config.data,
                              objective, picture_dir=picture_dir(config, workdir))
    total_steps, warmup_steps = config_lib.durations(config)
    evals = common.from_config(config.get("evals"), lambda: task.make_model().encoder,
                               _eval_splits(config, objective))
    out = engine.run(task, engine.RunSpec(**config_lib.run_args(config)), workdir,
                     total_steps=total_steps,
                     warmup_steps=warmup_steps, evaluators=evals, process=process)
    return _result(workdir, out, config_lib.as_dict(config) if evals else None)


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
