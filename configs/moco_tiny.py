"""rho-MoCo, tiny: a few steps on synthetic videos on a CPU (tests, demo).

R3D-18 at width 0.125, 2 clips of 4x16x16 per video, batch 8; one global 32-key queue
(full after 2 steps of 16 keys, whatever the device count, so the loss of a few steps is
comparable); as the reference, no update for the first queue / batch = 4 steps.
"""
import ml_collections

from cvrl import config_lib
from cvrl.objectives import moco


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, steps=24)
  c = config_lib.pretrain_config("moco")
  c.objective = ml_collections.ConfigDict(moco.objective_config())
  c.objective.update(head_hidden=32, head_out=16, queue_size=32, queue="global")
  config_lib.shrink_to_tiny(c, steps=arg.steps)
  c.optim.update(name="sgd", base_lr=0.1, momentum=0.9, weight_decay=1e-4)
  return c
