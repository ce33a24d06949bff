"""Evaluators: what a frozen encoder's features are worth, during pretraining or on a checkpoint.

`config.evals` maps a name to `evaluator_fields(kind, ...)`:
- 'knn': backbone features averaged over `num_clips` x `num_crops` views, L2-normalised;
  each video of the test split queries the labelled train split by cosine similarity:
  retrieval recall@k (TCLR's protocol, Dave et al., CVIU 2022) and weighted kNN top-1
  (Wu et al. 2018);
- 'linear': a linear classifier (L2-normalised features, CVRL's probe) trained on the
  cached train-split features, top-1 / top-5 on the test split's;
- 'multiview': the same linear classifier, then CVRL's multi-view test on the test
  split (the softmax of every view averaged per video).
`init='random'` evaluates a random-init encoder of the same architecture instead (the
baseline pretraining has to beat), once, at the end. The pretraining engine runs every
evaluator at step 0, every `every_steps` and at the end.

This module also holds the multi-view test and the kNN report the probe, finetune and
evaluate jobs share.
"""
from __future__ import annotations

import csv
import importlib
import os
from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
from ml_collections import config_dict
import numpy as np
from flax import nnx

from cvrl.models import create, extra_frames
from cvrl.models.heads import LinearClassifier
from cvrl.eval import features as F
from cvrl.engine import optim
from cvrl.eval import retrieval
from cvrl.eval import scores
from cvrl.config_lib import eval_fields

KINDS = ("knn", "linear", "multiview")
INITS = ("trained", "random")


# ---------------------------------------------------------------------------- batches

def split_batches(config, mesh, split: str, num_clips: int, num_crops: int, batch_size: int,
                  model_config=None):
  """Host batches of a whole split, multi-view, deterministic, padded with mask 0: clips
  of the frames the encoder of `model_config` takes (None: config.model; T + 1 for DIF)."""
  from cvrl.data import pipeline  # pylint: disable=import-outside-toplevel
  model_config = config.model if model_config is None else model_config
  ds = pipeline.build_dataset(
      config.data, sampler={"name": "multiview", "num_clips": num_clips, "num_crops": num_crops,
                            "extra_frames": extra_frames(model_config)},
      train=False, batch_size=F.local_batch_size(batch_size, mesh), seed=int(config.seed),
      split=split,
      # Pretraining's evaluators use every train video (pretraining ignores label_fraction);
      # elsewhere a labelled train split is the data.label_fraction subset.
      label_fraction=1.0 if config.get("job") == "pretrain" else None)
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

def split_features(encoder, config, mesh, model_config=None, splits=("train", "eval")):
  """{split: SplitOutputs} of `encoder`'s view-averaged features (config.evaluate's knn
  views), one row per video."""
  e = config.evaluate
  runner = F.ViewRunner(encoder, mesh, reduce="mean", data_config=config.data)
  args = (int(e.knn_clips), int(e.knn_crops), int(e.batch_size), model_config)
  return {s: F.run_split(runner, mesh, split_batches(config, mesh, s, *args)) for s in splits}


def knn_report(encoder, config, mesh, model_config=None) -> dict:
  """Retrieval recall@k and kNN accuracy of `encoder`'s clip-averaged features
  (`model_config`: the encoder's, None: config.model)."""
  e = config.evaluate
  feats = split_features(encoder, config, mesh, model_config)
  train, test = feats["train"], feats["eval"]
  metrics = retrieval.knn_evaluate(
      train.values, train.labels, test.values, test.labels, num_classes=F.num_classes(config.data),
      ks=tuple(int(k) for k in e.recall_ks), knn_k=int(e.knn_k), vote=e.knn_vote,
      temperature=float(e.knn_temperature))
  metrics["views_per_video"] = int(e.knn_clips) * int(e.knn_crops)
  metrics["seconds"] = train.seconds + test.seconds
  return metrics


# ------------------------------------------------------------------ linear on features

def train_linear(train: F.SplitOutputs, num_classes: int, spec, seed: int) -> LinearClassifier:
  """A LinearClassifier fit to cached features by cvrl.engine.optim's SGD (warm-up + cosine),
  `spec.linear_steps` minibatches of `spec.linear_batch` in seeded permutations."""
  head = LinearClassifier(train.values.shape[1], num_classes, normalize=bool(spec.normalize),
                          rngs=nnx.Rngs(seed + 1))
  o = ml_collections.ConfigDict(dict(
      name="sgd", base_lr=float(spec.linear_lr), base_batch_size=int(spec.linear_batch),
      momentum=0.9, nesterov=False, weight_decay=0.0, schedule="cosine"))
  steps = int(spec.linear_steps)
  tx, _, _ = optim.make(o, int(spec.linear_batch), steps, max(1, steps // 10))
  graphdef, params = nnx.split(head)

  @jax.jit
  def step(params, opt_state, x, y):
    def loss_fn(p):
      logits = nnx.merge(graphdef, p)(x)
      return jnp.mean(-jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], 1))
    grads = jax.grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return jax.tree.map(lambda a, b: a + b, params, updates), opt_state

  opt_state = tx.init(params)
  rng = np.random.default_rng([seed, 0x11EA])
  x, y = np.asarray(train.values, np.float32), np.asarray(train.labels, np.int32)
  batch = min(int(spec.linear_batch), len(y))
  order = np.empty([0], np.int64)
  for _ in range(steps):
    while len(order) < batch:
      order = np.concatenate([order, rng.permutation(len(y))])
    take, order = order[:batch], order[batch:]
    params, opt_state = step(params, opt_state, x[take], y[take])
  return nnx.merge(graphdef, params)


# ------------------------------------------------------------------------- evaluators

def evaluator_fields(kind: str, **overrides) -> ml_collections.ConfigDict:
  """One entry of `config.evals`: kind, cadence, which encoder, and the kind's options."""
  c = ml_collections.ConfigDict(dict(
      kind=kind,
      every_steps=1000,    # also at step 0 and at the end of pretraining
      init="trained",      # 'random': a random-init encoder of the same architecture
      num_clips=2, num_crops=1,  # views per video whose features are averaged
      batch_size=16,       # global, in videos
      eval_resize=config_dict.placeholder(int), eval_crop_size=config_dict.placeholder(int),  # None: the pretraining's crop_size
      knn_k=20, knn_vote="weighted", knn_temperature=0.07, recall_ks=(1, 5),
      normalize=True,      # linear / multiview: L2-normalised features (CVRL)
      linear_steps=300, linear_batch=32, linear_lr=1.0,
      test_clips=10, test_crops=3,  # multiview: the test's views
  ))
  c.update(overrides)
  return c


def validate(config) -> None:
  """`config.evals` entries: known kinds, inits and knn votes, positive cadences."""
  for name, spec in (config.get("evals") or {}).items():
    if spec.get("kind") not in KINDS:
      raise ValueError(f"config.evals.{name}.kind must be one of {list(KINDS)}, "
                       f"got {spec.get('kind')!r}")
    if spec.get("init", "trained") not in INITS:
      raise ValueError(f"config.evals.{name}.init must be one of {list(INITS)}, "
                       f"got {spec.get('init')!r}")
    if int(spec.every_steps) < 1:
      raise ValueError(f"config.evals.{name}.every_steps must be >= 1, got {spec.every_steps}")
    if spec.knn_vote not in retrieval.VOTES:
      raise ValueError(f"config.evals.{name}.knn_vote must be one of {list(retrieval.VOTES)}")
    if spec.num_crops not in (1, 3) or spec.test_crops not in (1, 3):
      raise ValueError(f"config.evals.{name}: num_crops and test_crops must be 1 or 3")


def eval_config(config, spec) -> ml_collections.ConfigDict:
  """The `data` / `evaluate` / `seed` fields the shared evaluation functions read, for
  `spec` on the data of `config` (test at the training crop size unless told otherwise)."""
  c = ml_collections.ConfigDict()
  c.seed = int(config.get("seed", 0))
  c.data = ml_collections.ConfigDict(config.data.to_dict())
  c.data.eval_resize = int(spec.eval_resize or config.data.crop_size)
  c.data.eval_crop_size = int(spec.eval_crop_size or config.data.crop_size)
  c.model = ml_collections.ConfigDict(config.model.to_dict())
  c.evaluate = eval_fields()
  c.evaluate.update(knn_clips=int(spec.num_clips), knn_crops=int(spec.num_crops),
                    batch_size=int(spec.batch_size), knn_k=int(spec.knn_k),
                    knn_vote=spec.knn_vote, knn_temperature=float(spec.knn_temperature),
                    recall_ks=tuple(int(k) for k in spec.recall_ks),
                    num_clips=int(spec.test_clips), num_crops=int(spec.test_crops),
                    save_scores=False)
  return c


class Evaluator:
  """One `config.evals` entry: `due(step, total)`, `__call__(encoder, step) -> metrics`."""

  def __init__(self, name: str, spec, config, mesh, model_config,
               make_encoder: Callable[[], nnx.Module] | None = None):
    self.name, self.spec, self.mesh = name, spec, mesh
    self.kind = spec.kind
    self.config = eval_config(config, spec)
    self.model_config = model_config
    self.make_encoder = make_encoder
    self.seed = int(config.get("seed", 0))
    self.headline = {"knn": ("knn_accuracy", "recall@1"), "linear": ("top1", "top5"),
                     "multiview": ("top1", "top5")}[self.kind]

  def due(self, step: int, total: int) -> bool:
    if self.spec.init == "random":
      return step == total
    return step == 0 or step == total or step % int(self.spec.every_steps) == 0

  def __call__(self, encoder: nnx.Module, step: int | None = None) -> dict:
    if self.spec.init == "random":
      if self.make_encoder is None:
        raise ValueError(f"evaluator {self.name}: init='random' needs the architecture")
      encoder = create(self.make_encoder, out_shardings=F.replicated(self.mesh))
    if self.kind == "knn":
      out = knn_report(encoder, self.config, self.mesh, self.model_config)
      return {k: v for k, v in out.items() if k != "seconds"}
    classes = F.num_classes(self.config.data)
    feats = split_features(encoder, self.config, self.mesh, self.model_config)
    head = train_linear(feats["train"], classes, self.spec, self.seed)
    if self.kind == "linear":
      logits = np.asarray(nnx.jit(lambda h, x: h(x))(head, feats["eval"].values))
      out, _ = scores.classification_metrics(scores.softmax(logits), feats["eval"].labels,
                                             classes)
      return out
    model = F.VideoClassifier(encoder, F.place(self.mesh, head))
    out = evaluate_classifier(model, self.config, self.mesh, None, self.model_config)
    return {k: v for k, v in out.items() if k != "seconds"}


def from_config(config, mesh, model_config, make_encoder=None) -> list[Evaluator]:
  """The evaluators `config.evals` names, in name order."""
  evals = config.get("evals") or {}
  return [Evaluator(name, evals[name], config, mesh, model_config, make_encoder)
          for name in sorted(evals)]

