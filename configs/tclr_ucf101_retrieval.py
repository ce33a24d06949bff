"""TCLR's nearest-neighbour video retrieval on UCF101 split 1 (Dave et al., CVIU 2022).

Backbone features (no projection head) of every video, averaged over 10 evenly spaced
clips (centre crop) and L2-normalised; each test video queries the training videos by
cosine similarity. Reports recall@k for k = 1, 5, 10, 20 (a hit when any of the k nearest
training videos shares the class; TCLR reports R3D-18 top-1 56.2) and the weighted kNN
accuracy (k = 20). Clips: the checkpoint's frames, stride and crop size (TCLR pretrains on
16 frames at stride 4 at 112 px), unless the arg sets them (frames=, stride=, size=; the
job then warns when they differ from the checkpoint's).
  python -m cvrl.main --config=configs/tclr_ucf101_retrieval.py:pretrained=PRETRAIN_WORKDIR --workdir=DIR
On the synthetic source (e.g. a demo checkpoint):
  --config=configs/tclr_ucf101_retrieval.py:pretrained=/tmp/cvrl_demo,source=synthetic
"""
from cvrl import config_lib

SOURCES = ("tfds", "synthetic")


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, pretrained="", source="tfds", frames=None, stride=None,
                             size=None, clips=10)  # None: the checkpoint's
  if arg.source not in SOURCES:
    raise ValueError(f"source must be one of {list(SOURCES)}, got {arg.source!r}")
  c = config_lib.evaluate_config()
  c.pretrained = arg.pretrained
  for key, value in (("num_frames", arg.frames), ("stride", arg.stride), ("crop_size", arg.size),
                     ("eval_resize", arg.size), ("eval_crop_size", arg.size)):
    if value is not None:  # else None: the checkpoint's (cvrl.engine.clip_shape)
      c.data[key] = int(value)
  if arg.source == "tfds":
    c.data.update(source="tfds", tfds_name="ucf101/ucf101_1_256", tfds_train_split="train",
                  tfds_eval_split="test", num_classes=101)
  else:
    c.data.source = "synthetic"
  c.evaluate.update(mode="knn", knn_clips=arg.clips, knn_crops=1, knn_k=20, knn_vote="weighted",
                    recall_ks=(1, 5, 10, 20), batch_size=16)
  return c
