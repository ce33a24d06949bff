"""rho-SimCLR, tiny: a few steps on synthetic videos on a CPU (tests, demo).

R3D-18 at width 0.125, rho = 2 clips of 4x16x16 per video, batch 8, a small head.
"""
import ml_collections

from cvrl import config_lib
from cvrl.objectives import simclr


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, steps=24)
  c = config_lib.pretrain_config("simclr")
  c.objective = ml_collections.ConfigDict(simclr.objective_config())
  c.objective.update(head_hidden=32, head_out=16)
  config_lib.shrink_to_tiny(c, steps=arg.steps)
  # Adam: a loss that falls within a few tiny steps (the recipe uses LARS).
  c.optim.update(name="adamw", base_lr=2e-3, weight_decay=1e-6)
  return c
