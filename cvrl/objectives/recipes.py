"""Config pieces the objectives' recipe files share (configs/<method>_*.py).

`kinetics_rho` is the data side of the rho-methods study; `shrink_to_tiny` turns any
pretraining config into one that runs a few steps on synthetic videos on a CPU.
"""
from __future__ import annotations

import ml_collections

from cvrl.data.config import set_rho_augmentation

# The rho study's backbone: Slow-only R50 8x8 (SlowFast's SLOW_8x8_R50), cvrl.models' 'slow'.
SLOW_R50 = dict(depth=50, preset="slow")


def kinetics_rho(config: ml_collections.ConfigDict, *, num_train_examples: int,
                 train_paths: str = "/path/to/k400/train-*.tfrecord") -> None:
  """Kinetics-400 clips as the rho-methods use them: 8 frames at stride 8, 224 crops,
  the study's augmentation (Feichtenhofer et al., CVPR 2021). In place."""
  config.data.update(source="tfrecord", train_paths=train_paths,
                     num_train_examples=num_train_examples, num_classes=400, num_frames=8,
                     stride=8, crop_size=224)
  set_rho_augmentation(config.data)


def slowfast_solver(config: ml_collections.ConfigDict, *, name: str, base_lr: float,
                    weight_decay: float) -> None:
  """The rho study's solver as SlowFast's contrastive_ssl configs run it (SOLVER defaults
  included): 200 epochs, one half-cosine over the whole run that the 35-epoch linear
  warm-up from 0.001 joins, momentum 0.9 with Nesterov, base_lr per 64 videos scaled
  linearly; 'lars' (trust 0.001, BN parameters and biases excluded) or plain 'sgd'. In place."""
  config.warmup_epochs = 35
  config.optim.update(name=name, base_lr=base_lr, base_batch_size=64, momentum=0.9,
                      nesterov=True, weight_decay=weight_decay, lars_trust=0.001,
                      schedule="half_cosine", warmup_start_lr=0.001)


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
