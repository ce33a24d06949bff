"""rho-BYOL pretraining on Kinetics-400, the study's recipe (Feichtenhofer et al., CVPR 2021).

Feichtenhofer et al. (CVPR 2021): 2 - 2 cos between each clip's online prediction and
every other clip's target projection; projector 2 layers (4096 hidden, 256 out, BN),
predictor 256 -> 4096 -> BN -> ReLU -> 256; target momentum 0.996 cosine-annealed to 1.
Backbone: Slow-only R50 8x8 ('slow' preset,
SlowFast's SLOW_8x8_R50: 8 frames -> 8x7x7x2048). 8 frames at stride 8, 224 crops, the study's augmentation; LARS
(trust 0.001, BN and biases excluded) at 0.6 per 64 videos for rho = 2 (1.2 for rho = 4),
scaled linearly, weight decay 1e-6, 200 epochs of
SlowFast's half-cosine joined by a 35-epoch warm-up from 0.001, Nesterov momentum 0.9; bfloat16.
The loss sums over query clips, as the reference's sequential mode (one backward each).
  --config=configs/byol_k400_slowr50.py:rho=4
"""
import ml_collections

from cvrl import config_lib
from cvrl.objectives import byol


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, rho=2, batch=512, epochs=200, width=1.0,
                             num_train_examples=240_000)
  c = config_lib.pretrain_config("byol")
  c.objective = ml_collections.ConfigDict(byol.objective_config())
  c.objective.num_clips = arg.rho
  c.model.update(config_lib.SLOW_R50, width=arg.width, dtype="bfloat16")
  c.batch_size = arg.batch
  c.total_epochs = arg.epochs
  config_lib.slowfast_solver(c, name="lars", base_lr=0.6 if arg.rho <= 2 else 1.2,
                             weight_decay=1e-6)
  # Set num_train_examples to the size of your copy of Kinetics-400's train split.
  config_lib.kinetics_rho(c, num_train_examples=arg.num_train_examples)
  return c
