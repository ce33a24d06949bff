"""The 'multiview' evaluator, and CVRL's multi-view test the probe, finetune and evaluate
jobs share.

The evaluator: the 'linear' evaluator's classifier, then the multi-view test on the test
split: every video gives `test_clips` evenly spaced clips x `test_crops` crops, the
softmax of every view averaged per video; top-1 / top-5 and mean class accuracy. As the
evaluate job's mode='multiview' it tests the classifier a probe or finetune job saved
(config.evaluate.run_dir), with config.evaluate's views, and writes the report files.
"""
from __future__ import annotations

import csv
import importlib
import io

import jax
import ml_collections
import numpy as np

from cvrl.core import paths
from cvrl.models.heads import EncoderHead
from cvrl.eval import classifier_io
from cvrl.eval import common
from cvrl.eval import features as F
from cvrl.eval import linear
from cvrl.eval import scores


class Multiview(linear.Linear):
  FIELDS = dict(linear.Linear.FIELDS, test_clips=10, test_crops=3)  # the test's views

  @classmethod
  def check(cls, name, spec) -> None:
    super().check(name, spec)
    common.check_choice(name, spec, "test_crops", (1, 3))

  def evaluate_fields(self) -> dict:
    return dict(super().evaluate_fields(), num_clips=int(self.spec.test_clips),
                num_crops=int(self.spec.test_crops))

  def evaluate(self, encoder) -> dict:
    head, _ = self.fit(encoder)
    model = EncoderHead(encoder, F.place(self.mesh, head))
    out = evaluate_classifier(model, self.config, self.mesh, None, self.model_config)
    return {k: v for k, v in out.items() if k != "seconds"}

  @classmethod
  def validate_job(cls, config) -> None:
    run_dir = config.evaluate.run_dir
    if not run_dir:
      raise ValueError("evaluate: mode 'multiview' needs config.evaluate.run_dir (a probe or "
                       "finetune workdir)")
    if not paths.as_path(paths.join(run_dir, "model.json")).exists():
      raise FileNotFoundError(f"evaluate: {run_dir}/model.json not found; run_dir must be the "
                              "workdir of a finished probe or finetune job")

  @classmethod
  def run_job(cls, config, mesh, workdir: str) -> dict:
    """The multi-view test of config.evaluate.run_dir's classifier; files in workdir."""
    e = config.evaluate
    model, meta = classifier_io.load_classifier(e.run_dir, mesh)
    model_config = ml_collections.ConfigDict(meta["model"])  # the saved encoder's input
    metrics = evaluate_classifier(model, config, mesh, workdir, model_config)
    source = meta.get("source")
    return {"metrics": metrics, "checkpoint": {"run_dir": str(e.run_dir), "source": source},
            "step": (source or {}).get("step"),
            "headline": ["top1", "top5", "mean_class_accuracy", "num_videos"]}


def classification_report(out: F.SplitOutputs, num_classes: int, workdir: str | None,
                          save_scores: bool = True) -> tuple[dict, np.ndarray]:
  """Metrics of per-video probabilities; per-class / confusion / scores files in workdir."""
  metrics, cm = scores.classification_metrics(out.values, out.labels, num_classes)
  if workdir and jax.process_index() == 0:
    directory = paths.makedirs(workdir)
    with (directory / "confusion_matrix.npy").open("wb") as f:
      np.save(f, cm)
    paths.write_text(directory / "confusion_matrix.csv", _csv(
        [[int(v) for v in row] for row in cm]))
    acc = scores.per_class_accuracy(cm)
    paths.write_text(directory / "per_class_accuracy.csv", _csv(
        [["class", "videos", "correct", "accuracy"]]
        + [[c, int(cm[c].sum()), int(cm[c, c]), "" if not np.isfinite(acc[c]) else f"{acc[c]:.6f}"]
           for c in range(num_classes)], end="\r\n"))
    if save_scores:
      with (directory / "scores.npz").open("wb") as f:
        np.savez(f, index=out.index, label=out.labels, probs=out.values.astype(np.float32))
  return metrics, cm


def _csv(rows, end: str = "\n") -> str:
  text = io.StringIO(newline="")
  csv.writer(text, lineterminator=end).writerows(rows)
  return text.getvalue()


def load_scores(path: str) -> dict:
  with paths.as_path(path).open("rb") as f, np.load(f) as z:
    return {k: z[k] for k in ("index", "label", "probs")}


def align_scores(runs: list[dict]) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
  """(index, labels, probabilities per run), every run's rows sorted by video index; all
  runs must score the same videos."""
  orders = [np.argsort(r["index"], kind="stable") for r in runs]
  index = runs[0]["index"][orders[0]]
  for r, order in zip(runs, orders):
    if not np.array_equal(r["index"][order], index):
      raise ValueError("runs to fuse score different videos (their scores.npz indices differ)")
  labels = runs[0]["label"][orders[0]]
  return index, labels, [r["probs"][order] for r, order in zip(runs, orders)]


def fusion_function(name: str):
  """'mean' (average of probabilities) or 'package.module:function', called as f(*probs)."""
  if name == "mean":
    return lambda *probs: np.mean(np.stack(probs), axis=0)
  if ":" not in name:
    raise ValueError(f"evaluate.fusion must be 'mean' or 'package.module:function', got {name!r}")
  module, fn = name.split(":", 1)
  return getattr(importlib.import_module(module), fn)


def fuse(runs: list[dict], fusion: str, num_classes: int) -> dict:
  """Metrics of the fused scores of several runs over the same test videos."""
  _, labels, probs = align_scores(runs)
  fused = np.asarray(fusion_function(fusion)(*probs))
  metrics, _ = scores.classification_metrics(fused, labels, num_classes)
  return metrics


def evaluate_classifiers(models: dict, config, mesh, workdirs: dict,
                         model_config=None) -> dict[str, dict]:
  """Multi-view test of VideoClassifiers on the eval split, in one pass over it.

  {name: metrics}; each model's files go to workdirs[name]. `model_config`: their
  encoders' (one pass of clips: they share it; None: config.model).
  """
  e = config.evaluate
  classes = F.num_classes(config.data)
  runners = {name: F.ViewRunner(m, mesh, reduce="softmax_mean", data_config=config.data)
             for name, m in models.items()}
  outs = F.run_splits(runners, mesh, common.split_batches(config, mesh, "eval", int(e.num_clips),
                                                          int(e.num_crops), int(e.batch_size),
                                                          model_config))
  results = {}
  for name, out in outs.items():
    metrics, _ = classification_report(out, classes, workdirs.get(name), bool(e.save_scores))
    metrics["views_per_video"] = int(e.num_clips) * int(e.num_crops)
    metrics["seconds"] = out.seconds
    if e.fuse_with:
      mine = {"index": out.index, "label": out.labels, "probs": out.values}
      others = [load_scores(p.strip()) for p in str(e.fuse_with).split(",") if p.strip()]
      metrics["fused"] = fuse([mine] + others, e.fusion, classes)
    results[name] = metrics
  return results


def evaluate_classifier(model, config, mesh, workdir: str | None, model_config=None) -> dict:
  """Multi-view test of one EncoderHead on the eval split; files go to workdir."""
  return evaluate_classifiers({"model": model}, config, mesh, {"model": workdir},
                              model_config)["model"]


make = Multiview  # the kind's entry point (cvrl.core.discovery)
