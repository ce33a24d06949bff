"""Evaluators: what a frozen encoder's features are worth, during pretraining or on a checkpoint.

An evaluator kind K is the module `cvrl.eval.K`, found by name (cvrl.core.discovery): its
entry point `make` is its `Evaluator` subclass, whose constructor is its config schema,
`Evaluator(make_encoder, splits, name=..., **fields)`: the encoder maker (for
`init='random'`) and the labelled splits it reads (`Splits`) are given by the job; its
fields are keyword arguments with their defaults and checks in its own module; it
names its headline metrics and implements `evaluate(encoder)`. A new evaluator is one new
file in cvrl/eval/. The kinds here: 'knn' (retrieval recall@k and kNN top-1), 'linear' (a
linear classifier on cached features) and 'multiview' (that classifier under CVRL's
multi-view test).

`config.evals` maps a name to a plain dict (or ConfigDict) of fields: `kind`, and any of
the kind's constructor's fields (the rest take their defaults; an unknown key is an error
naming the nearest valid one); `build` turns an entry into the evaluator once.
`init='random'` evaluates a random-init encoder of the same architecture instead (the
baseline pretraining has to beat), once, at the end. The pretraining engine runs every
evaluator at step 0, every `every_steps` and at the end; the evaluate job runs them on a
checkpoint, or one kind as its `config.evaluate.mode`.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import ml_collections
from flax import nnx

from cvrl.core import discovery, parallel, schema
from cvrl.eval import features as F
from cvrl.models import create

PACKAGE = "cvrl.eval"
INITS = ("trained", "random")
# The constructor's arguments the job gives; every other keyword argument is a field.
RUNTIME = ("self", "make_encoder", "splits", "name")


# ----------------------------------------------------------------------------- splits

@dataclasses.dataclass(frozen=True)
class Splits:
  """The labelled splits an evaluator reads, multi-view and deterministic.

  `data`: the job's config.data (its eval_resize / eval_crop_size size the views); the
  features are computed on the run's mesh; `seed`: the multi-view sampler's;
  `extra_frames`: frames a clip takes beyond data.num_frames for the encoder
  (cvrl.models.extra_frames: 1 for DIF); `label_fraction`: of the train split (None:
  data.label_fraction; pretraining passes 1.0, its evaluators use every train video).
  """
  data: Any
  seed: int = 0
  extra_frames: int = 0
  label_fraction: float | None = None

  def sized(self, resize: int | None, crop: int | None) -> Splits:
    """These splits tested at `resize` / `crop` (None: the data's crop_size)."""
    data = ml_collections.ConfigDict(self.data.to_dict())
    data.eval_resize = int(resize or data.crop_size)
    data.eval_crop_size = int(crop or data.crop_size)
    return dataclasses.replace(self, data=data)

  @property
  def num_classes(self) -> int:
    return F.num_classes(self.data)

  def batches(self, split: str, num_clips: int, num_crops: int, batch_size: int):
    """Host batches of a whole split, padded with mask 0: `num_clips` x `num_crops` views
    of T + extra_frames frames per video; `batch_size` global."""
    data_pipeline = F.pipeline()
    ds = data_pipeline.build_dataset(
        self.data, sampler={"name": "multiview", "num_clips": num_clips,
                            "num_crops": num_crops, "extra_frames": self.extra_frames},
        train=False, batch_size=parallel.local_batch_size(batch_size),
        seed=self.seed, split=split, label_fraction=self.label_fraction)
    return data_pipeline.iterate(ds)

  def features(self, encoder, num_clips: int, num_crops: int, batch_size: int,
               splits=("train", "eval")) -> dict[str, F.SplitOutputs]:
    """{split: SplitOutputs} of `encoder`'s view-averaged features, one row per video."""
    runner = F.ViewRunner(encoder, reduce="mean", data_config=self.data)
    return {s: F.run_split(runner, self.batches(s, num_clips, num_crops, batch_size))
            for s in splits}


# ------------------------------------------------------------------------- evaluators

class Evaluator:
  """One `config.evals` entry: `due(step, total)`, `__call__(encoder, step) -> metrics`.

  A kind's subclass takes its own fields as keyword arguments (defaults and checks in its
  constructor), passes the rest here, declares `headline` (the metrics its log line shows)
  and implements `evaluate(encoder)`. `make_encoder` and `splits` may be None where the
  evaluator is only checked (a config's validation, before any device work).
  """
  headline: tuple = ()

  def __init__(self, make_encoder: Callable[[], nnx.Module] | None, splits: Splits | None, *,
               name: str = "", every_steps: int = 1000, init: str = "trained",
               batch_size: int = 16, eval_resize: int | None = None,
               eval_crop_size: int | None = None):
    """every_steps: also at step 0 and at the end of pretraining; init 'random': a random-init
    encoder of the same architecture; batch_size: global, in videos; eval_resize /
    eval_crop_size: the test views' size (None: the data's crop_size)."""
    self.name, self.make_encoder = name, make_encoder
    check_choice(name, "init", init, INITS)
    if int(every_steps) < 1:
      raise ValueError(f"config.evals.{name}.every_steps must be >= 1, got {every_steps}")
    self.every_steps, self.init, self.batch_size = int(every_steps), init, int(batch_size)
    self.splits = None if splits is None else splits.sized(eval_resize, eval_crop_size)

  def evaluate(self, encoder: nnx.Module) -> dict:
    raise NotImplementedError

  def report(self, encoder: nnx.Module) -> tuple[dict, tuple]:
    """(metrics, headline keys) as the evaluate job's mode reports them."""
    return self.evaluate(encoder), self.headline

  def due(self, step: int, total: int) -> bool:
    if self.init == "random":
      return step == total
    return step == 0 or step == total or step % self.every_steps == 0

  def __call__(self, encoder: nnx.Module, step: int | None = None) -> dict:
    if self.init == "random":
      if self.make_encoder is None:
        raise ValueError(f"evaluator {self.name}: init='random' needs the architecture")
      encoder = create(self.make_encoder, out_shardings=parallel.replicated())
    return self.evaluate(encoder)


def check_choice(name: str, key: str, value, choices) -> None:
  if value not in choices:
    raise ValueError(f"config.evals.{name}.{key} must be one of {list(choices)}, "
                     f"got {value!r}")


# ---------------------------------------------------------------------------- registry

def kinds() -> list[str]:
  """The evaluator kinds: the modules of cvrl/eval/ that define `make`."""
  return discovery.names(PACKAGE)


def get(kind, where: str = "kind") -> type[Evaluator]:
  """The Evaluator subclass of kind `kind` (module cvrl/eval/<kind>.py, its `make`);
  `where` names the config field in the error."""
  return discovery.find(PACKAGE, kind, where)


def defaults(cls: type[Evaluator]) -> ml_collections.ConfigDict:
  """A kind's fields at their defaults (cvrl.core.schema)."""
  return schema.defaults(cls, RUNTIME)


def fields(name: str, spec) -> tuple[type[Evaluator], dict]:
  """(the kind's class, its keyword arguments) of `config.evals.<name>`: its defaults with
  `spec`'s values, typed as the defaults."""
  cls = get(spec.get("kind"), f"config.evals.{name}.kind")
  return cls, schema.fields(cls, RUNTIME, spec, f"config.evals.{name}", "kind")


def build(name: str, spec, make_encoder=None, splits: Splits | None = None) -> Evaluator:
  """The evaluator of `config.evals.<name>` (checked; with make_encoder / splits None it can
  only be checked)."""
  cls, kwargs = fields(name, spec)
  return cls(make_encoder, splits, name=name, **kwargs)


def from_config(evals, make_encoder=None, splits: Splits | None = None) -> list[Evaluator]:
  """The evaluators `evals` (config.evals) names, in name order."""
  evals = evals or {}
  return [build(name, evals[name], make_encoder, splits) for name in sorted(evals)]
