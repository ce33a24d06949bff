"""The one home of the config fields the downstream jobs share (probe, finetune, evaluate).

Config files build on `probe_config`, `finetune_config` and `evaluate_config` here, so no
config file imports a job module to fetch defaults. Every job that trains carries the
engine's sections (`checkpoint`, `log`, `parallel`) with pretraining's meaning.
"""
from __future__ import annotations

import ml_collections
from ml_collections import config_dict

from cvrl import config_lib
from cvrl.train import clip_shape, optim, retrieval

EVAL_MODES = ("multiview", "knn")


def eval_fields() -> ml_collections.ConfigDict:
  """`config.evaluate`: the multi-view test (CVRL: 10 clips x 3 crops) and kNN retrieval."""
  return ml_collections.ConfigDict(dict(
      mode="multiview",
      num_clips=10, num_crops=3,  # CVRL: 10 clips x 3 crops of eval_crop_size
      batch_size=32,              # global, in videos
      run_dir="",                 # multiview: workdir of a probe / finetune run
      save_scores=True,
      fuse_with="",               # comma-separated scores.npz of other runs
      fusion="mean",
      knn_clips=10, knn_crops=1,  # knn: views per video, features averaged
      knn_k=20, knn_vote="weighted", knn_temperature=0.07,
      recall_ks=(1, 5, 10, 20),
  ))


def probe_fields() -> ml_collections.ConfigDict:
  """`config.probe`: the linear probe's own options."""
  return ml_collections.ConfigDict(dict(
      extract_features=False,  # encode clips once, train on cached features
      feature_epochs=1,        # epochs of augmented clips cached (0: one un-augmented clip)
      normalize=True,          # L2-normalise the pooled features (CVRL)
      random_baseline=False,   # also probe a random-init encoder of the same architecture
      evaluate=True,           # multi-view test of the trained probe (config.evaluate)
      save_model=True,         # DIR/model + DIR/model.json for the evaluate job
  ))


def finetune_fields() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      dropout=0.5,       # before the classifier
      normalize=False,   # L2-normalise features before the classifier (probe-style)
      evaluate=True,     # multi-view test at the end (config.evaluate)
      save_model=True,
  ))


def optim_fields(**overrides) -> ml_collections.ConfigDict:
  """`config.optim`: cvrl.train.optim's fields (pretraining's defaults) with `overrides`."""
  c = ml_collections.ConfigDict(config_lib.pretrain_config().optim.to_dict(preserve_field_references=True))
  c.update(overrides)
  return c


def _encoder_source(c: ml_collections.ConfigDict) -> None:
  # pylint: disable=import-outside-toplevel
  from cvrl.data.config import default_data_config
  from cvrl.models import default_model_config
  c.seed = 0
  c.pretrained = ""  # checkpoint (the encoder is rebuilt from its stored config)
  c.pretrained_step = config_dict.placeholder(int)  # None: the latest
  c.random_init = False  # a random-init `config.model` instead (no checkpoint)
  c.model = default_model_config()  # only read with random_init
  c.data = default_data_config()
  # None: frames, stride, crop and test sizes as the checkpoint's (cvrl.train.clip_shape)
  clip_shape.from_checkpoint(c.data)
  c.data.num_classes = config_dict.placeholder(int)  # None: from the source
  c.data.num_train_examples = config_dict.placeholder(int)  # None: counted


def _engine_sections(c: ml_collections.ConfigDict, log_every: int) -> None:
  """checkpoint / log / parallel exactly as pretraining has them."""
  pre = config_lib.pretrain_config()  # a fresh one: its sections (typed placeholders kept)
  c.checkpoint = pre.checkpoint
  c.log = pre.log
  c.log.every_steps = log_every
  c.parallel = pre.parallel


def probe_config() -> ml_collections.ConfigDict:
  """Every field the probe job reads, at CVRL's K600 linear-eval values (Qian et al., CVPR
  2021)."""
  from cvrl.data.config import set_probe_augmentation  # pylint: disable=import-outside-toplevel
  c = ml_collections.ConfigDict()
  c.job = "probe"
  _encoder_source(c)
  c.batch_size = 1024
  c.total_epochs = 100
  c.total_steps = config_dict.placeholder(int)
  c.warmup_epochs = 5
  c.warmup_steps = config_dict.placeholder(int)
  set_probe_augmentation(c.data)  # the clip shape: the checkpoint's (CVRL's 32 frames: the recipe)
  c.optim = optim_fields(name="sgd", base_lr=32.0, base_batch_size=1024, momentum=0.9,
                         nesterov=False, weight_decay=0.0)
  c.probe = probe_fields()
  c.evaluate = eval_fields()
  _engine_sections(c, log_every=100)
  return c


def finetune_config() -> ml_collections.ConfigDict:
  """Every field the finetune job reads (UCF101 fine-tuning values, our choice)."""
  from cvrl.data.config import set_probe_augmentation  # pylint: disable=import-outside-toplevel
  c = ml_collections.ConfigDict()
  c.job = "finetune"
  _encoder_source(c)
  c.random_init = False  # train from scratch (the baseline fine-tuning has to beat)
  c.batch_size = 128
  c.total_epochs = 50
  c.total_steps = config_dict.placeholder(int)
  c.warmup_epochs = 2
  c.warmup_steps = config_dict.placeholder(int)
  set_probe_augmentation(c.data)
  c.optim = optim_fields(name="sgd", base_lr=0.05, base_batch_size=128, momentum=0.9,
                         nesterov=False, weight_decay=1e-4)
  c.optim.head_lr = 0.5  # the new head's base_lr (same linear scaling)
  c.finetune = finetune_fields()
  c.evaluate = eval_fields()
  _engine_sections(c, log_every=50)
  return c


def evaluate_config() -> ml_collections.ConfigDict:
  """Every field the evaluate job reads."""
  c = ml_collections.ConfigDict()
  c.job = "evaluate"
  _encoder_source(c)
  c.evaluate = eval_fields()
  return c


# --------------------------------------------------------------------------- checks

def validate_eval_fields(e) -> None:
  if e.mode not in EVAL_MODES:
    raise ValueError(f"config.evaluate.mode must be one of {list(EVAL_MODES)}, got {e.mode!r}")
  for key in ("num_crops", "knn_crops"):
    if e[key] not in (1, 3):
      raise ValueError(f"config.evaluate.{key} must be 1 or 3, got {e[key]}")
  if int(e.batch_size) <= 0:
    raise ValueError(f"config.evaluate.batch_size must be > 0, got {e.batch_size}")
  if e.knn_vote not in retrieval.VOTES:
    raise ValueError(f"config.evaluate.knn_vote must be one of {list(retrieval.VOTES)}, "
                     f"got {e.knn_vote!r}")


def validate_downstream(config: ml_collections.ConfigDict, job: str) -> None:
  """The checks a probe or fine-tune config shares: an encoder to start from, the
  optimizer's fields and the evaluation's."""
  if not config.get("pretrained") and not config.get("random_init"):
    raise ValueError(f"{job}: set config.pretrained=<checkpoint dir> or config.random_init=True")
  optim.validate(config.optim)
  validate_eval_fields(config.evaluate)
  from cvrl.data import subset  # pylint: disable=import-outside-toplevel
  subset.label_fraction(config.data)  # a bad data.label_fraction: ValueError, before compiling


# ------------------------------------------------------------- probing a pretraining

def demo_probe_fields() -> ml_collections.ConfigDict:
  """A short probe on cached features of the synthetic data (the demo's encoder)."""
  return ml_collections.ConfigDict(dict(
      batch_size=32, total_epochs=30, warmup_epochs=2, base_lr=1.0, momentum=0.9,
      # Features of one un-augmented clip per video (feature_epochs=0): at 32 x 32 the
      # probe's resized crops often cut the object out (README, "Quality benchmark").
      weight_decay=0.0, extract_features=True, feature_epochs=0, normalize=True,
      random_baseline=True, num_clips=2, num_crops=1, eval_batch_size=16, log_every_steps=50,
      eval_resize=config_dict.placeholder(int), eval_crop_size=config_dict.placeholder(int),  # None: the pretraining's crop_size
      # The demo's motion-direction data ('motion' kind) would change class under a
      # horizontal flip; its object + action classes do not. None: the probe's 0.5.
      flip_prob=0.0))


def probe_config_for(pretrain_config, checkpoint_dir: str, p=None) -> ml_collections.ConfigDict:
  """A probe job's config for a pretraining run's checkpoint: its data and model, the
  probe augmentation (crop + flip), and the fields of `p` (default: pretrain_config.probe,
  else `demo_probe_fields()`)."""
  from cvrl.data.config import set_probe_augmentation  # pylint: disable=import-outside-toplevel
  p = p if p is not None else (pretrain_config.get("probe") or demo_probe_fields())
  c = probe_config()
  c.seed = int(pretrain_config.get("seed", 0))
  c.pretrained = checkpoint_dir
  c.model = ml_collections.ConfigDict(pretrain_config.model.to_dict(preserve_field_references=True))
  data = ml_collections.ConfigDict(pretrain_config.data.to_dict(preserve_field_references=True))
  for key in ("num_classes", "num_train_examples", "label_fraction"):
    if key not in data:  # a pretraining config from before the field: the probe's default
      data[key] = c.data[key]
  c.data = set_probe_augmentation(data)
  if p.get("flip_prob") is not None:
    c.data.augmentation.flip_prob = float(p.flip_prob)
  # Test at the pretraining's resolution unless told otherwise (the data defaults, 256,
  # are the paper's for 224 training crops).
  c.data.eval_resize = int(p.get("eval_resize") or data.crop_size)
  c.data.eval_crop_size = int(p.get("eval_crop_size") or data.crop_size)
  c.batch_size = int(p.batch_size)
  c.total_epochs = p.get("total_epochs")
  c.total_steps = p.get("total_steps")
  c.warmup_epochs = p.get("warmup_epochs")
  c.warmup_steps = p.get("warmup_steps")
  c.optim.update(base_lr=float(p.base_lr), base_batch_size=int(p.batch_size),
                 momentum=float(p.get("momentum", 0.9)),
                 weight_decay=float(p.get("weight_decay", 0.0)))
  for key in ("extract_features", "feature_epochs", "normalize", "random_baseline"):
    if key in p:
      c.probe[key] = p[key]
  c.evaluate.num_clips = int(p.get("num_clips", c.evaluate.num_clips))
  c.evaluate.num_crops = int(p.get("num_crops", c.evaluate.num_crops))
  c.evaluate.batch_size = int(p.get("eval_batch_size", c.evaluate.batch_size))
  c.log.every_steps = int(p.get("log_every_steps", c.log.every_steps))
  return c
