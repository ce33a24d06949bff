"""TCLR, tiny: a few steps on synthetic videos on a CPU (tests, demo).

The 'tclr' R3D-18 at width 0.125 (16 frames -> 4 timesteps, as the losses need), 10 clips
of 16x8x8 per video, batch 8, a small MLP.
"""
from cvrl import config_lib
from cvrl.objectives import recipes, tclr


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, steps=24)
  c = config_lib.pretrain_config("tclr")
  c.objective.update(tclr.objective_config())
  c.objective.update(head_hidden=32, head_out=16)
  recipes.shrink_to_tiny(c, preset="tclr", num_frames=16, crop_size=8, steps=arg.steps)
  c.optim.update(name="adamw", base_lr=5e-3, weight_decay=1e-9)
  return c
