"""CVRL, tiny: a few steps on synthetic videos on a CPU (tests, demo).

The recipe of configs/cvrl_k600_r3d50.py (the 'cvrl' preset, 2 temporally distant clips
per video, the paper's augmentation, InfoNCE at T 0.1 over the global batch) shrunk:
R3D-18 at width 0.125, 2 clips of 4x16x16 per video, batch 8, a small 3-layer head.
"""
from cvrl import config_lib


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, steps=24)
  c = config_lib.pretrain_config("cvrl")
  c.objective.update(head_hidden=32, head_out=16)
  config_lib.shrink_to_tiny(c, preset="cvrl", steps=arg.steps)
  # Adam: a loss that falls within a few tiny steps (the recipe uses SGD, lr 0.32).
  c.optim.update(name="adamw", base_lr=2e-3, weight_decay=1e-6)
  return c
