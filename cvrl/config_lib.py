"""The one home of config defaults and helpers: `get_config(arg)` arguments, durations,
pretraining's fields, and the fields the downstream jobs share (probe, finetune, evaluate).

Config files build on `pretrain_config`, `probe_config`, `finetune_config` and
`evaluate_config` here, so no config file imports a job module to fetch defaults. Every job
that trains carries the engine's sections (`checkpoint`, `log`, `parallel`) with
pretraining's meaning.
"""
from __future__ import annotations

import ast
import functools
import json
import math

import ml_collections
from ml_collections import config_dict

from cvrl.core import cli
from cvrl.core.errors import ConfigError
from cvrl.data.config import (default_data_config, from_checkpoint, set_probe_augmentation,
                              set_rho_augmentation)


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
  """Parses 'depth=152,width=2' into a ConfigDict over `defaults`; unknown keys are errors.

  Values are cast to the type of their default, so `--config=f.py:width=2` gives 2.0; a
  default of None ("unset") takes a Python literal (2, 0.5, True) or else the string.
  """
  out = ml_collections.ConfigDict(defaults)
  if not arg:
    return out
  for item in arg.split(","):
    if not item.strip():
      continue
    if "=" not in item:
      raise ValueError(f"config argument {item!r} is not key=value; valid keys: {sorted(defaults)}")
    key, value = (s.strip() for s in item.split("=", 1))
    if key not in defaults:
      raise ValueError(f"unknown config argument {key!r}; valid keys: {sorted(defaults)}")
    default = defaults[key]
    if isinstance(default, bool):
      if value.lower() not in ("true", "false", "1", "0"):
        raise ValueError(f"config argument {key} expects a bool, got {value!r}")
      out[key] = value.lower() in ("true", "1")
    elif isinstance(default, (int, float)):
      out[key] = type(default)(ast.literal_eval(value))
    elif default is None:
      try:
        out[key] = ast.literal_eval(value)
      except (ValueError, SyntaxError):
        out[key] = value
    else:
      out[key] = value
  return out


def steps(name: str, fields, *, num_examples: int | None, batch_size: int | None,
          default: int | None = None) -> int:
  """Resolves a duration given as `{name}_steps` or `{name}_epochs` of `fields` (a config
  or a dict holding both) into steps.

  Exactly one may be set (non-None). Epochs need the dataset size `num_examples` (None:
  unknown) and the global batch `batch_size`.
  """
  steps_key, epochs_key = f"{name}_steps", f"{name}_epochs"
  n_steps, n_epochs = fields[steps_key], fields[epochs_key]
  if n_steps is not None and n_epochs is not None:
    raise ValueError(f"set only one of config.{steps_key} and config.{epochs_key}")
  if n_steps is not None:
    return int(n_steps)
  if n_epochs is not None:
    if not num_examples or not batch_size:
      raise ValueError(f"config.{epochs_key} needs the dataset size "
                       "(config.data.num_train_examples) and config.batch_size")
    return int(math.ceil(float(n_epochs) * num_examples / batch_size))
  if default is not None:
    return default
  raise ValueError(f"set config.{steps_key} or config.{epochs_key}")


def durations(config: ml_collections.ConfigDict, num_examples: int | None = None
              ) -> tuple[int, int]:
  """(total steps, warm-up steps) of a training config's `{total,warmup}_{steps,epochs}`;
  epochs count `num_examples` videos (None: config.data.num_train_examples) in global
  batches of config.batch_size."""
  if num_examples is None:
    num_examples = config.data.num_train_examples
  kw = dict(num_examples=num_examples, batch_size=int(config.batch_size))
  return steps("total", config, **kw), steps("warmup", config, default=0, **kw)


def encoder_args(config: ml_collections.ConfigDict) -> dict:
  """A downstream config's encoder as keyword arguments (cvrl.eval.features.load_encoder):
  the checkpoint `pretrained` at `pretrained_step` (None: the newest), or with
  `random_init` the architecture `model` built with `seed`."""
  return dict(pretrained=config.pretrained, pretrained_step=config.pretrained_step,
              random_init=bool(config.random_init), model=config.model,
              seed=int(config.seed))


def training(config: ml_collections.ConfigDict) -> dict:
  """A training job's seed, global batch size and optimizer fields as keyword arguments
  (cvrl.engine.tasks.Training)."""
  return dict(seed=int(config.seed), batch_size=int(config.batch_size), optim=config.optim)


def run_args(config: ml_collections.ConfigDict) -> dict:
  """A training job's config as the loop's keyword arguments (cvrl.engine.loop.RunSpec):
  the fields it reads and the whole config's record."""
  return dict(seed=int(config.seed), batch_size=int(config.batch_size), data=config.data,
              parallel=config.parallel, checkpoint=config.checkpoint, log=config.log,
              record=as_dict(config))


def downstream(config: ml_collections.ConfigDict) -> dict:
  """A probe or fine-tune config's shared fields as keyword arguments
  (cvrl.eval.features.Downstream.of): its encoder, training and loop arguments, its
  schedule (`durations(n)`: epochs counting n videos) and the test's fields
  (config.evaluate)."""
  return dict(encoder=encoder_args(config), training=training(config), run=run_args(config),
              durations=functools.partial(durations, config), test_fields=config.evaluate)


def method_args(config: ml_collections.ConfigDict) -> dict:
  """A pretraining config's method as keyword arguments (cvrl.objectives.method):
  config.objective, config.model and the run's global batch, total steps (None: epochs
  without the data's size, which the job's own check names) and train split's size."""
  kw = dict(num_examples=config.data.num_train_examples, batch_size=int(config.batch_size))
  try:
    total = steps("total", config, **kw)
  except ValueError:
    total = None
  return dict(spec=config.objective, model=config.model, batch_size=kw["batch_size"],
              total_steps=total, num_train_examples=kw["num_examples"])


def as_dict(config: ml_collections.ConfigDict) -> dict:
  """A config as results.json records it (JSON values)."""
  return json.loads(config.to_json_best_effort()) if hasattr(config, "to_json_best_effort") \
      else dict(config)


def default_model_config() -> ml_collections.ConfigDict:
  """The encoder fields every config carries (CVRL R3D-50, 1x by default)."""
  return ml_collections.ConfigDict(dict(
      name="r3d", depth=50, width=1.0, preset="cvrl", bn_momentum=0.9, bn_eps=1e-5,
      dtype="float32", remat=False, conv_impl="auto",
      input="rgb"))  # 'dif': the encoder sees frame differences of T + 1 frames


def pretrain_config(objective: str = "cvrl") -> ml_collections.ConfigDict:
  """Every field a pretraining job reads, at the CVRL paper's values (Qian et al., CVPR 2021)."""
  c = ml_collections.ConfigDict()
  c.job = "pretrain"
  c.seed = 0
  c.batch_size = 1024  # global, in videos (2048 clips for CVRL)
  c.total_epochs = config_dict.FieldReference(200, field_type=int)  # typed: recipes set None
  c.total_steps = config_dict.placeholder(int)
  c.warmup_epochs = config_dict.FieldReference(5, field_type=int)
  c.warmup_steps = config_dict.placeholder(int)
  c.model = default_model_config()
  c.objective = ml_collections.ConfigDict(dict(
      name=objective, temperature=0.1, head_hidden=2048, head_layers=3, head_out=128,
      loss_impl="global"))
  c.data = default_data_config()
  c.optim = ml_collections.ConfigDict(dict(
      name="sgd", base_lr=0.32, base_batch_size=1024, momentum=0.9, nesterov=False,
      weight_decay=1e-6, lars_trust=0.001, lars_eps=0.0, b1=0.9, b2=0.999, eps=1e-8,
      grad_clip=config_dict.placeholder(float), schedule="cosine",
      # The learning rate the linear warm-up starts from (SlowFast: WARMUP_START_LR).
      warmup_start_lr=0.0))
  # Checkpoints in WORKDIR/checkpoints: every N steps and at the end, newest `keep` kept.
  c.checkpoint = ml_collections.ConfigDict(dict(every_steps=1000, keep=3, async_save=True))
  # DIR/metrics.jsonl and TensorBoard events every N steps (process 0 only); with
  # TensorBoard, a picture of the first batch's clips as the step sees them (show_clips').
  c.log = ml_collections.ConfigDict(dict(every_steps=50, tensorboard=True,
                                         first_batch_picture=True))
  # Devices and processes: BatchNorm over the global batch ('sync', the paper) or per
  # device ('local'); batches assembled on device this many steps ahead; a persistent XLA
  # compilation cache (restarts skip compiling); explicit multi-process set-up (otherwise
  # read from the environment, see cvrl.core.parallel). Parameters and optimizer state
  # 'replicated' on every device or 'fsdp' (sharded over the devices; arrays under
  # fsdp_min_kib stay whole); the summary job sizes that state for `summary_devices`
  # (None: this machine's) and, with summary_compile, compiles the pretraining step on
  # that many of this machine's devices for XLA's memory analysis (off: seconds, not minutes).
  c.parallel = ml_collections.ConfigDict(dict(
      batch_norm="sync", device_prefetch=2, param_sharding="replicated",
      fsdp_min_kib=64.0,
      summary_devices=config_dict.placeholder(int), summary_compile=False,
      compilation_cache_dir=config_dict.placeholder(str),
      coordinator_address=config_dict.placeholder(str),
      num_processes=config_dict.placeholder(int),
      process_id=config_dict.placeholder(int)))
  # Evaluators watching the encoder during pretraining: name -> a dict of fields, `kind`
  # (a module of cvrl/eval/: knn / linear / multiview) and any of that kind's constructor's
  # fields (every_steps, init, ...; the rest default, cvrl/eval/<kind>.py).
  c.evals = ml_collections.ConfigDict()
  return c


def config_from_command_line(argv: list[str]):
  """The locked config `python -m cvrl.main ARGV` would run: `--config=FILE[:arg]` and any
  `--config.key=value` overrides, parsed by the same flags (for tools that launch or
  inspect jobs without running them)."""
  argv = ["cvrl.main", *argv]
  from absl import flags  # pylint: disable=import-outside-toplevel
  from ml_collections import config_flags  # pylint: disable=import-outside-toplevel
  fv = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "", flag_values=fv, lock_config=True,
                                  sys_argv=argv)
  flags.DEFINE_string("workdir", None, "", flag_values=fv)
  try:  # a user's mistake (cvrl.core.cli.explain): ConfigError, one line
    fv(argv)
  except (flags.Error, AttributeError, KeyError, OSError) as e:
    message = cli.explain(argv, e, fv)
    if message is None:
      raise
    raise ConfigError(message) from None
  message = cli.missing_config_file(argv, fv)
  if message:
    raise ConfigError(message)
  return fv.config


# ------------------------------------------------------------------ downstream jobs

def eval_fields() -> ml_collections.ConfigDict:
  """`config.evaluate`: the multi-view test (CVRL: 10 clips x 3 crops), and the fields an
  evaluator mode takes (knn: TCLR's retrieval; None: the evaluator's default)."""
  return ml_collections.ConfigDict(dict(
      mode="multiview",           # any evaluator kind (a module of cvrl/eval/, e.g. knn)
      num_clips=10, num_crops=3,  # CVRL: 10 clips x 3 crops of eval_crop_size
      batch_size=32,              # global, in videos
      run_dir="",                 # multiview: workdir of a probe / finetune run
      save_scores=True,
      fuse_with="",               # comma-separated scores.npz of other runs
      fusion="mean",
      # Another mode: views per video (features averaged), kNN neighbours, vote,
      # temperature and recall@k; None: cvrl/eval/<mode>.py's default.
      knn_clips=config_dict.placeholder(int), knn_crops=config_dict.placeholder(int),
      knn_k=config_dict.placeholder(int), knn_vote=config_dict.placeholder(str),
      knn_temperature=config_dict.placeholder(float),
      recall_ks=config_dict.placeholder(tuple),
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
  """`config.optim`: cvrl.engine.optim's fields (pretraining's defaults) with `overrides`."""
  c = ml_collections.ConfigDict(pretrain_config().optim.to_dict(preserve_field_references=True))
  c.update(overrides)
  return c


def _encoder_source(c: ml_collections.ConfigDict) -> None:
  c.seed = 0
  c.pretrained = ""  # checkpoint (the encoder is rebuilt from its stored config)
  c.pretrained_step = config_dict.placeholder(int)  # None: the latest
  c.random_init = False  # a random-init `config.model` instead (no checkpoint)
  c.model = default_model_config()  # only read with random_init
  c.data = default_data_config()
  # None: frames, stride, crop and test sizes as the checkpoint's (cvrl.engine.clip_shape)
  from_checkpoint(c.data)
  c.data.num_classes = config_dict.placeholder(int)  # None: from the source
  c.data.num_train_examples = config_dict.placeholder(int)  # None: counted


def _engine_sections(c: ml_collections.ConfigDict, log_every: int) -> None:
  """checkpoint / log / parallel exactly as pretraining has them."""
  pre = pretrain_config()  # a fresh one: its sections (typed placeholders kept)
  c.checkpoint = pre.checkpoint
  c.log = pre.log
  c.log.every_steps = log_every
  c.parallel = pre.parallel


def probe_config() -> ml_collections.ConfigDict:
  """Every field the probe job reads, at CVRL's K600 linear-eval values (Qian et al., CVPR
  2021)."""
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


# ------------------------------------------------------------- probing a pretraining

def demo_probe_fields() -> ml_collections.ConfigDict:
  """A short probe on cached features of the synthetic data (the demo's encoder)."""
  return ml_collections.ConfigDict(dict(
      batch_size=32, total_epochs=30, warmup_epochs=2, base_lr=1.0, momentum=0.9,
      # Features of one un-augmented clip per video (feature_epochs=0): at 32 x 32 the
      # probe's resized crops often cut the object out (README, "Quality benchmark").
      total_steps=config_dict.placeholder(int), warmup_steps=config_dict.placeholder(int),
      weight_decay=0.0, extract_features=True, feature_epochs=0, normalize=True,
      random_baseline=True, num_clips=2, num_crops=1, eval_batch_size=16, log_every_steps=50,
      eval_resize=config_dict.placeholder(int), eval_crop_size=config_dict.placeholder(int),  # None: the pretraining's crop_size
      # The demo's motion-direction data ('motion' kind) would change class under a
      # horizontal flip; its object + action classes do not. None: the probe's 0.5.
      flip_prob=0.0))


def probe_config_for(pretrain_config, checkpoint_dir: str, p=None) -> ml_collections.ConfigDict:
  """A probe job's config for a pretraining run's checkpoint: its data and model, the
  probe augmentation (crop + flip), and the fields of `p` (default: pretrain_config.probe,
  else `demo_probe_fields()`; the fields it lacks at demo_probe_fields')."""
  pre = filled(pretrain_config)
  p = _fill(_copy(p if p is not None else pre.get("probe") or {}), _defaults(demo_probe_fields))
  c = probe_config()
  c.seed = int(pre.seed)
  c.pretrained = checkpoint_dir
  c.model = _copy(pre.model)
  data = _copy(pre.data)
  c.data = set_probe_augmentation(data)
  if p["flip_prob"] is not None:
    c.data.augmentation.flip_prob = float(p["flip_prob"])
  # Test at the pretraining's resolution unless told otherwise (the data defaults, 256,
  # are the paper's for 224 training crops).
  c.data.eval_resize = int(p["eval_resize"] or data.crop_size)
  c.data.eval_crop_size = int(p["eval_crop_size"] or data.crop_size)
  c.batch_size = int(p["batch_size"])
  for key in ("total_epochs", "total_steps", "warmup_epochs", "warmup_steps"):
    c[key] = p[key]
  c.optim.update(base_lr=float(p["base_lr"]), base_batch_size=int(p["batch_size"]),
                 momentum=float(p["momentum"]), weight_decay=float(p["weight_decay"]))
  for key in ("extract_features", "feature_epochs", "normalize", "random_baseline"):
    c.probe[key] = p[key]
  c.evaluate.num_clips = int(p["num_clips"])
  c.evaluate.num_crops = int(p["num_crops"])
  c.evaluate.batch_size = int(p["eval_batch_size"])
  c.log.every_steps = int(p["log_every_steps"])
  return c


# ------------------------------------------------------------- configs runs stored

def _fill(section: ml_collections.ConfigDict, defaults: dict) -> ml_collections.ConfigDict:
  """`section` with the keys it lacks set from `defaults`, section by section, in place."""
  for key, value in defaults.items():
    if key not in section:
      section[key] = value
    elif isinstance(value, dict) and isinstance(section[key], ml_collections.ConfigDict):
      _fill(section[key], value)
  return section


def _copy(given) -> ml_collections.ConfigDict:
  """An unlocked ConfigDict copy of `given` (a dict or a ConfigDict)."""
  if isinstance(given, ml_collections.ConfigDict):
    given = given.to_dict(preserve_field_references=True)
  return ml_collections.ConfigDict(given)


def _defaults(make) -> dict:
  return make().to_dict(preserve_field_references=True)


# A job's base config: what a config of that job lacks is its default there.
BASE_CONFIGS = {"pretrain": pretrain_config, "probe": probe_config,
                "finetune": finetune_config, "evaluate": evaluate_config}


def filled(config) -> ml_collections.ConfigDict:
  """A copy of a config a run stored or a caller built (a checkpoint's, results.json's; a
  dict or a ConfigDict), the fields it lacks (a config from before them) at its job's
  defaults: filled once where such a config is read, so that every reader reads its fields
  as they are. The method's fields (config.objective) and the evaluators' (config.evals)
  are their constructors' schemas, left as given (`objectives.get(..., stored=True)`)."""
  out = _copy(config)
  make = BASE_CONFIGS.get(out.get("job"))
  if make is None:  # no job's config: nothing to fill from
    return out
  return _fill(out, {k: v for k, v in _defaults(make).items() if k not in ("objective", "evals")})


def filled_model(model) -> ml_collections.ConfigDict:
  """A stored encoder's config (a classifier's model.json) with the fields it lacks (a file
  from before them) at default_model_config's."""
  return _fill(_copy(model), _defaults(default_model_config))


# ----------------------------------------------------- recipe pieces the configs share

# The rho study's backbone: Slow-only R50 8x8 (SlowFast's SLOW_8x8_R50), cvrl.models' 'slow'.
SLOW_R50 = dict(depth=50, preset="slow")


def kinetics_rho(config: ml_collections.ConfigDict, *, num_train_examples: int,
                 train_paths: str = "/path/to/k400/train-*.tfrecord") -> None:
  """Kinetics-400 clips as the rho-methods use them: 8 frames at stride 8, 224 crops,
  the study's augmentation (Feichtenhofer et al., CVPR 2021). In place."""
  config.data.update(source="tfrecord", train_paths=train_paths,
                     num_train_examples=num_train_examples, num_classes=400, num_frames=8,
                     stride=8, crop_size=224)
  set_rho_augmentation(config.data)


def slowfast_solver(config: ml_collections.ConfigDict, *, name: str, base_lr: float,
                    weight_decay: float) -> None:
  """The rho study's solver as SlowFast's contrastive_ssl configs run it (SOLVER defaults
  included): 200 epochs, one half-cosine over the whole run that the 35-epoch linear
  warm-up from 0.001 joins, momentum 0.9 with Nesterov, base_lr per 64 videos scaled
  linearly; 'lars' (trust 0.001, BN parameters and biases excluded) or plain 'sgd'. In place."""
  config.warmup_epochs = 35
  config.optim.update(name=name, base_lr=base_lr, base_batch_size=64, momentum=0.9,
                      nesterov=True, weight_decay=weight_decay, lars_trust=0.001,
                      schedule="half_cosine", warmup_start_lr=0.001)


def shrink_to_tiny(config: ml_collections.ConfigDict, *, preset: str = "r3d18",
                   num_frames: int = 4, batch_size: int = 8, steps: int = 24,
                   crop_size: int = 16) -> None:
  """R3D-18 at width 0.125 on small synthetic clips, a few steps, float32. In place."""
  config.model.update(depth=18, width=0.125, preset=preset, dtype="float32", remat=False)
  config.batch_size = batch_size
  config.total_steps, config.total_epochs = steps, None
  config.warmup_steps, config.warmup_epochs = 1, None
  config.optim.base_batch_size = batch_size
  data = config.data
  data.update(source="synthetic", num_train_examples=None, num_frames=num_frames, stride=2,
              crop_size=crop_size, eval_resize=crop_size, eval_crop_size=crop_size,
              cycle_length=2, prefetch=1)
  data.synthetic.update(num_train_videos=16, num_eval_videos=8, num_classes=4,
                        num_frames=64, size=24, num_shards=2)
  if "checkpoint" in config:
    config.checkpoint.update(every_steps=max(1, steps // 2), keep=2)
  if "log" in config:
    config.log.update(every_steps=1, tensorboard=False)
