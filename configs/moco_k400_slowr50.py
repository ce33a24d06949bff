"""rho-MoCo pretraining on Kinetics-400, the study's recipe (Feichtenhofer et al., CVPR 2021).

Feichtenhofer et al. (CVPR 2021): every clip a query against the other clips' keys of its
video, a 65,536-key queue per device fed with that device's keys of all clips, key encoder
momentum 0.994 cosine-annealed to 1, T 0.1, 3-layer MLP head (2048 hidden, 128 out);
one queue per device; no parameter update for the first queue / batch steps. Backbone: Slow-only R50 8x8 ('slow' preset,
SlowFast's SLOW_8x8_R50: 8 frames -> 8x7x7x2048). 8 frames at
stride 8, 224 crops, the study's augmentation; SGD momentum 0.9 at 0.1 per 64 videos,
scaled linearly, weight decay 1e-4, 200 epochs of
SlowFast's half-cosine joined by a 35-epoch warm-up from 0.001, Nesterov momentum 0.9; bfloat16.
`reduction='sum'`: the loss sums over query clips, the gradient of the reference's
sequential mode (one backward per query clip); with plain SGD that scale matters.
  --config=configs/moco_k400_slowr50.py:rho=4
"""
import ml_collections

from cvrl import config_lib
from cvrl.objectives import moco


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, rho=2, batch=512, epochs=200, width=1.0,
                             num_train_examples=240_000, queue=65_536)
  c = config_lib.pretrain_config("moco")
  c.objective = ml_collections.ConfigDict(moco.objective_config())
  c.objective.update(num_clips=arg.rho, queue_size=arg.queue, reduction="sum")
  c.model.update(config_lib.SLOW_R50, width=arg.width, dtype="bfloat16")
  c.batch_size = arg.batch
  c.total_epochs = arg.epochs
  config_lib.slowfast_solver(c, name="sgd", base_lr=0.1, weight_decay=1e-4)
  # Set num_train_examples to the size of your copy of Kinetics-400's train split.
  config_lib.kinetics_rho(c, num_train_examples=arg.num_train_examples)
  return c
