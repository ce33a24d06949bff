"""The 'linear' evaluator: a linear classifier (L2-normalised features, CVRL's probe) fit
to the cached features of the train split (backbone features averaged over `num_clips` x
`num_crops` views), top-1 / top-5 on the test split's.

The fit is the engine's linear probe on cached features (`tasks.FeatureHeadTask.fit`):
SGD with momentum 0.9, warm-up (a tenth of the steps) and cosine, `linear_steps`
minibatches of `linear_batch` drawn from seeded permutations of the cached rows.
"""
from __future__ import annotations

import ml_collections
import numpy as np
from flax import nnx

from cvrl import config_lib
from cvrl.engine import loop as engine
from cvrl.engine import tasks
from cvrl.eval import common
from cvrl.eval import features as F
from cvrl.eval import scores
from cvrl.models.heads import LinearClassifier

# The permutation stream of the linear evaluator's minibatches (tasks.permuted_batches).
STREAM = 0x11EA


class Linear(common.Evaluator):
  FIELDS = dict(
      num_clips=2, num_crops=1,  # views per video whose features are averaged
      normalize=True,            # L2-normalised features (CVRL)
      linear_steps=300, linear_batch=32, linear_lr=1.0)
  headline = ("top1", "top5")

  @classmethod
  def check(cls, name, spec) -> None:
    super().check(name, spec)
    common.check_choice(name, spec, "num_crops", (1, 3))

  def evaluate_fields(self) -> dict:
    return dict(knn_clips=int(self.spec.num_clips), knn_crops=int(self.spec.num_crops))

  def fit(self, encoder) -> tuple[LinearClassifier, dict]:
    """(the head fit to the train split's features, {split: SplitOutputs})."""
    feats = common.split_features(encoder, self.config, self.mesh, self.model_config)
    head = fit_head(feats["train"], F.num_classes(self.config.data), self.spec, self.seed)
    return head, feats

  def evaluate(self, encoder) -> dict:
    head, feats = self.fit(encoder)
    logits = np.asarray(nnx.jit(lambda h, x: h(x))(head, feats["eval"].values))
    out, _ = scores.classification_metrics(scores.softmax(logits), feats["eval"].labels,
                                           F.num_classes(self.config.data))
    return out


def fit_head(train: F.SplitOutputs, num_classes: int, spec, seed: int) -> LinearClassifier:
  """A LinearClassifier fit to cached features (`spec`: normalize, linear_steps,
  linear_batch, linear_lr) by the engine's FeatureHeadTask."""
  steps, batch = int(spec.linear_steps), int(spec.linear_batch)
  config = ml_collections.ConfigDict(dict(
      seed=int(seed), batch_size=batch,
      optim=config_lib.optim_fields(name="sgd", base_lr=float(spec.linear_lr),
                                    base_batch_size=batch, momentum=0.9, nesterov=False,
                                    weight_decay=0.0, schedule="cosine")))
  x, y = np.asarray(train.values, np.float32), np.asarray(train.labels, np.int32)
  task = tasks.FeatureHeadTask(
      config, num_features=x.shape[1], num_classes=num_classes,
      normalize=bool(spec.normalize),
      batches=lambda s: engine.skip(
          tasks.permuted_batches(x, y, min(batch, len(y)), int(seed), STREAM), s))
  return task.fit(steps, max(1, steps // 10))


make = Linear  # the kind's entry point (cvrl.core.discovery)
