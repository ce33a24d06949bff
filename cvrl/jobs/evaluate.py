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

Any other evaluator kind K (cvrl/eval/K.py, e.g. mode='linear') runs at its defaults on
the encoder of `config.pretrained` (or `random_init`): the mode is found by name
(cvrl.eval.common), so a new evaluator file is a new mode.

With `config.evals` set (as a pretraining config has them), each of those evaluators runs
on the checkpoint's encoder (`config.pretrained`) instead, results under their names.

Evaluation is sharded over every device of every host; padded final batches carry
mask 0 and are dropped, so every video counts exactly once.
"""
from __future__ import annotations

import ml_collections
from flax import nnx

from cvrl.core import parallel
from cvrl.core import paths
from cvrl.core import runtime
from cvrl.engine import clip_shape
from cvrl.jobs import downstream
from cvrl.eval import common
from cvrl.eval import features as F
from cvrl.eval import results as R
from cvrl.models import build_encoder

NEEDS_WORKDIR = True


def validate(config) -> None:
  e = config.evaluate
  downstream.validate_eval_fields(e)
  if config.get("evals"):
    common.validate(config)
    if not config.get("pretrained") and not config.get("random_init"):
      raise ValueError("evaluate: config.evals need config.pretrained=<checkpoint dir> or "
                       "config.random_init=True")
    return
  common.get(e.mode, "config.evaluate.mode").validate_job(config)


@runtime.job  # the job's JAX settings (rbg PRNG); a lost peer -> one line
def run(config, workdir: str) -> dict:
  parallel.maybe_initialize_distributed()
  validate(config)
  shape = clip_shape.resolve(config)  # frames / stride / crop: the checkpoint's unless set
  mesh = parallel.make_mesh()
  paths.makedirs(workdir)
  if config.get("evals"):
    results, headline = _run_evals(config, mesh), None
  else:
    mode = config.evaluate.mode
    out = common.get(mode).run_job(config, mesh, workdir)
    results = {"mode": mode, "metrics": out["metrics"], "checkpoint": out["checkpoint"],
               "step": out["step"]}
    headline = (f"evaluate[{mode}]", out["headline"])
  results.update(job="evaluate", clip_shape=shape, config=R.config_dict(config))
  R.write_results(workdir, results)
  if headline:
    R.headline(headline[0], results["metrics"], headline[1])
  return results


def _run_evals(config, mesh) -> dict:
  """Every `config.evals` evaluator on the checkpoint's encoder, results under its name."""
  encoder, model_config, source = F.load_encoder(config, mesh)
  shaped = ml_collections.ConfigDict(config.to_dict())
  shaped.model = ml_collections.ConfigDict(model_config.to_dict())
  make = lambda: build_encoder(model_config, nnx.Rngs(int(config.seed)))
  metrics, evals = {}, {}
  for ev in common.from_config(shaped, mesh, model_config, make):
    evals[ev.name] = ev(encoder)
    metrics.update({f"{ev.name}/{k}": v for k, v in evals[ev.name].items()})
    R.headline(f"evaluate[{ev.name}]", evals[ev.name], ev.headline)
  return {"mode": "evals", "evals": evals, "metrics": metrics, "checkpoint": source,
          "step": source.get("step")}
