"""What the downstream jobs share: the encoder they start from, and running it over a split.

`load_encoder` gives the backbone of a pretraining checkpoint (rebuilt from the config
stored in it) or a random one of the configured architecture (the baseline).
`ViewRunner` runs a model over multi-view batches sharded over every device of every
host and reduces the views of each video on device; `run_split` drives it over an
iterable of host batches and returns one row per real video (padding rows, mask 0, are
dropped after the hosts' rows are gathered), so each video counts exactly once.
"""
from __future__ import annotations

import dataclasses
import functools
import time
from typing import Callable, Iterable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import PartitionSpec as P

from cvrl import config_lib
from cvrl import objectives
from cvrl.core import parallel
from cvrl.data import device, sources, subset
from cvrl.engine import checkpoint
from cvrl.engine import loop as engine
from cvrl.engine import optim
from cvrl.engine import tasks
from cvrl.models import build_encoder, create
from cvrl.models.heads import LinearClassifier

REDUCTIONS = ("mean", "softmax_mean")


# ----------------------------------------------------------------------- global batches
# The mesh is the run's (cvrl.core.parallel.run_mesh: the job's jax.set_mesh), Mesh(('data',))
# over every device of every host.

# What of a host batch goes to the devices to make the clips: uint8 (or float32) video
# and, for augmented training views, the photometric parameters (cvrl.data.device).
CLIP_KEYS = ("video", device.PHOTOMETRIC_KEY)


def clips(inputs: dict, data_config) -> jax.Array:
  """float32 [B, V, T, H, W, 3] in [0, 1] inside a jitted step: uint8 scaled, the
  photometric ops applied on device (cvrl.data.device.finish_batch)."""
  return device.finish_batch(dict(inputs), data_config)["video"]


def frozen_config(data_config):
  """A hashable copy of config.data (None stays None), to key cached compilations."""
  return None if data_config is None else ml_collections.FrozenConfigDict(data_config)


def to_host_local(x: jax.Array) -> np.ndarray:
  """This host's rows of a global array sharded over its mesh's 'data' axis."""
  if jax.process_count() == 1:
    return np.asarray(x)
  return np.asarray(multihost_utils.global_array_to_host_local_array(
      x, x.sharding.mesh, P(parallel.DATA_AXIS)))


def gather_hosts(x: np.ndarray) -> np.ndarray:
  """Every host's rows, concatenated in process order (identity on one host)."""
  if jax.process_count() == 1:
    return np.asarray(x)
  return np.asarray(multihost_utils.process_allgather(np.asarray(x), tiled=True))


def place(module: nnx.Module) -> nnx.Module:
  """Replicate a module's variables over the run's mesh (jit refuses mixed placements)."""
  graphdef, state = nnx.split(module)
  return nnx.merge(graphdef, jax.device_put(state, parallel.replicated()))


# --------------------------------------------------------------------------- the encoder

def load_encoder(*, pretrained: str, pretrained_step: int | None, random_init: bool,
                 model: ml_collections.ConfigDict, seed: int
                 ) -> tuple[nnx.Module, ml_collections.ConfigDict, dict]:
  """(encoder, its model config, provenance) for a downstream job, replicated over the
  run's mesh; the arguments are its config's (`config_lib.encoder_args`).

  The checkpoint `pretrained` (at `pretrained_step`, None: the newest that restores)
  unless `random_init`: the architecture then comes from the config stored in the
  checkpoint, as its objective built the encoder (`Objective.encoder_config`: e.g.
  input='dif' for a DIF 3DRotNet). Random init builds `model` (config.model) with `seed`,
  the baseline a pretrained encoder has to beat. Jobs sample clips of T +
  `cvrl.models.extra_frames(model config)` frames for it.
  """
  if random_init or not pretrained:
    if not random_init:
      raise ValueError("set config.pretrained=<checkpoint dir> or config.random_init=True")
    encoder = create(lambda: build_encoder(model, nnx.Rngs(seed)),
                     out_shardings=parallel.replicated())
    return encoder, model, {"init": "random", "checkpoint": None, "seed": seed}
  # The step itself (None: the newest that restores), so that results name the checkpoint.
  step, pre_config, restored = checkpoint.restore_pretrained(
      pretrained, pretrained_step, sharding=parallel.replicated())
  model_config = objectives.method(**config_lib.method_args(pre_config), stored=True).encoder_config()
  return restored.encoder, model_config, {"init": "pretrained", "checkpoint": str(pretrained),
                                          "step": int(step)}


def encoder_source(**source):
  """(make_encoder, encoder_init, model config, provenance) of a downstream job's encoder
  (`source`: `load_encoder`'s arguments).

  `pretrained`: the checkpoint's encoder (architecture from its stored config) becomes
  `encoder_init`; `random_init`: `model` built with `seed` (encoder_init None: the
  engine's fresh init is that encoder).
  """
  seed = source["seed"]
  if source["random_init"]:
    model_config = source["model"]
    return (lambda: build_encoder(model_config, nnx.Rngs(seed)), None, model_config,
            {"init": "random", "checkpoint": None, "seed": seed})
  encoder, model_config, provenance = load_encoder(**source)
  return lambda: build_encoder(model_config, nnx.Rngs(seed)), encoder, model_config, provenance


def pipeline():
  """cvrl.data.pipeline, imported on first use: it brings TensorFlow, which the pretraining
  job and its train step never import (tests/test_no_tensorflow.py)."""
  from cvrl.data import pipeline as module  # pylint: disable=import-outside-toplevel
  return module


def train_stream(data, *, batch_size: int, seed: int, extra_frames: int
                 ) -> Callable[..., Iterable[dict]]:
  """start_step -> this host's augmented training batches of `data` (config.data) from that
  step, `batch_size` global over the run's mesh; clips of T + `extra_frames` frames (1 for a
  DIF encoder)."""
  local = parallel.local_batch_size(int(batch_size))
  sampler = {"name": "single", "extra_frames": int(extra_frames)}
  data_pipeline = pipeline()

  def batches(start_step: int = 0):
    ds = data_pipeline.build_dataset(data, sampler=sampler, train=True, batch_size=local,
                                seed=int(seed), start_step=int(start_step),
                                process_index=jax.process_index(),
                                process_count=jax.process_count())
    return data_pipeline.iterate(ds, batches.stats)
  # The stream's skipped-record counts (bad labels under data.bad_label='skip', ...): the
  # engine logs them as data_* like pretraining's.
  batches.stats = data_pipeline.PipelineStats()
  return batches


def make_head(num_features: int, num_classes: int, *, normalize: bool, dropout: float, seed: int
              ) -> LinearClassifier:
  """A LinearClassifier replicated over the run's mesh."""
  return create(lambda: LinearClassifier(num_features, num_classes, normalize=normalize,
                                         dropout=dropout, rngs=nnx.Rngs(seed)),
                out_shardings=parallel.replicated())


def frozen(module: nnx.Module) -> nnx.Module:
  """The module in inference mode (BN on running statistics, no dropout)."""
  module.eval()
  return module


# ------------------------------------------------------------------------ running splits

class ViewRunner:
  """jit'd `module` over host batches of [B, V, T, H, W, 3] video -> [B, D], reduced over
  the V views.

  The views of a batch go through the model one at a time (lax.map), so 30-view testing
  holds B clips of activations, not 30 B. `reduce`: 'mean' (features) or 'softmax_mean'
  (class scores, CVRL's multi-view testing). The module is used in inference mode and
  its state is never written back. `data_config` (config.data) finishes the pipeline's
  uint8 video on device. Batches are sharded over the run's mesh (as it is when the runner
  is made). The one frozen-encoder runner: the probe's cached features, the
  evaluators' features and every multi-view test go through it.
  """

  def __init__(self, module: nnx.Module, reduce: str = "mean", data_config=None):
    if reduce not in REDUCTIONS:
      raise ValueError(f"reduce must be one of {REDUCTIONS}, got {reduce!r}")
    self.sharding = parallel.batch_sharding()
    graphdef, self.state = nnx.split(frozen(module))
    self._apply = _view_apply(graphdef, reduce, self.sharding, frozen_config(data_config))

  def __call__(self, batch: dict) -> jax.Array:
    """The global arrays of the batch's clips (CLIP_KEYS) through the module, reduced."""
    inputs = {k: jax.make_array_from_process_local_data(self.sharding, np.asarray(batch[k]))
              for k in CLIP_KEYS if k in batch}
    return self._apply(self.state, inputs)


@functools.lru_cache(maxsize=None)
def _view_apply(graphdef, reduce: str, sharding, data_config):
  """One jit'd function per (architecture, reduction, output sharding, data config):
  models of the same architecture (a checkpoint and its random baseline) share it."""
  def apply(state, inputs):
    views = jnp.moveaxis(clips(inputs, data_config), 1, 0)  # [V, B, ...]
    out = jax.lax.map(lambda clips: nnx.merge(graphdef, state)(clips), views)
    out = out.astype(jnp.float32)
    if reduce == "softmax_mean":
      out = jax.nn.softmax(out, axis=-1)
    return jnp.mean(out, axis=0)
  return jax.jit(apply, out_shardings=sharding)


@dataclasses.dataclass
class SplitOutputs:
  """One row per real video of a split, in the order the hosts read them."""
  values: np.ndarray  # [N, D]
  labels: np.ndarray  # [N]
  index: np.ndarray   # [N] global example id (-1 if the pipeline gave none)
  seconds: float = 0.0

  def __len__(self):
    return len(self.labels)


def run_splits(runners: dict[str, Callable[[dict], jax.Array]],
               batches: Iterable[dict], max_batches: int | None = None,
               all_hosts: bool = True) -> dict[str, SplitOutputs]:
  """Runs every runner on each host batch (one pass of the input pipeline for all).

  Rows with mask 0 (padding) are dropped after gathering every host (`all_hosts`), or
  from this host's rows only. Device results are pulled to the host after the loop, so
  the next batch is prepared while the devices work on this one.
  """
  start = time.time()
  outs = {name: [] for name in runners}
  labels, index, masks = [], [], []
  for i, batch in enumerate(batches):
    if max_batches is not None and i >= max_batches:
      break
    for name, runner in runners.items():
      outs[name].append(runner(batch))
    n = len(batch["label"])
    labels.append(np.asarray(batch["label"]))
    index.append(np.asarray(batch.get("index", np.full([n], -1, np.int64))))
    masks.append(np.asarray(batch.get("mask", np.ones([n], np.float32))))
  if not labels:
    raise ValueError("the split gave no batch")
  values = {name: np.concatenate([to_host_local(o) for o in out]) for name, out in outs.items()}
  labels, index, masks = (np.concatenate(x) for x in (labels, index, masks))
  if all_hosts:
    values = {name: gather_hosts(v) for name, v in values.items()}
    labels, index, masks = (gather_hosts(x) for x in (labels, index, masks))
  keep = masks > 0
  seconds = time.time() - start
  return {name: SplitOutputs(v[keep], labels[keep].astype(np.int64), index[keep].astype(np.int64),
                             seconds) for name, v in values.items()}


def run_split(runner: Callable[[dict], jax.Array], batches: Iterable[dict],
              max_batches: int | None = None, all_hosts: bool = True) -> SplitOutputs:
  """`run_splits` with one runner."""
  return run_splits({"_": runner}, batches, max_batches, all_hosts)["_"]


# --------------------------------------------------------------------------- checks

def validate_test(e) -> None:
  """config.evaluate's multi-view test views and batch (its mode and the mode's fields: the
  evaluate job checks them)."""
  if e.num_crops not in (1, 3):
    raise ValueError(f"config.evaluate.num_crops must be 1 or 3, got {e.num_crops}")
  if int(e.batch_size) <= 0:
    raise ValueError(f"config.evaluate.batch_size must be > 0, got {e.batch_size}")


def validate_downstream(job: str, source: dict, optim_fields, test, data) -> None:
  """The checks a probe or fine-tune config shares (before compiling): an encoder to start
  from (`source`: `load_encoder`'s arguments), the optimizer's fields (config.optim), the
  test's (config.evaluate) and data.label_fraction."""
  if not source["pretrained"] and not source["random_init"]:
    raise ValueError(f"{job}: set config.pretrained=<checkpoint dir> or config.random_init=True")
  optim.validate(optim_fields)
  validate_test(test)
  subset.label_fraction(data)


@dataclasses.dataclass(frozen=True)
class Downstream:
  """What a probe or fine-tune job takes of its config alike: the encoder to start from
  (`load_encoder`'s arguments), the task's training fields, the loop's `RunSpec`, the
  schedule (`durations(n)`: total and warm-up steps when epochs count n videos). A job's
  own value extends it with its fields (their checks in its `__post_init__`)."""
  encoder: dict
  training: tasks.Training
  spec: engine.RunSpec
  durations: Callable[[int], tuple[int, int]]

  @classmethod
  def of(cls, job: str, *, encoder: dict, training: dict, run: dict, durations,
         test_fields, **fields):
    """`cls` of job `job` from `config_lib.downstream`'s keyword arguments and the job's
    own `fields`, checked (`validate_downstream`, the loop's fields, then the job's)."""
    validate_downstream(job, encoder, training["optim"], test_fields, run["data"])
    return cls(encoder, tasks.Training(**training), engine.RunSpec(**run), durations, **fields)

  def shaped(self, shape):
    """This job on clips of `shape` (cvrl.engine.clip_shape.ClipShape): its loop's data and
    record with the shape applied."""
    data, record = shape.applied(self.spec.data, self.spec.record)
    return dataclasses.replace(self, spec=dataclasses.replace(self.spec, data=data,
                                                              record=record))


# ---------------------------------------------------------------------- the data, sized

def num_classes(data: ml_collections.ConfigDict) -> int:
  """Classes of the labelled dataset: config.data.num_classes, or what the source says."""
  return sources.num_classes(data)


def schedule(data: ml_collections.ConfigDict, durations: Callable[[int], tuple[int, int]]
             ) -> tuple[int, int, int, int]:
  """(classes, training videos, total steps, warm-up steps) of a job that trains on the
  labelled split: `durations(n)` its (total, warm-up) steps when epochs count n videos, n
  the train split's (the data.label_fraction subset)."""
  n_train = num_examples(data, "train")
  return (num_classes(data), n_train, *durations(n_train))


def num_examples(data: ml_collections.ConfigDict, split: str = "train") -> int:
  """Videos in a split, as the source says (cvrl.data.sources.num_examples); the train split
  under data.label_fraction < 1 counts its class-balanced subset."""
  return sources.num_examples(data, split, jax.process_count())
