"""Helpers for config files: `get_config(arg)` arguments and durations in one place."""
from __future__ import annotations

import ast
import math

import ml_collections
from ml_collections import config_dict


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


def steps(name: str, config: ml_collections.ConfigDict, *, num_examples: int | None = None,
          batch_size: int | None = None, default: int | None = None) -> int:
  """Resolves a duration given as `{name}_steps` or `{name}_epochs` into steps.

  Exactly one may be set (non-None). Epochs need the dataset size and the global batch,
  taken from the arguments or from `config.data.num_train_examples` and `config.batch_size`.
  """
  steps_key, epochs_key = f"{name}_steps", f"{name}_epochs"
  n_steps = config.get(steps_key)
  n_epochs = config.get(epochs_key)
  if n_steps is not None and n_epochs is not None:
    raise ValueError(f"set only one of config.{steps_key} and config.{epochs_key}")
  if n_steps is not None:
    return int(n_steps)
  if n_epochs is not None:
    if num_examples is None:
      num_examples = config.get("data", {}).get("num_train_examples")
    if batch_size is None:
      batch_size = config.get("batch_size")
    if not num_examples or not batch_size:
      raise ValueError(f"config.{epochs_key} needs the dataset size "
                       "(config.data.num_train_examples) and config.batch_size")
    return int(math.ceil(float(n_epochs) * num_examples / batch_size))
  if default is not None:
    return default
  raise ValueError(f"set config.{steps_key} or config.{epochs_key}")


def pretrain_config(objective: str = "cvrl") -> ml_collections.ConfigDict:
  """Every field a pretraining job reads, at the CVRL paper's values (Qian et al., CVPR 2021)."""
  # pylint: disable=import-outside-toplevel
  from cvrl.data.config import default_data_config
  from cvrl.models import default_model_config
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
  # DIR/metrics.jsonl and TensorBoard events every N steps (process 0 only).
  c.log = ml_collections.ConfigDict(dict(every_steps=50, tensorboard=True))
  # Devices and processes: BatchNorm over the global batch ('sync', the paper) or per
  # device ('local'); batches assembled on device this many steps ahead; a persistent XLA
  # compilation cache (restarts skip compiling); explicit multi-process set-up (otherwise
  # read from the environment, see cvrl.parallel).
  c.parallel = ml_collections.ConfigDict(dict(
      batch_norm="sync", device_prefetch=2,
      compilation_cache_dir=config_dict.placeholder(str),
      coordinator_address=config_dict.placeholder(str),
      num_processes=config_dict.placeholder(int),
      process_id=config_dict.placeholder(int)))
  # Evaluators watching the encoder during pretraining: name -> an entry of
  # cvrl.train.evaluators.evaluator_fields (kind knn / linear / multiview, every_steps, ...).
  c.evals = ml_collections.ConfigDict()
  return c


def config_from_command_line(argv: list[str]):
  """The locked config `python -m cvrl.main ARGV` would run: `--config=FILE[:arg]` and any
  `--config.key=value` overrides, parsed by the same flags (for tools that launch or
  inspect jobs without running them)."""
  argv = ["cvrl.main", *argv]
  from absl import flags  # pylint: disable=import-outside-toplevel
  from ml_collections import config_flags  # pylint: disable=import-outside-toplevel
  from cvrl import cli  # pylint: disable=import-outside-toplevel
  from cvrl.errors import ConfigError  # pylint: disable=import-outside-toplevel
  fv = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "", flag_values=fv, lock_config=True,
                                  sys_argv=argv)
  flags.DEFINE_string("workdir", None, "", flag_values=fv)
  try:  # a user's mistake (cvrl.cli.explain): ConfigError, one line
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
