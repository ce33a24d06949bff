"""The one entry point: `python -m cvrl.main --config=configs/<recipe>.py[:arg] --workdir=DIR`.

`config.job` picks what runs. Every check that can fail on a bad config (a misspelt key,
data paths that match no file, a checkpoint directory without a checkpoint) runs before
JAX compiles anything or the workdir is written, and fails with one line naming the fix
(`cvrl: error: ...`, exit 2; cvrl.core.cli). The log shows cvrl's own lines and warnings;
TensorFlow / absl / orbax lines only with `--verbosity=0` (or `-v 0`).
"""
from __future__ import annotations

from cvrl.core import cli

cli.quiet_native_logs()  # before anything imports TensorFlow

# pylint: disable=wrong-import-position
from absl import flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from cvrl.core import discovery  # noqa: E402
from cvrl.core import paths  # noqa: E402
from cvrl.data import sources  # noqa: E402
from cvrl.engine import checkpoint  # noqa: E402
from cvrl.models import validate_model_config  # noqa: E402

_CONFIG = _WORKDIR = None  # the flags' holders, once `define_flags` ran


def define_flags() -> None:
  """--config and --workdir, defined when this module runs as the program: importing it
  (for `run`, as experiments/bench_quality.py does beside flags of its own) defines none."""
  global _CONFIG, _WORKDIR  # pylint: disable=global-statement
  _CONFIG = config_flags.DEFINE_config_file(
      "config", None, "ml_collections config file, e.g. configs/demo.py or "
      "configs/cvrl_k600_r3d50.py:depth=152,width=2", lock_config=True)
  _WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints, logs and results go.")


from cvrl.core.errors import ConfigError  # noqa: E402  (defined apart so the data pipeline can raise it)


def job_module(name: str):
  """config.job names a module of cvrl/jobs/ with parse(config) and run(parsed, workdir) ->
  dict (cvrl.core.discovery): a new job is one new file there."""
  try:
    return discovery.module("cvrl.jobs", name, "config.job", entry="run")
  except ValueError as e:
    raise ConfigError(str(e)) from None


def parse(config) -> tuple[object, object]:
  """(the job's module, the config parsed by the job's `parse`, once): the checks shared by
  every job, then the job's own (its `parse`); a failed one is a ConfigError."""
  module = job_module(config.get("job"))
  try:
    if "model" in config:
      validate_model_config(config.model)
    return module, module.parse(config)
  except (ValueError, FileNotFoundError, NotImplementedError) as e:
    raise ConfigError(str(e)) from e


def check_inputs(data, split: str, pretrained: str, pretrained_step: int | None) -> None:
  """What the job will read is there, before the workdir is touched: `data` (config.data)'s
  source is a source and its check of `split` passes (every TFRecord glob matches a file),
  `pretrained` ('': none) holds a checkpoint (at `pretrained_step`)."""
  if data is not None and data.get("source"):
    try:  # the source exists; what it reads is there (its own check)
      sources.check(data, split)
    except ValueError as e:
      raise ConfigError(str(e)) from None
  if pretrained:
    try:
      checkpoint.find(pretrained, pretrained_step)
    except (OSError, ValueError) as e:
      raise ConfigError(f"config.pretrained: {e}; give a pretraining workdir, its "
                        "checkpoints/ directory or one step's directory") from None


def run(config, workdir: str | None):
  """Parses the config once (its checks), checks what it reads and that the workdir takes
  files (ConfigError, nothing written), then runs the parsed job."""
  module, job = parse(config)
  if workdir is None and getattr(module, "NEEDS_WORKDIR", True):
    raise ConfigError(f"job {config.job!r} needs --workdir")
  if getattr(module, "READS_INPUTS", True):
    check_inputs(config.get("data"), "eval" if config.get("job") == "evaluate" else "train",
                 "" if config.get("random_init") else config.get("pretrained") or "",
                 config.get("pretrained_step"))
  if workdir is not None:
    paths.check_workdir(workdir)  # created, a probe file written and removed
  return module.run(job, workdir)


def main(argv):
  """Config and data mistakes are the user's to fix: one line, no traceback (cli.run)."""
  if len(argv) > 1:
    raise ConfigError(f"unexpected arguments {argv[1:]}: flags are --config=FILE[:ARG], "
                      "--config.KEY=VALUE and --workdir=DIR")
  if _CONFIG.value is None:
    raise ConfigError("--config is required, e.g. --config=configs/demo.py")
  run(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
  define_flags()
  cli.run(main)
