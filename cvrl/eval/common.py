"""Evaluators: what a frozen encoder's features are worth, during pretraining or on a checkpoint.

An evaluator kind K is the module `cvrl.eval.K`, found by name (cvrl.core.discovery): its
entry point `make` is its `Evaluator` subclass, with its own default fields (`FIELDS`), checks, headline
metrics and `evaluate(encoder)`. A new evaluator is one new file in cvrl/eval/. The kinds
here: 'knn' (retrieval recall@k and kNN top-1), 'linear' (a linear classifier on cached
features) and 'multiview' (that classifier under CVRL's multi-view test).

`config.evals` maps a name to a plain dict (or ConfigDict) of fields: `kind`, and any of
the kind's fields (`COMMON_FIELDS` and the kind's `FIELDS`; the rest take their
defaults; an unknown key is an error naming the nearest valid one). `init='random'`
evaluates a random-init encoder of the same architecture instead (the baseline
pretraining has to beat), once, at the end. The pretraining engine runs every evaluator
at step 0, every `every_steps` and at the end. The evaluate job runs them on a
checkpoint, and takes any kind as its `config.evaluate.mode` (`Evaluator.run_job`).

This module also holds what the kinds share: the batches and features of a whole split
and the eval config an evaluator's spec builds.
"""
from __future__ import annotations

import difflib
from typing import Callable

import ml_collections
from ml_collections import config_dict
from flax import nnx

from cvrl.config_lib import eval_fields
from cvrl.core import discovery, parallel
from cvrl.eval import features as F
from cvrl.models import create, extra_frames

PACKAGE = "cvrl.eval"
INITS = ("trained", "random")


def common_fields() -> dict:
  """The fields every kind has: cadence, which encoder, batch and test size."""
  return dict(
      kind="",
      every_steps=1000,    # also at step 0 and at the end of pretraining
      init="trained",      # 'random': a random-init encoder of the same architecture
      batch_size=16,       # global, in videos
      eval_resize=config_dict.placeholder(int),  # None: the pretraining's crop_size
      eval_crop_size=config_dict.placeholder(int))


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
      train=False, batch_size=parallel.local_batch_size(batch_size, mesh),
      seed=int(config.seed), split=split,
      # Pretraining's evaluators use every train video (pretraining ignores label_fraction);
      # elsewhere a labelled train split is the data.label_fraction subset.
      label_fraction=1.0 if config.get("job") == "pretrain" else None)
  return pipeline.iterate(ds)


def split_features(encoder, config, mesh, model_config=None, splits=("train", "eval")):
  """{split: SplitOutputs} of `encoder`'s view-averaged features (config.evaluate's knn
  views), one row per video."""
  e = config.evaluate
  runner = F.ViewRunner(encoder, mesh, reduce="mean", data_config=config.data)
  args = (int(e.knn_clips), int(e.knn_crops), int(e.batch_size), model_config)
  return {s: F.run_split(runner, mesh, split_batches(config, mesh, s, *args)) for s in splits}


# ------------------------------------------------------------------------- evaluators

class Evaluator:
  """One `config.evals` entry: `due(step, total)`, `__call__(encoder, step) -> metrics`.

  A kind's subclass declares FIELDS (its own fields and defaults), `headline` (the
  metrics its log line shows) and `evaluate(encoder)`; it may add `check` (its fields'
  checks), `evaluate_fields` (the config.evaluate fields its spec sets for the shared
  functions) and the evaluate job's `validate_job` / `run_job`.
  """
  FIELDS: dict = {}
  headline: tuple = ()

  def __init__(self, name: str, spec, config, mesh, model_config,
               make_encoder: Callable[[], nnx.Module] | None = None):
    self.name, self.spec, self.mesh = name, spec, mesh
    self.kind = spec.kind
    self.model_config = model_config
    self.make_encoder = make_encoder
    self.seed = int(config.get("seed", 0))
    self.config = eval_config(config, spec, self.evaluate_fields())

  @classmethod
  def defaults(cls, kind: str) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(common_fields(), **cls.FIELDS, kind=kind))

  @classmethod
  def check(cls, name: str, spec) -> None:
    """Raises ValueError on a bad field of `spec` (config.evals.<name>)."""
    check_choice(name, spec, "init", INITS)
    if int(spec.every_steps) < 1:
      raise ValueError(f"config.evals.{name}.every_steps must be >= 1, got {spec.every_steps}")

  def evaluate_fields(self) -> dict:
    """config.evaluate fields this evaluator's spec sets (beside batch_size)."""
    return {}

  def evaluate(self, encoder: nnx.Module) -> dict:
    raise NotImplementedError

  def due(self, step: int, total: int) -> bool:
    if self.spec.init == "random":
      return step == total
    return step == 0 or step == total or step % int(self.spec.every_steps) == 0

  def __call__(self, encoder: nnx.Module, step: int | None = None) -> dict:
    if self.spec.init == "random":
      if self.make_encoder is None:
        raise ValueError(f"evaluator {self.name}: init='random' needs the architecture")
      encoder = create(self.make_encoder, out_shardings=parallel.replicated(self.mesh))
    return self.evaluate(encoder)

  # The evaluate job with config.evaluate.mode = this kind.
  @classmethod
  def validate_job(cls, config) -> None:
    if not config.get("pretrained") and not config.get("random_init"):
      raise ValueError(f"evaluate: mode {config.evaluate.mode!r} needs "
                       "config.pretrained=<checkpoint dir> or config.random_init=True")

  @classmethod
  def run_job(cls, config, mesh, workdir: str) -> dict:
    """{metrics, checkpoint, step, headline}: this kind at its defaults (the batch size
    config.evaluate's) on the encoder of config.pretrained / random_init."""
    del workdir
    encoder, model_config, source = F.load_encoder(config, mesh)
    spec = cls.defaults(config.evaluate.mode)
    spec.batch_size = int(config.evaluate.batch_size)
    metrics = cls(spec.kind, spec, config, mesh, model_config)(encoder)
    return {"metrics": metrics, "checkpoint": source, "step": source.get("step"),
            "headline": cls.headline}


def check_choice(name: str, spec, key: str, choices) -> None:
  if spec[key] not in choices:
    raise ValueError(f"config.evals.{name}.{key} must be one of {list(choices)}, "
                     f"got {spec[key]!r}")


def eval_config(config, spec, evaluate_fields: dict) -> ml_collections.ConfigDict:
  """The `data` / `model` / `evaluate` / `seed` fields the shared evaluation functions
  read, for `spec` on the data of `config` (test at the training crop size unless told
  otherwise); `evaluate_fields`: the kind's."""
  c = ml_collections.ConfigDict()
  c.seed = int(config.get("seed", 0))
  c.data = ml_collections.ConfigDict(config.data.to_dict())
  c.data.eval_resize = int(spec.eval_resize or config.data.crop_size)
  c.data.eval_crop_size = int(spec.eval_crop_size or config.data.crop_size)
  c.model = ml_collections.ConfigDict(config.model.to_dict())
  c.evaluate = eval_fields()
  c.evaluate.update(batch_size=int(spec.batch_size), save_scores=False, **evaluate_fields)
  return c


# ---------------------------------------------------------------------------- registry

def kinds() -> list[str]:
  """The evaluator kinds: the modules of cvrl/eval/ that define `make`."""
  return discovery.names(PACKAGE)


def get(kind, where: str = "kind") -> type[Evaluator]:
  """The Evaluator subclass of kind `kind` (module cvrl/eval/<kind>.py, its `make`);
  `where` names the config field in the error."""
  return discovery.find(PACKAGE, kind, where)


def fields(name: str, spec) -> ml_collections.ConfigDict:
  """The fields of `config.evals.<name>`: its kind's defaults with `spec`'s values."""
  cls = get(spec.get("kind"), f"config.evals.{name}.kind")
  out = cls.defaults(spec["kind"])
  for key in spec.keys():
    if key not in out:
      near = difflib.get_close_matches(key, list(out), n=1)
      hint = f"did you mean {near[0]!r}?" if near else f"valid keys: {sorted(out)}"
      raise ValueError(f"config.evals.{name}: unknown key {key!r} for kind {spec['kind']!r}; "
                       f"{hint}")
  for key, value in spec.items():
    try:
      out[key] = value
    except TypeError as e:  # a value of the wrong type for the kind's default
      raise ValueError(f"config.evals.{name}.{key}: {e}") from None
  return out


def validate(config) -> None:
  """`config.evals` entries: known kinds and keys, each kind's checks."""
  for name, spec in (config.get("evals") or {}).items():
    spec = fields(name, spec)
    get(spec.kind).check(name, spec)


def from_config(config, mesh, model_config, make_encoder=None) -> list[Evaluator]:
  """The evaluators `config.evals` names, in name order."""
  evals = config.get("evals") or {}
  out = []
  for name in sorted(evals):
    spec = fields(name, evals[name])
    out.append(get(spec.kind)(name, spec, config, mesh, model_config, make_encoder))
  return out
