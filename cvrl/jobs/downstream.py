"""What the downstream jobs (probe, finetune, evaluate) check alike: not a job itself (no
`run`; cvrl.core.discovery), so a job may import it."""
from __future__ import annotations

import ml_collections

from cvrl.data import subset
from cvrl.engine import optim
from cvrl.eval import retrieval


def validate_eval_fields(e) -> None:
  """config.evaluate's views, batch and vote (its mode: the evaluate job checks it)."""
  for key in ("num_crops", "knn_crops"):
    if e[key] not in (1, 3):
      raise ValueError(f"config.evaluate.{key} must be 1 or 3, got {e[key]}")
  if int(e.batch_size) <= 0:
    raise ValueError(f"config.evaluate.batch_size must be > 0, got {e.batch_size}")
  if e.knn_vote not in retrieval.VOTES:
    raise ValueError(f"config.evaluate.knn_vote must be one of {list(retrieval.VOTES)}, "
                     f"got {e.knn_vote!r}")


def validate(config: ml_collections.ConfigDict, job: str) -> None:
  """The checks a probe or fine-tune config shares: an encoder to start from, the
  optimizer's fields and the evaluation's."""
  if not config.get("pretrained") and not config.get("random_init"):
    raise ValueError(f"{job}: set config.pretrained=<checkpoint dir> or config.random_init=True")
  optim.validate(config.optim)
  validate_eval_fields(config.evaluate)
  subset.label_fraction(config.data)  # a bad data.label_fraction: ValueError, before compiling
