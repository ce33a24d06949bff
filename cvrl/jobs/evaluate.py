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
(`knn_vote`: 'weighted' by exp(sim / T), or 'majority'): the 'knn' evaluator
(cvrl/eval/knn.py) built from config.evaluate's knn_* fields (None: the evaluator's
defaults).

Any other evaluator kind K (cvrl/eval/K.py, e.g. mode='linear') runs the same way on the
encoder of `config.pretrained` (or `random_init`), with the batch size, the knn_clips x
knn_crops views and the knn_* fields it takes: the mode is found by name
(cvrl.eval.common), so a new evaluator file is a new mode.

With `config.evals` set (as a pretraining config has them), each of those evaluators runs
on the checkpoint's encoder (`config.pretrained`) instead, results under their names.

Evaluation is sharded over every device of every host; padded final batches carry
mask 0 and are dropped, so every video counts exactly once.
"""
from __future__ import annotations

import jax
import ml_collections
from flax import nnx

from cvrl import config_lib
from cvrl.core import parallel
from cvrl.core import paths
from cvrl.core import runtime
from cvrl.data import sources
from cvrl.engine import clip_shape
from cvrl.eval import classifier_io
from cvrl.eval import common
from cvrl.eval import features as F
from cvrl.eval import multiview
from cvrl.eval import results as R
from cvrl.models import build_encoder, extra_frames

NEEDS_WORKDIR = True


def validate(config) -> None:
  e = config.evaluate
  F.validate_test(e)
  if config.get("evals"):
    common.from_config(config.evals)  # kinds, keys and each kind's checks
    _needs_encoder(config, "evaluate: config.evals need")
  elif e.mode == "multiview":
    _check_run_dir(e.run_dir)
  else:
    _mode_evaluator(config)
    _needs_encoder(config, f"evaluate: mode {e.mode!r} needs")


def _needs_encoder(config, what: str) -> None:
  if not config.get("pretrained") and not config.get("random_init"):
    raise ValueError(f"{what} config.pretrained=<checkpoint dir> or config.random_init=True")


def _check_run_dir(run_dir: str) -> None:
  if not run_dir:
    raise ValueError("evaluate: mode 'multiview' needs config.evaluate.run_dir (a probe or "
                     "finetune workdir)")
  if not paths.as_path(paths.join(run_dir, classifier_io.META)).exists():
    raise FileNotFoundError(f"evaluate: {run_dir}/{classifier_io.META} not found; run_dir must "
                            "be the workdir of a finished probe or finetune job")


def _mode_evaluator(config, splits: common.Splits | None = None) -> common.Evaluator:
  """The evaluator of kind config.evaluate.mode, from config.evaluate: its batch_size,
  knn_clips x knn_crops views and the knn_* fields the kind takes (None: the kind's
  default), tested at config.data's eval sizes."""
  e, data = config.evaluate, config.data
  cls = common.get(e.mode, "config.evaluate.mode")
  given = dict(batch_size=e.batch_size, num_clips=e.knn_clips, num_crops=e.knn_crops,
               knn_k=e.knn_k, knn_vote=e.knn_vote, knn_temperature=e.knn_temperature,
               recall_ks=e.recall_ks, eval_resize=data.get("eval_resize"),
               eval_crop_size=data.get("eval_crop_size"))
  takes = common.defaults(cls)
  return cls(None, splits, name=e.mode,
             **{k: v for k, v in given.items() if k in takes and v is not None})


def _splits_read(mode: str, evals) -> list[str]:
  """The data splits the job reads: the test split; the train split too for an evaluator
  (kNN queries it, the linear evaluator fits on it)."""
  return ["eval"] if mode == "multiview" and not evals else ["train", "eval"]


def _splits(config, model_config) -> common.Splits:
  return common.Splits(config.data, int(config.seed), extra_frames(model_config))


def run(config, workdir: str) -> dict:
  # No training loop reports to the job's record: a lost peer is reported without a step.
  with runtime.job():
    parallel.maybe_initialize_distributed()
    sources.prepare(config.data, _splits_read(config.evaluate.mode, config.get("evals")))
    shape, config = clip_shape.resolved(config)  # the checkpoint's frames / stride / crop
    paths.makedirs(workdir)
    with jax.set_mesh(parallel.make_mesh()):  # the run's mesh
      if config.get("evals"):
        results, headline = _run_evals(config), None
      else:
        mode = config.evaluate.mode
        out = _test_classifier(config, workdir) if mode == "multiview" else _run_mode(config)
        results = {"mode": mode, "metrics": out["metrics"], "checkpoint": out["checkpoint"],
                   "step": out["step"]}
        headline = (f"evaluate[{mode}]", out["headline"])
    results.update(job="evaluate", clip_shape=shape.as_dict(), config=config_lib.as_dict(config))
    R.write_results(workdir, results)
    if headline:
      R.headline(headline[0], results["metrics"], headline[1])
    return results


def _test_classifier(config, workdir: str) -> dict:
  """The multi-view test of config.evaluate.run_dir's classifier; files in workdir."""
  run_dir = config.evaluate.run_dir
  model, meta = classifier_io.load_classifier(run_dir)
  model_config = ml_collections.ConfigDict(meta["model"])  # the saved encoder's input
  metrics = multiview.evaluate_classifier(model, _splits(config, model_config), workdir,
                                          multiview.Test.of(config.evaluate))
  source = meta.get("source")
  return {"metrics": metrics, "checkpoint": {"run_dir": str(run_dir), "source": source},
          "step": (source or {}).get("step"),
          "headline": ["top1", "top5", "mean_class_accuracy", "num_videos"]}


def _run_mode(config) -> dict:
  """The config.evaluate.mode evaluator on the encoder of config.pretrained / random_init."""
  encoder, model_config, source = F.load_encoder(**config_lib.encoder_args(config))
  metrics, headline = _mode_evaluator(config, _splits(config, model_config)).report(encoder)
  return {"metrics": metrics, "checkpoint": source, "step": source.get("step"),
          "headline": list(headline)}


def _run_evals(config) -> dict:
  """Every `config.evals` evaluator on the checkpoint's encoder, results under its name."""
  encoder, model_config, source = F.load_encoder(**config_lib.encoder_args(config))
  make = lambda: build_encoder(model_config, nnx.Rngs(int(config.seed)))
  metrics, evals = {}, {}
  for ev in common.from_config(config.evals, make, _splits(config, model_config)):
    evals[ev.name] = ev(encoder)
    metrics.update({f"{ev.name}/{k}": v for k, v in evals[ev.name].items()})
    R.headline(f"evaluate[{ev.name}]", evals[ev.name], ev.headline)
  return {"mode": "evals", "evals": evals, "metrics": metrics, "checkpoint": source,
          "step": source.get("step")}
