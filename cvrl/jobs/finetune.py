"""Fine-tuning: the whole network trained with a new linear head, on the training engine.

The encoder starts from a pretraining checkpoint (or random weights: training from
scratch, the baseline), its BN runs in train mode (statistics over the global batch,
i.e. synchronised), the head may use dropout, and backbone and head have their own
learning rates (`optim.make` groups), each with linear warm-up and cosine decay. The
engine checkpoints, resumes exactly and saves on SIGTERM. The trained model is tested
with multi-view evaluation and saved for the evaluate job.
"""
from __future__ import annotations

import dataclasses
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


@dataclasses.dataclass(frozen=True)
class Finetune(F.Downstream):
  """What the job takes of its config, parsed and checked once (`parse`): the encoder to
  start from, the task's training, loop and schedule (`F.Downstream`), the multi-view
  test and config.finetune's fields."""
  test: multiview.Test
  normalize: bool
  dropout: float
  evaluate: bool
  save_model: bool

  def __post_init__(self):
    if not 0.0 <= self.dropout < 1.0:
      raise ValueError(f"config.finetune.dropout must be in [0, 1), got {self.dropout}")


def parse(config) -> Finetune:
  """The job's typed arguments, checked (before anything compiles)."""
  f = config.finetune
  return Finetune.of("finetune", **config_lib.downstream(config),
                     test=multiview.Test.of(config.evaluate), normalize=bool(f.normalize),
                     dropout=float(f.dropout), evaluate=bool(f.evaluate),
                     save_model=bool(f.save_model))


def make_task(job: Finetune, num_classes: int):
  """(ClassifierTask training every parameter, encoder model config, provenance)."""
  make_encoder, encoder, model_config, source = F.encoder_source(**job.encoder)
  batches = F.train_stream(job.spec.data, batch_size=job.training.batch_size,
                           seed=job.spec.seed, extra_frames=extra_frames(model_config))
  task = tasks.ClassifierTask(
      job.training, make_encoder=make_encoder, num_classes=num_classes,
      normalize=job.normalize, dropout=job.dropout,
      train_encoder=True, batches=batches, encoder_init=encoder, groups=tasks.FINETUNE_GROUPS)
  return task, model_config, source


def run(job: Finetune, workdir: str) -> dict:
  """Fine-tunes on a parsed config (`parse`: cvrl.main checks it before any work)."""
  with runtime.job() as process, jax.set_mesh(engine.setup(job.spec.parallel)):
    sources.prepare(job.spec.data, ["train", "eval"] if job.evaluate else ["train"])
    shape = clip_shape.resolved(job.spec.data, job.encoder)  # the checkpoint's frames / ...
    job = job.shaped(shape)
    classes, n_train, total, warmup = F.schedule(job.spec.data, job.durations)
    task, model_config, source = make_task(job, classes)
    start = time.time()
    trained = engine.run(task, job.spec, workdir,
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
    if job.evaluate:
      splits = common.Splits(job.spec.data, job.spec.seed, extra_frames(model_config))
      out["test"] = multiview.evaluate_classifier(model, splits, workdir, job.test)
      metrics.update({k: out["test"][k] for k in ("top1", "top5", "mean_class_accuracy")
                      if k in out["test"]})
    if job.save_model:
      classifier_io.save_classifier(workdir, model, model_config, num_classes=classes,
                                    normalize=job.normalize, dropout=job.dropout, source=source)
    results = {"job": "finetune", "metrics": metrics, "finetune": out,
               "checkpoint": source.get("checkpoint"), "step": source.get("step"),
               "clip_shape": shape.as_dict(), "config": job.spec.record}
    R.write_results(workdir, results)
    R.headline("finetune", metrics, ["top1", "top5", "train_accuracy"])
    return results
