"""rho-MoCo pretraining on Kinetics-400, the study's recipe (methods.md section 2).

Feichtenhofer et al. (CVPR 2021): every clip a query against the other clips' keys of its
video, a 65,536-key queue fed with all clips' keys of the global batch, key encoder
momentum 0.994 cosine-annealed to 1, T 0.1, 3-layer MLP head (2048 hidden, 128 out);
parameters are not updated until the queue is full. Backbone: the study's Slow-only R50
8x8 approximated by cvrl's R3D-50 ('cvrl' preset: same bottleneck stages and per-stage
temporal kernels; 5x7x7 stem with temporal stride 2 where Slow's is 1x7x7). 8 frames at
stride 8, 224 crops, the study's augmentation; SGD momentum 0.9 at 0.1 per 64 videos,
scaled linearly, weight decay 1e-4, 200 epochs cosine with 35 warm-up epochs; bfloat16.
`reduction='sum'`: the loss sums over query clips, the gradient of the reference's
sequential mode (one backward per query clip); with plain SGD that scale matters.
  --config=configs/moco_k400_slowr50.py:rho=4
"""
from cvrl import config_lib
from cvrl.objectives import moco, recipes


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, rho=2, batch=512, epochs=200, width=1.0,
                             num_train_examples=240_000, queue=65_536)
  c = config_lib.pretrain_config("moco")
  c.objective.update(moco.objective_config())
  c.objective.update(num_clips=arg.rho, queue_size=arg.queue, reduction="sum")
  c.model.update(recipes.SLOW_R50_APPROXIMATION, width=arg.width, dtype="bfloat16")
  c.batch_size = arg.batch
  c.total_epochs = arg.epochs
  c.warmup_epochs = 35
  c.optim.update(name="sgd", base_lr=0.1, base_batch_size=64, momentum=0.9,
                 weight_decay=1e-4)
  # Set num_train_examples to the size of your copy of Kinetics-400's train split.
  recipes.kinetics_rho(c, num_train_examples=arg.num_train_examples)
  return c
