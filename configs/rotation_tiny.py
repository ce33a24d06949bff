"""3DRotNet, tiny: a few steps on synthetic videos on a CPU (tests, demo).

R3D-18 at width 0.125, one 4x16x16 clip per video (5 frames for 'dif'), batch 8.
  --config=configs/rotation_tiny.py:input=dif
"""
import ml_collections

from cvrl import config_lib
from cvrl.data.config import set_probe_augmentation
from cvrl.objectives import rotation


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, input="rgb", steps=24)
  c = config_lib.pretrain_config("rotation")
  c.objective = ml_collections.ConfigDict(rotation.objective_config())
  c.objective.update(input=arg.input, head_hidden=16)
  config_lib.shrink_to_tiny(c, steps=arg.steps)
  c.optim.update(name="sgd", base_lr=0.1, momentum=0.9, weight_decay=1e-3)
  set_probe_augmentation(c.data)
  return c
