"""Fine-tuning a pretrained encoder on UCF101 (TFDS) or HMDB51 (TFRecords), split 1.

The whole network trains with a new linear head (dropout 0.5 before it): BN in train
mode, synchronised over the global batch; the backbone at lr 0.05 and the new head at
lr 0.5 per 64 videos (SGD momentum 0.9, weight decay 1e-4 on kernels, 2 warm-up epochs
then cosine, 50 epochs). Clips of 32 frames at stride 2, random resized crop to 224 and
flip, no colour. Test: 10 clips x 3 crops of 256 at shorter side 256, softmax averaged.
The papers give no common fine-tuning hyper-parameters: these values are our choice, in the
range the cited papers use. `random_init=True` trains the same network from scratch.
  python -m cvrl.main --config=configs/ucf101_finetune.py:pretrained=PRETRAIN_WORKDIR --workdir=DIR
  python -m cvrl.main --config=configs/ucf101_finetune.py:dataset=hmdb51 \
      --config.pretrained=... --config.data.train_paths=... --config.data.eval_paths=... --workdir=DIR
UCF101 comes from TFDS ('ucf101/ucf101_1_256', prepared in `data.tfds_data_dir`);
HMDB51 is not in TFDS: convert it to SequenceExample shards with `python -m cvrl.data.convert`.
"""
from cvrl import config_lib

DATASETS = {
    # name: (num_classes, train videos of split 1)
    "ucf101": (101, 9_537),
    "hmdb51": (51, 3_570),
}


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, dataset="ucf101", pretrained="", epochs=50, batch=64,
                             frames=32, random_init=False)
  if arg.dataset not in DATASETS:
    raise ValueError(f"dataset must be one of {sorted(DATASETS)}, got {arg.dataset!r}")
  classes, train_videos = DATASETS[arg.dataset]
  c = config_lib.finetune_config()
  c.pretrained = arg.pretrained
  c.random_init = arg.random_init
  c.batch_size = arg.batch
  c.total_epochs = arg.epochs
  c.warmup_epochs = 2
  c.optim.update(name="sgd", base_lr=0.05, head_lr=0.5, base_batch_size=64, momentum=0.9,
                 weight_decay=1e-4)
  c.finetune.dropout = 0.5
  c.model.update(depth=50, width=1.0, preset="cvrl")  # random_init only
  c.data.update(num_classes=classes, num_train_examples=train_videos, num_frames=arg.frames,
                stride=2, crop_size=224, eval_resize=256, eval_crop_size=256)
  if arg.dataset == "ucf101":
    c.data.update(source="tfds", tfds_name="ucf101/ucf101_1_256", tfds_train_split="train",
                  tfds_eval_split="test")
  else:
    c.data.update(source="tfrecord", train_paths="/path/to/hmdb51/train-*.tfrecord",
                  eval_paths="/path/to/hmdb51/test-*.tfrecord")
  c.evaluate.update(num_clips=10, num_crops=3, batch_size=32)
  c.log.every_steps = 50
  return c
