"""rho-SimCLR pretraining on Kinetics-400, the study's recipe (Feichtenhofer et al., CVPR 2021).

Feichtenhofer et al. (CVPR 2021): rho clips per video (uniform, independent starts), NT-Xent
over all clips of the global batch at T 0.1, 3-layer MLP head (2048 hidden, 128 out).
Backbone: Slow-only R50 8x8 ('slow' preset,
SlowFast's SLOW_8x8_R50: 8 frames -> 8x7x7x2048). 8 frames at stride 8, 224 crops,
the study's augmentation; LARS (trust 0.001, BN and biases excluded) at 1.2 per 64 videos,
scaled linearly, weight decay 1e-6, 200 epochs of
SlowFast's half-cosine joined by a 35-epoch warm-up from 0.001, Nesterov momentum 0.9; bfloat16.
  --config=configs/simclr_k400_slowr50.py:rho=4,batch=512
"""
import ml_collections

from cvrl import config_lib
from cvrl.objectives import simclr


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, rho=2, batch=512, epochs=200, width=1.0,
                             num_train_examples=240_000)
  c = config_lib.pretrain_config("simclr")
  c.objective = ml_collections.ConfigDict(simclr.objective_config())
  c.objective.num_clips = arg.rho
  c.model.update(config_lib.SLOW_R50, width=arg.width, dtype="bfloat16")
  c.batch_size = arg.batch
  c.total_epochs = arg.epochs
  config_lib.slowfast_solver(c, name="lars", base_lr=1.2, weight_decay=1e-6)
  # Set num_train_examples to the size of your copy of Kinetics-400's train split.
  config_lib.kinetics_rho(c, num_train_examples=arg.num_train_examples)
  return c
