"""TCLR pretraining on UCF101 (split 1 train), the paper's setting (Dave et al., CVIU 2022).

Dave et al. (CVIU 2022): per video a sparse clip of 16 frames at stride 4 and the 4 dense
clips of 16 consecutive frames that tile it, each under 2 augmentations; the 'tclr'
R3D-18 (last stage's temporal stride traded for dilation 2: 4 output timesteps) at 112 px;
MLP 512 -> 512 -> BN -> ReLU -> 128 -> BN; instance, local-local and global-local losses
at T 0.1, weight 1 each. Optimiser as the reference code: Adam at 1e-3, weight decay 1e-9
(decoupled here), batch 40, 5 warm-up epochs. The reference then divides the learning rate by 10 whenever
the loss has not improved for 9 epochs (up to 1000 epochs); cosine over `epochs` (400 by
default, our choice) stands in for that. Augmentation as the reference's (its crop
approximated: square crops of 60-100% of the frame height), per clip: mild colour jitter
(p 0.3); then one draw picks grayscale (p 0.175; gamma x ** U(0.75, 1.25) on 0.75 of
those) or one colour channel set to 0 (p 0.125); flip; random erasing last (p 0.5: a box
of 9 to 18 px a side at 112, erase_size 19 / 112, corner anywhere, clipped at the edge).
No blur, no solarization, no other grayscale.
  --config=configs/tclr_ucf101_r3d18.py:epochs=400
"""
import ml_collections

from cvrl import config_lib
from cvrl.objectives import tclr


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, batch=40, epochs=400, width=1.0)
  c = config_lib.pretrain_config("tclr")
  c.objective = ml_collections.ConfigDict(tclr.objective_config())
  c.model.update(depth=18, width=arg.width, preset="tclr", dtype="float32")
  c.batch_size = arg.batch
  c.total_epochs = arg.epochs
  c.warmup_epochs = 5
  c.optim.update(name="adamw", base_lr=1e-3, base_batch_size=arg.batch, weight_decay=1e-9)
  c.data.update(source="tfrecord", train_paths="/path/to/ucf101/train-*.tfrecord",
                num_train_examples=9_537, num_classes=101, num_frames=16, stride=4,
                crop_size=112)
  aug = c.data.augmentation
  aug.update(area_range=(0.27, 0.75), aspect_ratio_range=(1.0, 1.0), color_jitter_prob=0.3,
             brightness=0.25, contrast=0.25, saturation=0.25, hue=0.1, grayscale_prob=0.0,
             blur_probs=(0.0,), solarize_probs=(0.0,))
  # The reference's r[4] > 0.7 branch (gray, gamma if r[5] > 0.25; else a channel to 0) and
  # its r[7] < 0.5 erasing (19 px at 112).
  aug.update(gray_gamma_prob=0.175, gamma_prob=0.75, gamma_range=(0.75, 1.25),
             channel_drop_prob=0.125, erase_prob=0.5, erase_size=19 / 112)
  return c
