"""CVRL linear evaluation on Kinetics-600, the paper's recipe (Qian et al., CVPR 2021).

Frozen backbone (BN in inference mode; its architecture comes from the config stored in
the checkpoint), global average pool -> L2-normalise -> Dense(600). 32 frames at stride
2; training augmentation random resized crop (area 0.3-1, aspect 0.5-2) to 224 and flip,
no colour; batch 1024, SGD momentum 0.9, lr 32.0 with 5 warm-up epochs then cosine, 100
epochs, no weight decay. Test: 10 evenly spaced clips x 3 crops of 256 at shorter side
256 (30 views), softmax averaged per video.
  python -m cvrl.main --config=configs/cvrl_k600_linear.py --config.pretrained=PRETRAIN_WORKDIR \
      --config.data.train_paths=... --config.data.eval_paths=... --workdir=DIR
The arg: pretrained=DIR, epochs=100, extract=False (True: encode the clips of the first
`probe.feature_epochs` epochs once and train on the cached features), baseline=False
(also probe a random-init encoder of the same architecture).
"""
from cvrl import config_lib


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, pretrained="", epochs=100, extract=False, baseline=False)
  c = config_lib.probe_config()
  c.pretrained = arg.pretrained
  c.total_epochs = arg.epochs
  c.warmup_epochs = 5
  c.batch_size = 1024
  c.optim.update(name="sgd", base_lr=32.0, base_batch_size=1024, momentum=0.9, weight_decay=0.0)
  c.model.update(depth=50, width=1.0, preset="cvrl", dtype="bfloat16")  # random_init only
  c.data.update(source="tfrecord", train_paths="/path/to/k600/train-*.tfrecord",
                eval_paths="/path/to/k600/val-*.tfrecord", num_train_examples=366_016,
                num_classes=600, num_frames=32, stride=2, crop_size=224, eval_resize=256,
                eval_crop_size=256)
  c.probe.extract_features = arg.extract
  c.probe.random_baseline = arg.baseline
  c.evaluate.update(num_clips=10, num_crops=3, batch_size=64)
  c.log.every_steps = 100
  return c
