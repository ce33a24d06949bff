"""Config pieces the objectives' recipe files share (configs/<method>_*.py).

`kinetics_rho` is the data side of the rho-methods study; `shrink_to_tiny` turns any
pretraining config into one that runs a few steps on synthetic videos on a CPU.
"""
from __future__ import annotations

import ml_collections

from cvrl.data.config import set_rho_augmentation

# Slow-only R50 8x8 is approximated by R3D-50 with the 'cvrl' preset (see the configs).
SLOW_R50_APPROXIMATION = dict(depth=50, preset="cvrl")


def kinetics_rho(config: ml_collections.ConfigDict, *, num_train_examples: int,
                 train_paths: str = "/path/to/k400/train-*.tfrecord") -> None:
  """Kinetics-400 clips as the rho-methods use them: 8 frames at stride 8, 224 crops,
  the study's augmentation (methods.md section 2). In place."""
  config.data.update(source="tfrecord", train_paths=train_paths,
                     num_train_examples=num_train_examples, num_classes=400, num_frames=8,
                     stride=8, crop_size=224)
  set_rho_augmentation(config.data)


def shrink_to_tiny(config: ml_collections.ConfigDict, *, preset: str = "r3d18",
                   num_frames: int = 4, batch_size: int = 8, steps: int = 24,
                   crop_size: int = 16) -> None:
  """R3D-18 at width 0.125 on small synthetic clips, a few steps, float32. In place."""
  config.model.update(depth=18, width=0.125, preset=preset, dtype="float32", remat=False)
  config.batch_size = batch_size
  config.total_steps, config.total_epochs = steps, None
  config.warmup_steps, config.warmup_epochs = 1, None
  config.optim.base_batch_size = batch_size
  data = config.data
  data.update(source="synthetic", num_train_examples=None, num_frames=num_frames, stride=2,
              crop_size=crop_size, eval_resize=crop_size, eval_crop_size=crop_size,
              shuffle_buffer=16, cycle_length=2, prefetch=1)
  data.synthetic.update(num_train_videos=16, num_eval_videos=8, num_classes=4,
                        num_frames=64, size=24, num_shards=2)
  if "checkpoint" in config:
    config.checkpoint.update(every_steps=max(1, steps // 2), keep=2)
  if "log" in config:
    config.log.update(every_steps=1, tensorboard=False)
