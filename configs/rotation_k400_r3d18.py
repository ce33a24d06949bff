"""3DRotNet pretraining on Kinetics-400 (Jing & Tian, 2018).

Every frame of a clip rotated by 0, 90, 180 or 270 degrees, all 4 of each clip in the
batch, a 4-way classifier (pool -> fc 64 -> ReLU -> 4) on Hara et al.'s 3D-ResNet-18
('hara' preset: 7x7x7 stem, 3x3x3 max-pool, zero-padded shortcuts, as the authors' code
builds it); 16 frames taken every 2nd of 32, 112x112 crops, random crop and flip. Input 'rgb'
or 'dif' (frame differences of 17 frames); the paper's Fusion averages an RGB and a DIF
model's scores (cvrl.objectives.rotation.fuse_scores). SGD momentum 0.9, weight decay 1e-3,
batch 32 videos (x 4 rotations). The learning rate (0.1) and length (`epochs`, 100) are not
given in the paper: our choice.
  --config=configs/rotation_k400_r3d18.py:input=dif
"""
import ml_collections

from cvrl import config_lib
from cvrl.data.config import set_probe_augmentation
from cvrl.objectives import rotation


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, input="rgb", batch=32, epochs=100, width=1.0,
                             num_train_examples=240_000)
  c = config_lib.pretrain_config("rotation")
  c.objective = ml_collections.ConfigDict(rotation.objective_config())
  c.objective.input = arg.input
  c.model.update(depth=18, width=arg.width, preset="hara", dtype="float32")
  c.batch_size = arg.batch
  c.total_epochs = arg.epochs
  c.warmup_epochs = 0
  c.optim.update(name="sgd", base_lr=0.1, base_batch_size=arg.batch, momentum=0.9,
                 weight_decay=1e-3)
  # Set num_train_examples to the size of your copy of Kinetics-400's train split.
  c.data.update(source="tfrecord", train_paths="/path/to/k400/train-*.tfrecord",
                num_train_examples=arg.num_train_examples, num_classes=400, num_frames=16,
                stride=2, crop_size=112)
  set_probe_augmentation(c.data)
  return c
