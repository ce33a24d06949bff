"""The tasks the training engine runs: pretraining, the classifier (fine-tune or end-to-end
linear probe) and the linear probe on cached features.

A task declares the model, what trains, the loss, the data and the optimizer's parameter
groups (cvrl.engine.loop.Task); nothing here saves or logs. `FeatureHeadTask.fit`, the
in-memory fit of a head on cached features (the 'linear' evaluator's), drives the
engine's own train step, so there is one update rule.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Iterator

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from cvrl.core import parallel
from cvrl.engine import input as input_lib
from cvrl.engine import loop as engine
from cvrl.engine import optim
from cvrl.engine import pictures
from cvrl.engine import state as state_lib
from cvrl.models.heads import EncoderHead, LinearClassifier


@dataclasses.dataclass(frozen=True)
class Training:
  """What a task takes of its job's config: the seed (a classifier head's init is seed + 1),
  the global batch size and config.optim (cvrl.engine.optim)."""
  seed: int
  batch_size: int
  optim: ml_collections.ConfigDict

  def optimizer(self, total_steps: int, warmup_steps: int, groups=None):
    """(optax transform, schedule, peak lr(s)) of `optim` at this batch size."""
    return optim.make(self.optim, self.batch_size, total_steps, warmup_steps, groups)


class PretrainTask(engine.Task):
  """A pretext objective (cvrl.objectives) on the engine: the step runs the objective
  itself (`rules`: its trainable filter, loss and updates); this adds the model's seed, the
  method's sampled stream and the optimizer. With `picture_dir`, a fresh run's first batch
  is drawn to TensorBoard there (cvrl.engine.pictures)."""

  def __init__(self, training: Training, data: ml_collections.ConfigDict, objective,
               picture_dir: str = ""):
    self.training, self.data = training, data
    self.objective = objective
    self.picture_dir = picture_dir
    self.name = f"pretraining {objective.name}"
    self.trainable = objective.trainable

  @property
  def rules(self):
    return self.objective

  def make_model(self):
    return self.objective.build(nnx.Rngs(self.training.seed))

  def batches(self, *, batch_size, start_step, process_index, process_count):
    batches, stats = input_lib.host_batches(
        self.data, self.objective.sampler(), seed=self.training.seed,
        batch_size=batch_size, start_step=start_step, process_index=process_index,
        process_count=process_count)
    if self.picture_dir and start_step == 0 and process_index == 0:
      batches = pictures.with_tensorboard_picture(batches, self.data, self.objective,
                                                  self.picture_dir)
    return batches, stats

  def optimizer(self, total_steps, warmup_steps):
    return self.training.optimizer(total_steps, warmup_steps)


def classification_loss(logits, labels):
  """(mean softmax cross-entropy, {'accuracy': top-1 of the logits})."""
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
  return loss, {"accuracy": jnp.mean(jnp.argmax(logits, -1) == labels)}


def param_groups(params):
  """'backbone' for the encoder's parameters, 'head' for everything else."""
  return jax.tree_util.tree_map_with_path(
      lambda path, _: "backbone" if getattr(path[0], "key", None) == "encoder" else "head", params)


# Fine-tuning: the backbone at optim.base_lr, the new head at optim.head_lr.
FINETUNE_GROUPS = (param_groups, {"backbone": "base_lr", "head": "head_lr"})
HEAD_ONLY = nnx.All(nnx.Param, nnx.PathContains("head"))


class ClassifierTask(engine.Task):
  """Encoder -> LinearClassifier on clips: fine-tuning (`train_encoder`: every parameter,
  BN in train mode over the global batch) or the end-to-end linear probe (only the head's
  parameters; the encoder in inference mode, BN on its running statistics).

  make_encoder(): the architecture (built under jit); encoder_init: a concrete encoder
  whose variables the fresh model takes (None: random init); batches(start_step): host
  batches of the augmented training stream from that step.
  """

  def __init__(self, training: Training, *, make_encoder: Callable[[], nnx.Module],
               num_classes: int, normalize: bool, dropout: float, train_encoder: bool,
               batches: Callable[[int], Iterator[dict]], encoder_init: nnx.Module | None = None,
               groups=None, name: str = ""):
    self.training = training
    self.make_encoder = make_encoder
    self.num_classes = int(num_classes)
    self.normalize, self.dropout = bool(normalize), float(dropout)
    self.train_encoder = bool(train_encoder)
    self._batches = batches
    self.encoder_init = encoder_init
    self.groups = groups
    self.trainable = nnx.Param if train_encoder else HEAD_ONLY
    self.name = name or ("fine-tuning" if train_encoder else "linear probe")

  def make_model(self):
    encoder = self.make_encoder()
    head = LinearClassifier(encoder.num_features, self.num_classes, normalize=self.normalize,
                            dropout=self.dropout, rngs=nnx.Rngs(self.training.seed + 1))
    model = EncoderHead(encoder, head)
    model.train()
    if not self.train_encoder:
      model.encoder.eval()
    return model

  def initialize(self, model):
    if self.encoder_init is not None:
      nnx.update(model.encoder, nnx.state(self.encoder_init))

  def loss(self, model, batch, *, step, rng):
    video = batch["video"]
    b, v = video.shape[:2]
    logits = model(video.reshape((b * v,) + video.shape[2:])).reshape(b, v, -1).mean(axis=1)
    return classification_loss(logits, batch["label"])

  def batches(self, *, batch_size, start_step, process_index, process_count):
    return self._batches(start_step), getattr(self._batches, "stats", input_lib.NoStats())

  def optimizer(self, total_steps, warmup_steps):
    return self.training.optimizer(total_steps, warmup_steps, self.groups)


class FeatureHeadTask(engine.Task):
  """The linear probe on cached features: the model is the LinearClassifier alone, each
  batch {'features', 'label'} from `batches(start_step)` (cvrl.jobs.probe caches them)."""
  input_key = "features"

  def __init__(self, training: Training, *, num_features: int, num_classes: int,
               normalize: bool, batches: Callable[[int], Iterator[dict]],
               name: str = "linear probe (cached)"):
    self.training = training
    self.num_features, self.num_classes = int(num_features), int(num_classes)
    self.normalize = bool(normalize)
    self._batches = batches
    self.name = name

  def make_model(self):
    return LinearClassifier(self.num_features, self.num_classes, normalize=self.normalize,
                            dropout=0.0, rngs=nnx.Rngs(self.training.seed + 1))

  def loss(self, model, batch, *, step, rng):
    return classification_loss(model(batch["features"]), batch["label"])

  def batches(self, *, batch_size, start_step, process_index, process_count):
    return self._batches(start_step), input_lib.NoStats()

  def optimizer(self, total_steps, warmup_steps):
    return self.training.optimizer(total_steps, warmup_steps)

  def encoder(self, model):
    raise ValueError("a probe on cached features has no encoder to evaluate")

  def fit(self, total_steps: int, warmup_steps: int) -> LinearClassifier:
    """The head trained in memory on `batches(0)` on this host's first device by the
    engine's own train step, without its checkpoints, logs or hooks: the linear fit an
    evaluator runs between pretraining steps."""
    tx, schedule, _ = self.optimizer(total_steps, warmup_steps)
    batches, _ = self.batches(batch_size=self.training.batch_size, start_step=0,
                              process_index=0, process_count=1)
    with jax.set_mesh(parallel.make_mesh(jax.local_devices()[:1])):
      graphdef, state = state_lib.create(self.make_model, self.trainable, tx,
                                         parallel.state_placement())
      step = engine.make_train_step(self, graphdef, tx, schedule, parallel.batch_sharding(),
                                     self.training.seed)
      for _ in range(int(total_steps)):
        state, _ = step(state, next(batches))
      return engine.current_model(graphdef, state)


def cached_batches(feats: np.ndarray, labels: np.ndarray, batch: int, replay_rows: int,
                   seed: int) -> Iterator[dict]:
  """Host batches from cached features: the first `replay_rows` rows in stored order, then
  `permuted_batches`."""
  for start in range(0, replay_rows - batch + 1, batch):
    yield {"features": feats[start:start + batch], "label": labels[start:start + batch]}
  yield from permuted_batches(feats, labels, batch, seed)


def permuted_batches(feats: np.ndarray, labels: np.ndarray, batch: int, seed: int,
                     stream: int = 0x9B0BE) -> Iterator[dict]:
  """Endless host batches of cached features: passes over all rows in fresh permutations
  (one per pass, wrapping across passes), seeded by (seed, stream)."""
  rng = np.random.default_rng([seed, stream])
  order = np.empty([0], np.int64)
  while True:
    while len(order) < batch:
      order = np.concatenate([order, rng.permutation(len(labels))])
    take, order = order[:batch], order[batch:]
    yield {"features": feats[take], "label": labels[take]}
