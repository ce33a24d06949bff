"""The 'linear' evaluator: a linear classifier (L2-normalised features, CVRL's probe) fit
to the cached features of the train split (backbone features averaged over `num_clips` x
`num_crops` views), top-1 / top-5 on the test split's.

The fit is the engine's linear probe on cached features (`tasks.FeatureHeadTask.fit`):
SGD with momentum 0.9, warm-up (a tenth of the steps) and cosine, `linear_steps`
minibatches of `linear_batch` drawn from seeded permutations of the cached rows.
"""
from __future__ import annotations

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
  headline = ("top1", "top5")

  def __init__(self, make_encoder, splits, *, num_clips: int = 2, num_crops: int = 1,
               normalize: bool = True, linear_steps: int = 300, linear_batch: int = 32,
               linear_lr: float = 1.0, **common_fields):
    """num_clips x num_crops: views per video whose features are averaged; normalize:
    L2-normalised features (CVRL); the head's SGD: linear_steps minibatches of
    linear_batch at peak rate linear_lr."""
    super().__init__(make_encoder, splits, **common_fields)
    common.check_choice(self.name, "num_crops", num_crops, (1, 3))
    self.num_clips, self.num_crops, self.normalize = int(num_clips), int(num_crops), bool(normalize)
    self.linear_steps, self.linear_batch = int(linear_steps), int(linear_batch)
    self.linear_lr = float(linear_lr)

  def fit(self, encoder) -> tuple[LinearClassifier, dict]:
    """(the head fit to the train split's features, replicated over the run's mesh,
    {split: SplitOutputs})."""
    feats = self.splits.features(encoder, self.num_clips, self.num_crops, self.batch_size)
    head = fit_head(feats["train"], self.splits.num_classes, normalize=self.normalize,
                    steps=self.linear_steps, batch=self.linear_batch, lr=self.linear_lr,
                    seed=self.splits.seed)
    return F.place(head), feats

  def evaluate(self, encoder) -> dict:
    head, feats = self.fit(encoder)
    logits = np.asarray(nnx.jit(lambda h, x: h(x))(head, feats["eval"].values))
    out, _ = scores.classification_metrics(scores.softmax(logits), feats["eval"].labels,
                                           self.splits.num_classes)
    return out


def fit_head(train: F.SplitOutputs, num_classes: int, *, normalize: bool, steps: int,
             batch: int, lr: float, seed: int) -> LinearClassifier:
  """A LinearClassifier fit to cached features by the engine's FeatureHeadTask: `steps`
  SGD minibatches of `batch` at peak rate `lr`."""
  training = tasks.Training(int(seed), batch, config_lib.optim_fields(
      name="sgd", base_lr=float(lr), base_batch_size=batch, momentum=0.9, nesterov=False,
      weight_decay=0.0, schedule="cosine"))
  x, y = np.asarray(train.values, np.float32), np.asarray(train.labels, np.int32)
  task = tasks.FeatureHeadTask(
      training, num_features=x.shape[1], num_classes=num_classes, normalize=bool(normalize),
      batches=lambda s: engine.skip(
          tasks.permuted_batches(x, y, min(batch, len(y)), int(seed), STREAM), s))
  return task.fit(steps, max(1, steps // 10))


make = Linear  # the kind's entry point (cvrl.core.discovery)
