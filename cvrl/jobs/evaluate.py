"""The evaluate job: multi-view testing of a trained classifier, kNN retrieval, or any
`config.evals` evaluator, on a checkpoint.

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

With `config.evals` set (as a pretraining config has them), each of those evaluators runs
on the checkpoint's encoder (`config.pretrained`) instead, results under their names.

Evaluation is sharded over every device of every host; padded final batches carry
mask 0 and are dropped, so every video counts exactly once.
"""
from __future__ import annotations

import os

import ml_collections
from flax import nnx

from cvrl.core import parallel
from cvrl.core import runtime
from cvrl.models import build_encoder
from cvrl import config_lib
from cvrl.eval import classifier_io
from cvrl.data import clip_shape
from cvrl.eval import evaluators
from cvrl.eval import features as F
from cvrl.eval import results as R
from cvrl.eval.evaluators import (align_scores, classification_report,  # noqa: F401
                                   evaluate_classifier, fuse, fusion_function, knn_report,
                                   load_scores, split_batches)

NEEDS_WORKDIR = True
MODES = config_lib.EVAL_MODES
base_config = config_lib.evaluate_config


def validate(config) -> None:
  e = config.evaluate
  config_lib.validate_eval_fields(e)
  if config.get("evals"):
    evaluators.validate(config)
    if not config.get("pretrained") and not config.get("random_init"):
      raise ValueError("evaluate: config.evals need config.pretrained=<checkpoint dir> or "
                       "config.random_init=True")
    return
  if e.mode == "multiview" and not e.run_dir:
    raise ValueError("evaluate: mode 'multiview' needs config.evaluate.run_dir (a probe or "
                     "finetune workdir)")
  if e.mode == "multiview" and not os.path.exists(os.path.join(e.run_dir, "model.json")):
    raise FileNotFoundError(f"evaluate: {e.run_dir}/model.json not found; run_dir must be the "
                            "workdir of a finished probe or finetune job")
  if e.mode == "knn" and not config.get("pretrained") and not config.get("random_init"):
    raise ValueError("evaluate: mode 'knn' needs config.pretrained=<checkpoint dir> or "
                     "config.random_init=True")


@runtime.job  # the job's JAX settings (rbg PRNG); a lost peer -> one line
def run(config, workdir: str) -> dict:
  parallel.maybe_initialize_distributed()
  validate(config)
  shape = clip_shape.resolve(config)  # frames / stride / crop: the checkpoint's unless set
  mesh = F.make_mesh()
  os.makedirs(workdir, exist_ok=True)
  e = config.evaluate
  if config.get("evals"):
    encoder, model_config, source = F.load_encoder(config, mesh)
    shaped = ml_collections.ConfigDict(config.to_dict())
    shaped.model = ml_collections.ConfigDict(model_config.to_dict())
    make = lambda: build_encoder(model_config, nnx.Rngs(int(config.seed)))
    metrics, evals = {}, {}
    for ev in evaluators.from_config(shaped, mesh, model_config, make):
      evals[ev.name] = ev(encoder)
      metrics.update({f"{ev.name}/{k}": v for k, v in evals[ev.name].items()})
      R.headline(f"evaluate[{ev.name}]", evals[ev.name], ev.headline)
    results = {"job": "evaluate", "mode": "evals", "evals": evals, "metrics": metrics,
               "checkpoint": source, "step": source.get("step"), "clip_shape": shape,
               "config": R.config_dict(config)}
    R.write_results(workdir, results)
    return results
  if e.mode == "multiview":
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
  step = ((checkpoint.get("source") or {}) if e.mode == "multiview" else source).get("step")
  results = {"job": "evaluate", "mode": e.mode, "metrics": metrics, "checkpoint": checkpoint,
             "step": step, "clip_shape": shape, "config": R.config_dict(config)}
  R.write_results(workdir, results)
  R.headline(f"evaluate[{e.mode}]", metrics, keys)
  return results
