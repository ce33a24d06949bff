"""Fine-tuning: the whole network trained with a new linear head, on the training engine.

The encoder starts from a pretraining checkpoint (or random weights: training from
scratch, the baseline), its BN runs in train mode (statistics over the global batch,
i.e. synchronised), the head may use dropout, and backbone and head have their own
learning rates (`optim.make` groups), each with linear warm-up and cosine decay. The
engine checkpoints, resumes exactly and saves on SIGTERM. The trained model is tested
with multi-view evaluation and saved for the evaluate job.
"""
from __future__ import annotations

import functools
import time

import jax

from cvrl import config_lib
from cvrl.core import runtime
from cvrl.eval import classifier_io
from cvrl.eval import common
from cvrl.engine import clip_shape
from cvrl.engine import loop as engine
from cvrl.eval import features as F
from cvrl.eval import multiview
from cvrl.eval import results as R
from cvrl.engine import tasks
from cvrl.data import sources
from cvrl.models import extra_frames

NEEDS_WORKDIR = True


def validate(config) -> None:
  F.validate_downstream("finetune", config_lib.encoder_args(config), config.optim,
                        config.evaluate, config.data)
  engine.RunSpec(**config_lib.run_args(config))  # the loop's fields
  if not 0.0 <= float(config.finetune.dropout) < 1.0:
    raise ValueError(f"config.finetune.dropout must be in [0, 1), got {config.finetune.dropout}")


def make_task(config, num_classes: int):
  """(ClassifierTask training every parameter, encoder model config, provenance)."""
  source = config_lib.encoder_args(config)
  make_encoder, encoder, model_config, source = F.encoder_source(**source)
  batches = F.train_stream(config.data, batch_size=int(config.batch_size),
                           seed=int(config.seed), extra_frames=extra_frames(model_config))
  task = tasks.ClassifierTask(
      tasks.Training(**config_lib.training(config)), make_encoder=make_encoder,
      num_classes=num_classes,
      normalize=bool(config.finetune.normalize), dropout=float(config.finetune.dropout),
      train_encoder=True, batches=batches, encoder_init=encoder, groups=tasks.FINETUNE_GROUPS)
  return task, model_config, source


def run(config, workdir: str) -> dict:
  with runtime.job() as process, jax.set_mesh(engine.setup(config.get("parallel"))):
    sources.prepare(config.data, ["train", "eval"] if config.finetune.evaluate else ["train"])
    shape, config = clip_shape.resolved(config)  # the checkpoint's frames / stride / crop
    durations = functools.partial(config_lib.durations, config)
    classes, n_train, total, warmup = F.schedule(config.data, durations)
    task, model_config, source = make_task(config, classes)
    start = time.time()
    trained = engine.run(task, engine.RunSpec(**config_lib.run_args(config)), workdir,
                         total_steps=total, warmup_steps=warmup,
                         process=process)
    if trained["preempted"]:
      return {"job": "finetune", "preempted": True, "step": trained["step"]}
    _, _, rates = task.optimizer(total, warmup)
    last = trained["last_step_metrics"]
    model = trained["model"]
    out = {"source": source, "num_classes": classes, "num_train_examples": n_train,
           "train": {"total_steps": total, "warmup_steps": warmup, "learning_rates": rates,
                     "train_loss": float(last["loss"]), "train_accuracy": float(last["accuracy"]),
                     "seconds": time.time() - start}}
    metrics = {"train_accuracy": out["train"]["train_accuracy"],
               "train_loss": out["train"]["train_loss"]}
    if config.finetune.evaluate:
      splits = common.Splits(config.data, int(config.seed), extra_frames(model_config))
      out["test"] = multiview.evaluate_classifier(model, splits, workdir,
                                                  multiview.Test.of(config.evaluate))
      metrics.update({k: out["test"][k] for k in ("top1", "top5", "mean_class_accuracy")
                      if k in out["test"]})
    if config.finetune.save_model:
      classifier_io.save_classifier(workdir, model, model_config, num_classes=classes,
                                    normalize=bool(config.finetune.normalize),
                                    dropout=float(config.finetune.dropout), source=source)
    results = {"job": "finetune", "metrics": metrics, "finetune": out,
               "checkpoint": source.get("checkpoint"), "step": source.get("step"),
               "clip_shape": shape.as_dict(), "config": config_lib.as_dict(config)}
    R.write_results(workdir, results)
    R.headline("finetune", metrics, ["top1", "top5", "train_accuracy"])
    return results
