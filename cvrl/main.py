"""The one entry point: `python -m cvrl.main --config=configs/<recipe>.py[:arg] --workdir=DIR`.

`config.job` picks what runs. Every check that can fail on a bad config runs before JAX
compiles anything, and fails with one line naming the valid choices. The log shows cvrl's
own lines and warnings; absl / orbax INFO lines only with `--verbosity=0` (or `-v 0`).
"""
from __future__ import annotations

import importlib
import sys

from absl import app, flags, logging
from ml_collections import config_flags

# job -> module with run(config, workdir) -> dict
JOBS = {
    "pretrain": "cvrl.train.pretrain",
    "probe": "cvrl.train.probe",
    "finetune": "cvrl.train.finetune",
    "evaluate": "cvrl.train.evaluate",
    "summary": "cvrl.summary",
}

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "ml_collections config file, e.g. configs/demo.py or "
    "configs/cvrl_k600_r3d50.py:depth=152,width=2", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints, logs and results go.")


from cvrl.errors import ConfigError  # noqa: E402  (defined apart so the data pipeline can raise it)


def job_module(name: str):
  if name not in JOBS:
    raise ConfigError(f"config.job must be one of {sorted(JOBS)}, got {name!r}")
  return importlib.import_module(JOBS[name])


def quiet_libraries() -> None:
  """Warnings and errors only from absl and the libraries logging through it (orbax's
  INFO lines are most of a run's log otherwise), unless --verbosity was given."""
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)


def validate(config) -> object:
  """Checks shared by every job, then the job's own `validate` if it has one."""
  from cvrl.models import validate_model_config  # pylint: disable=import-outside-toplevel
  module = job_module(config.get("job"))
  try:
    if "model" in config:
      validate_model_config(config.model)
    if hasattr(module, "validate"):
      module.validate(config)
  except (ValueError, FileNotFoundError, NotImplementedError) as e:
    raise ConfigError(str(e)) from e
  return module


def run(config, workdir: str | None):
  module = validate(config)
  if workdir is None and getattr(module, "NEEDS_WORKDIR", True):
    raise ConfigError(f"job {config.job!r} needs --workdir")
  return module.run(config, workdir)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if _CONFIG.value is None:
    raise app.UsageError("--config is required, e.g. --config=configs/demo.py")
  quiet_libraries()
  try:
    run(_CONFIG.value, _WORKDIR.value)
  except ConfigError as e:
    # Config and data mistakes are the user's to fix: one line, no traceback.
    print(f"cvrl: error: {e}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  app.run(main)
