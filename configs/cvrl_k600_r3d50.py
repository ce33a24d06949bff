"""CVRL pretraining on Kinetics-600, the paper's recipe (Qian et al., CVPR 2021).

R3D-50 1x, 16x224 clips at stride 2, global batch 1024 videos, SGD momentum 0.9,
lr 0.32 cosine with 5 warm-up epochs, weight decay 1e-6 on kernels, 200 epochs, bfloat16
compute (float32 parameters), synchronised BatchNorm, InfoNCE over the global batch.
The arg picks the backbone and the run length, e.g.
  --config=configs/cvrl_k600_r3d50.py:depth=152,width=2,epochs=800
"""
from cvrl import config_lib


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, depth=50, width=1.0, epochs=200)
  c = config_lib.pretrain_config("cvrl")
  c.model.depth = arg.depth
  c.model.width = arg.width
  c.model.dtype = "bfloat16"
  c.total_epochs = arg.epochs
  c.data.source = "tfrecord"
  c.data.train_paths = "/path/to/k600/train-*.tfrecord"  # --config.data.train_paths=...
  c.data.num_train_examples = 366_016
  c.data.num_classes = 600
  # 357 steps per epoch at batch 1024: a checkpoint about every 3 epochs, the last 5 kept.
  c.checkpoint.every_steps = 1000
  c.checkpoint.keep = 5
  c.log.every_steps = 100
  return c
