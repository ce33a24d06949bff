"""TCLR, tiny: a few steps on synthetic videos on a CPU (tests, demo).

The 'tclr' R3D-18 at width 0.125 (16 frames -> 4 timesteps, as the losses need), 10 clips
of 16x8x8 per video, batch 8 (the 8 synthetic videos), a small MLP. Crop and flip only:
none of the paper's colour jitter, gray-gamma, channel drop or erasing (the UCF101 config
has them; at 8 px the 19 / 112 erase box would be empty anyway).
"""
import ml_collections

from cvrl import config_lib
from cvrl.data.config import set_probe_augmentation
from cvrl.objectives import tclr


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, steps=24)
  c = config_lib.pretrain_config("tclr")
  c.objective = ml_collections.ConfigDict(tclr.objective_config())
  c.objective.update(head_hidden=32, head_out=16)
  config_lib.shrink_to_tiny(c, preset="tclr", num_frames=16, crop_size=8, steps=arg.steps)
  # One batch worth of videos, crop and flip only: a task a tiny net can learn in a few steps.
  c.data.synthetic.num_train_videos = c.batch_size
  set_probe_augmentation(c.data)
  c.optim.update(name="adamw", base_lr=1e-3, weight_decay=1e-9)
  return c
