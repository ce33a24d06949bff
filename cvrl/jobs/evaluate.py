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

import dataclasses
from typing import Any

import jax
import ml_collections
from flax import nnx

from cvrl import config_lib
from cvrl.core import parallel
from cvrl.core import paths
from cvrl.core import runtime
from cvrl.data import sources
from cvrl.data.config import TEST_FIELDS
from cvrl.engine import clip_shape
from cvrl.eval import classifier_io
from cvrl.eval import common
from cvrl.eval import features as F
from cvrl.eval import multiview
from cvrl.eval import results as R
from cvrl.models import build_encoder, extra_frames

NEEDS_WORKDIR = True


@dataclasses.dataclass(frozen=True)
class Evaluate:
  """What the job takes of its config, parsed and checked once (`parse`): the mode, the
  evaluators of config.evals (None: the mode), the encoder (`config_lib.encoder_args`),
  config.data, the seed, the multi-view test and the classifier's run_dir, the mode's
  evaluator class (another mode than multiview, without config.evals; else None) and the
  fields config.evaluate gives it (`_mode_fields`), and the config's record
  (results.json's)."""
  mode: str
  evals: Any
  encoder: dict
  data: Any
  seed: int
  test: multiview.Test
  run_dir: str
  evaluator: type[common.Evaluator] | None
  mode_fields: dict
  record: dict

  def shaped(self, shape: clip_shape.ClipShape) -> Evaluate:
    """This job on clips of `shape`: its data and record with the shape applied."""
    data, record = shape.applied(self.data, self.record)
    return dataclasses.replace(self, data=data, record=record)


def parse(config) -> Evaluate:
  """The job's typed arguments, checked (before anything compiles)."""
  e = config.evaluate
  F.validate_test(e)
  evals = config.get("evals") or None  # a pretraining config's section, if it has one
  by_mode = not evals and e.mode != "multiview"
  job = Evaluate(e.mode, evals, config_lib.encoder_args(config), config.data, int(config.seed),
                 multiview.Test.of(e), e.run_dir,
                 common.get(e.mode, "config.evaluate.mode") if by_mode else None,
                 _mode_fields(e), config_lib.as_dict(config))
  if job.evals:
    common.from_config(job.evals)  # kinds, keys and each kind's checks
    _needs_encoder(job.encoder, "evaluate: config.evals need")
  elif job.mode == "multiview":
    _check_run_dir(job.run_dir)
  else:
    _mode_evaluator(job)
    _needs_encoder(job.encoder, f"evaluate: mode {job.mode!r} needs")
  return job


def _needs_encoder(source: dict, what: str) -> None:
  """`source` (`config_lib.encoder_args`) names a checkpoint or a random init."""
  if not source["pretrained"] and not source["random_init"]:
    raise ValueError(f"{what} config.pretrained=<checkpoint dir> or config.random_init=True")


def _check_run_dir(run_dir: str) -> None:
  if not run_dir:
    raise ValueError("evaluate: mode 'multiview' needs config.evaluate.run_dir (a probe or "
                     "finetune workdir)")
  if not paths.as_path(paths.join(run_dir, classifier_io.META)).exists():
    raise FileNotFoundError(f"evaluate: {run_dir}/{classifier_io.META} not found; run_dir must "
                            "be the workdir of a finished probe or finetune job")


def _mode_fields(e) -> dict:
  """What `e` (config.evaluate) gives an evaluator mode: its batch_size, knn_clips x
  knn_crops views and the knn_* fields (None: the kind's default)."""
  return dict(batch_size=e.batch_size, num_clips=e.knn_clips, num_crops=e.knn_crops,
              knn_k=e.knn_k, knn_vote=e.knn_vote, knn_temperature=e.knn_temperature,
              recall_ks=e.recall_ks)


def _mode_evaluator(job: Evaluate, splits: common.Splits | None = None) -> common.Evaluator:
  """The evaluator of kind `job.mode` on `splits` (None: built to check its fields): the
  fields of `job.mode_fields` it takes, tested at `job.data`'s eval sizes (None: its
  defaults)."""
  given = {**job.mode_fields, **{k: job.data[k] for k in TEST_FIELDS}}
  takes = common.defaults(job.evaluator)
  return job.evaluator(None, splits, name=job.mode,
                       **{k: v for k, v in given.items() if k in takes and v is not None})


def _splits_read(mode: str, evals) -> list[str]:
  """The data splits the job reads: the test split; the train split too for an evaluator
  (kNN queries it, the linear evaluator fits on it)."""
  return ["eval"] if mode == "multiview" and not evals else ["train", "eval"]


def _splits(job: Evaluate, extra: int) -> common.Splits:
  """The splits on the clips an encoder takes: T + `extra` frames (`extra_frames`)."""
  return common.Splits(job.data, job.seed, extra)


def run(job: Evaluate, workdir: str) -> dict:
  """Evaluates as a parsed config says (`parse`: cvrl.main checks it before any work)."""
  # No training loop reports to the job's record: a lost peer is reported without a step.
  with runtime.job():
    parallel.maybe_initialize_distributed()
    sources.prepare(job.data, _splits_read(job.mode, job.evals))
    shape = clip_shape.resolved(job.data, job.encoder,  # the checkpoint's frames / stride / crop
                                job.run_dir if job.mode == "multiview" else "")
    job = job.shaped(shape)
    paths.makedirs(workdir)
    with jax.set_mesh(parallel.make_mesh()):  # the run's mesh
      if job.evals:
        results, headline = _run_evals(job), None
      else:
        out = _test_classifier(job, workdir) if job.mode == "multiview" else _run_mode(job)
        results = {"mode": job.mode, "metrics": out["metrics"], "checkpoint": out["checkpoint"],
                   "step": out["step"]}
        headline = (f"evaluate[{job.mode}]", out["headline"])
    results.update(job="evaluate", clip_shape=shape.as_dict(), config=job.record)
    R.write_results(workdir, results)
    if headline:
      R.headline(headline[0], results["metrics"], headline[1])
    return results


def _test_classifier(job: Evaluate, workdir: str) -> dict:
  """The multi-view test of `job.run_dir`'s classifier; files in workdir."""
  model, meta = classifier_io.load_classifier(job.run_dir)
  model_config = ml_collections.ConfigDict(meta["model"])  # the saved encoder's input
  metrics = multiview.evaluate_classifier(model, _splits(job, extra_frames(model_config)),
                                          workdir, job.test)
  source = meta.get("source")
  return {"metrics": metrics, "checkpoint": {"run_dir": str(job.run_dir), "source": source},
          "step": (source or {}).get("step"),
          "headline": ["top1", "top5", "mean_class_accuracy", "num_videos"]}


def _run_mode(job: Evaluate) -> dict:
  """The `job.mode` evaluator on the encoder of config.pretrained / random_init."""
  encoder, model_config, source = F.load_encoder(**job.encoder)
  splits = _splits(job, extra_frames(model_config))
  metrics, headline = _mode_evaluator(job, splits).report(encoder)
  return {"metrics": metrics, "checkpoint": source, "step": source.get("step"),
          "headline": list(headline)}


def _run_evals(job: Evaluate) -> dict:
  """Every `config.evals` evaluator on the checkpoint's encoder, results under its name."""
  encoder, model_config, source = F.load_encoder(**job.encoder)
  make = lambda: build_encoder(model_config, nnx.Rngs(job.seed))
  metrics, evals = {}, {}
  for ev in common.from_config(job.evals, make, _splits(job, extra_frames(model_config))):
    evals[ev.name] = ev(encoder)
    metrics.update({f"{ev.name}/{k}": v for k, v in evals[ev.name].items()})
    R.headline(f"evaluate[{ev.name}]", evals[ev.name], ev.headline)
  return {"mode": "evals", "evals": evals, "metrics": metrics, "checkpoint": source,
          "step": source.get("step")}
