"""The 'multiview' evaluator, and CVRL's multi-view test the probe, finetune and evaluate
jobs share.

The test (`Test`, from config.evaluate in those jobs): every test video gives `num_clips`
evenly spaced clips x `num_crops` crops, the softmax of every view averaged per video;
top-1 / top-5 and mean class accuracy, the report files, and optionally the fusion with
other runs' scores. The evaluator: the 'linear' evaluator's classifier, then that test
with its own `test_clips` x `test_crops` views.
"""
from __future__ import annotations

import csv
import dataclasses
import importlib
import io

import jax
import numpy as np

from cvrl.core import paths
from cvrl.models.heads import EncoderHead
from cvrl.eval import common
from cvrl.eval import features as F
from cvrl.eval import linear
from cvrl.eval import scores


@dataclasses.dataclass(frozen=True)
class Test:
  """CVRL's multi-view test: views per video, global batch (videos), whether scores.npz is
  written, other runs' scores.npz to fuse with (comma-separated) and how (`fusion_function`)."""
  num_clips: int
  num_crops: int
  batch_size: int
  save_scores: bool
  fuse_with: str
  fusion: str

  @classmethod
  def of(cls, evaluate) -> Test:
    """The test config.evaluate describes."""
    return cls(int(evaluate.num_clips), int(evaluate.num_crops), int(evaluate.batch_size),
               bool(evaluate.save_scores), str(evaluate.fuse_with), str(evaluate.fusion))


class Multiview(linear.Linear):
  def __init__(self, make_encoder, splits, *, test_clips: int = 10, test_crops: int = 3,
               **linear_fields):
    """test_clips x test_crops: the multi-view test's views per video."""
    super().__init__(make_encoder, splits, **linear_fields)
    common.check_choice(self.name, "test_crops", test_crops, (1, 3))
    # In memory: no files, no fusion.
    self.test = Test(int(test_clips), int(test_crops), self.batch_size, save_scores=False,
                     fuse_with="", fusion="mean")

  def evaluate(self, encoder) -> dict:
    head, _ = self.fit(encoder)
    model = EncoderHead(encoder, head)
    out = evaluate_classifier(model, self.splits, None, self.test)
    return {k: v for k, v in out.items() if k != "seconds"}


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


def evaluate_classifiers(models: dict, splits: common.Splits, workdirs: dict,
                         test: Test) -> dict[str, dict]:
  """Multi-view test of EncoderHeads on the eval split of `splits`, in one pass over it
  (one pass of clips: their encoders take the same frames).

  {name: metrics}; each model's files go to workdirs[name].
  """
  classes = splits.num_classes
  runners = {name: F.ViewRunner(m, reduce="softmax_mean", data_config=splits.data)
             for name, m in models.items()}
  outs = F.run_splits(runners, splits.batches("eval", test.num_clips, test.num_crops,
                                                    test.batch_size))
  results = {}
  for name, out in outs.items():
    metrics, _ = classification_report(out, classes, workdirs.get(name), test.save_scores)
    metrics["views_per_video"] = test.num_clips * test.num_crops
    metrics["seconds"] = out.seconds
    if test.fuse_with:
      mine = {"index": out.index, "label": out.labels, "probs": out.values}
      others = [load_scores(p.strip()) for p in test.fuse_with.split(",") if p.strip()]
      metrics["fused"] = fuse([mine] + others, test.fusion, classes)
    results[name] = metrics
  return results


def evaluate_classifier(model, splits: common.Splits, workdir: str | None, test: Test) -> dict:
  """Multi-view test of one EncoderHead on the eval split; files go to workdir."""
  return evaluate_classifiers({"model": model}, splits, {"model": workdir}, test)["model"]


make = Multiview  # the kind's entry point (cvrl.core.discovery)
