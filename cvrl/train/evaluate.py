"""The evaluate job: multi-view testing of a trained classifier, or kNN retrieval.

mode='multiview' (CVRL's test): every test video gives K evenly spaced clips x 3 crops
(default 10 x 3 = 30 views); the softmax of the views is averaged per video. Reports
top-1 / top-5 and mean class accuracy; writes per_class_accuracy.csv,
confusion_matrix.npy / .csv and scores.npz (index, label, probabilities per video) into
the workdir. `evaluate.fuse_with` names other runs' scores.npz to fuse with these
(3DRotNet's RGB + DIF "Fusion": each run tests its own encoder on the clips it takes, T + 1
frames for a DIF model, per `cvrl.models.extra_frames` of the saved model config);
`evaluate.fusion` is 'mean' (the average of the runs' per-video softmax scores:
3DRotNet's Fusion) or 'package.module:function', called with one [videos, classes]
probability array per run (this run first), returning the fused one.

mode='knn' (TCLR's retrieval protocol): backbone features (no head) of every train and
test video, averaged over its clips and L2-normalised; each test video queries the
training videos by cosine similarity. Reports retrieval recall@k (a hit when any of the
k nearest training videos shares the class) and kNN classification accuracy
(`knn_vote`: 'weighted' by exp(sim / T), or 'majority').

Evaluation is sharded over every device of every host; padded final batches carry
mask 0 and are dropped, so every video counts exactly once.
"""
from __future__ import annotations

import csv
import importlib
import os

import jax
import ml_collections
import numpy as np
from ml_collections import config_dict

from cvrl import parallel
from cvrl.train import features as F
from cvrl.train import results as R
from cvrl.train import retrieval
from cvrl.train import scores

NEEDS_WORKDIR = True
MODES = ("multiview", "knn")


def eval_fields() -> ml_collections.ConfigDict:
  """`config.evaluate`, shared by probe, finetune and evaluate."""
  return ml_collections.ConfigDict(dict(
      mode="multiview",
      num_clips=10, num_crops=3,  # CVRL: 10 clips x 3 crops of eval_crop_size
      batch_size=32,              # global, in videos
      run_dir="",                 # multiview: workdir of a probe / finetune run
      save_scores=True,
      fuse_with="",               # comma-separated scores.npz of other runs
      fusion="mean",
      knn_clips=10, knn_crops=1,  # knn: views per video, features averaged
      knn_k=20, knn_vote="weighted", knn_temperature=0.07,
      recall_ks=(1, 5, 10, 20),
  ))


def base_config() -> ml_collections.ConfigDict:
  # pylint: disable=import-outside-toplevel
  from cvrl.data.config import default_data_config
  from cvrl.models import default_model_config
  c = ml_collections.ConfigDict()
  c.job = "evaluate"
  c.seed = 0
  c.pretrained = ""  # knn: checkpoint whose encoder is evaluated
  c.pretrained_step = config_dict.placeholder(int)
  c.random_init = False  # knn: a random-init config.model instead
  c.model = default_model_config()
  c.data = default_data_config()
  c.data.num_classes = config_dict.placeholder(int)
  c.data.num_train_examples = config_dict.placeholder(int)
  c.evaluate = eval_fields()
  return c


def validate_eval_fields(e) -> None:
  if e.mode not in MODES:
    raise ValueError(f"config.evaluate.mode must be one of {list(MODES)}, got {e.mode!r}")
  for key in ("num_crops", "knn_crops"):
    if e[key] not in (1, 3):
      raise ValueError(f"config.evaluate.{key} must be 1 or 3, got {e[key]}")
  if int(e.batch_size) <= 0:
    raise ValueError(f"config.evaluate.batch_size must be > 0, got {e.batch_size}")
  if e.knn_vote not in retrieval.VOTES:
    raise ValueError(f"config.evaluate.knn_vote must be one of {list(retrieval.VOTES)}, "
                     f"got {e.knn_vote!r}")


def validate(config) -> None:
  e = config.evaluate
  validate_eval_fields(e)
  if e.mode == "multiview" and not e.run_dir:
    raise ValueError("evaluate: mode 'multiview' needs config.evaluate.run_dir (a probe or "
                     "finetune workdir)")
  if e.mode == "multiview" and not os.path.exists(os.path.join(e.run_dir, "model.json")):
    raise FileNotFoundError(f"evaluate: {e.run_dir}/model.json not found; run_dir must be the "
                            "workdir of a finished probe or finetune job")
  if e.mode == "knn" and not config.get("pretrained") and not config.get("random_init"):
    raise ValueError("evaluate: mode 'knn' needs config.pretrained=<checkpoint dir> or "
                     "config.random_init=True")


# ---------------------------------------------------------------------------- batches

def split_batches(config, mesh, split: str, num_clips: int, num_crops: int, batch_size: int,
                  model_config=None):
  """Host batches of a whole split, multi-view, deterministic, padded with mask 0: clips
  of the frames the encoder of `model_config` takes (None: config.model; T + 1 for DIF)."""
  from cvrl.data import pipeline  # pylint: disable=import-outside-toplevel
  from cvrl.models import extra_frames  # pylint: disable=import-outside-toplevel
  model_config = config.model if model_config is None else model_config
  ds = pipeline.build_dataset(
      config.data, sampler={"name": "multiview", "num_clips": num_clips, "num_crops": num_crops,
                            "extra_frames": extra_frames(model_config)},
      train=False, batch_size=F.local_batch_size(batch_size, mesh), seed=int(config.seed),
      split=split)
  return pipeline.iterate(ds)


# ------------------------------------------------------------------------- multi-view

def classification_report(out: F.SplitOutputs, num_classes: int, workdir: str | None,
                          save_scores: bool = True) -> tuple[dict, np.ndarray]:
  """Metrics of per-video probabilities; per-class / confusion / scores files in workdir."""
  metrics, cm = scores.classification_metrics(out.values, out.labels, num_classes)
  if workdir and jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    np.save(os.path.join(workdir, "confusion_matrix.npy"), cm)
    np.savetxt(os.path.join(workdir, "confusion_matrix.csv"), cm, fmt="%d", delimiter=",")
    acc = scores.per_class_accuracy(cm)
    with open(os.path.join(workdir, "per_class_accuracy.csv"), "w", newline="") as f:
      w = csv.writer(f)
      w.writerow(["class", "videos", "correct", "accuracy"])
      for c in range(num_classes):
        w.writerow([c, int(cm[c].sum()), int(cm[c, c]),
                    "" if not np.isfinite(acc[c]) else f"{acc[c]:.6f}"])
    if save_scores:
      np.savez(os.path.join(workdir, "scores.npz"), index=out.index, label=out.labels,
               probs=out.values.astype(np.float32))
  return metrics, cm


def load_scores(path: str) -> dict:
  with np.load(path) as z:
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
  outs = F.run_splits(runners, mesh, split_batches(config, mesh, "eval", int(e.num_clips),
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
  """Multi-view test of one VideoClassifier on the eval split; files go to workdir."""
  return evaluate_classifiers({"model": model}, config, mesh, {"model": workdir},
                              model_config)["model"]


# -------------------------------------------------------------------------------- knn

def knn_report(encoder, config, mesh, model_config=None) -> dict:
  """Retrieval recall@k and kNN accuracy of `encoder`'s clip-averaged features
  (`model_config`: the encoder's, None: config.model)."""
  e = config.evaluate
  runner = F.ViewRunner(encoder, mesh, reduce="mean", data_config=config.data)
  args = (int(e.knn_clips), int(e.knn_crops), int(e.batch_size), model_config)
  train = F.run_split(runner, mesh, split_batches(config, mesh, "train", *args))
  test = F.run_split(runner, mesh, split_batches(config, mesh, "eval", *args))
  metrics = retrieval.knn_evaluate(
      train.values, train.labels, test.values, test.labels, num_classes=F.num_classes(config.data),
      ks=tuple(int(k) for k in e.recall_ks), knn_k=int(e.knn_k), vote=e.knn_vote,
      temperature=float(e.knn_temperature))
  metrics["views_per_video"] = args[0] * args[1]
  metrics["seconds"] = train.seconds + test.seconds
  return metrics


# ------------------------------------------------------------------------------ the job

def run(config, workdir: str) -> dict:
  parallel.maybe_initialize_distributed()
  validate(config)
  mesh = F.make_mesh()
  os.makedirs(workdir, exist_ok=True)
  e = config.evaluate
  if e.mode == "multiview":
    from cvrl.train import classifier_io  # pylint: disable=import-outside-toplevel
    model, meta = classifier_io.load_classifier(e.run_dir, mesh)
    model_config = ml_collections.ConfigDict(meta["model"])  # the saved encoder's input
    metrics = evaluate_classifier(model, config, mesh, workdir, model_config)
    checkpoint = {"run_dir": str(e.run_dir), "source": meta.get("source")}
    keys = ["top1", "top5", "mean_class_accuracy", "num_videos"]
  else:
    encoder, model_config, source = F.load_encoder(config, mesh)
    metrics = knn_report(encoder, config, mesh, model_config)
    checkpoint = source
    keys = [f"recall@{k}" for k in e.recall_ks] + ["knn_accuracy", "num_queries"]
  results = {"job": "evaluate", "mode": e.mode, "metrics": metrics, "checkpoint": checkpoint,
             "config": R.config_dict(config)}
  R.write_results(workdir, results)
  R.headline(f"evaluate[{e.mode}]", metrics, keys)
  return results
