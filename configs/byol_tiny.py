"""rho-BYOL, tiny: a few steps on synthetic videos on a CPU (tests, demo).

R3D-18 at width 0.125, 2 clips of 4x16x16 per video, batch 8, small projector/predictor.
"""
import ml_collections

from cvrl import config_lib
from cvrl.objectives import byol


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, steps=24)
  c = config_lib.pretrain_config("byol")
  c.objective = ml_collections.ConfigDict(byol.objective_config())
  c.objective.update(head_hidden=32, head_out=16, predictor_hidden=32)
  config_lib.shrink_to_tiny(c, steps=arg.steps)
  c.optim.update(name="lars", base_lr=0.6, weight_decay=1e-6)
  return c
