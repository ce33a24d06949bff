"""What every command line of cvrl does alike (`python -m cvrl.main`, `experiments/*`).

* A user's mistake (a misspelt flag or config key, a value of the wrong type, a config
  that cannot run, data that is not there) is ONE line on stderr, `cvrl: error: ...`,
  that names the fix, and exit status 2, before anything is compiled or written. Any
  other exception keeps its traceback.
* `--help` (`-h`, `--helpshort`, `--helpfull`) prints the usage to stdout and exits 0.
* The log is cvrl's own lines: TensorFlow's C++ INFO / WARNING lines are off
  (`quiet_native_logs`: TF_CPP_MIN_LOG_LEVEL=2 unless the user set it, and the lines its
  libraries print while they load dropped), and absl / orbax / TensorFlow / JAX Python log
  records below ERROR are dropped (`quiet_libraries`). `--verbosity=N` (`-v N`) turns
  both back on.

Importing this module imports nothing but the standard library, absl and cvrl.core.errors.
"""
from __future__ import annotations

import argparse
import contextlib
import difflib
import importlib.abc
import importlib.machinery
import importlib.util
import logging as std_logging
import os
import re
import sys
import tempfile

from cvrl.core.errors import ConfigError

PREFIX = "cvrl: error: "
USER_ERROR_EXIT = 2
HELP_FLAGS = ("--help", "-help", "-h", "-?", "--helpshort", "--helpfull")
# Other libraries' names for a cvrl config's fields: suggested for a misspelt key.
ALIASES = {"learning_rate": "base_lr", "lr": "base_lr", "wd": "weight_decay",
           "epochs": "total_epochs", "steps": "total_steps", "batch": "batch_size",
           "frames": "num_frames", "warmup": "warmup_epochs"}
_REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # cvrl/core/
_OWN_ROOTS = tuple(os.path.join(_REPO, d) + os.sep for d in ("cvrl", "experiments", "configs"))


def fail(message: str, code: int = USER_ERROR_EXIT):
  """Prints `cvrl: error: <message>` (its first line) on stderr and exits with `code`."""
  lines = [l.strip() for l in str(message).strip().splitlines() if l.strip()] or ["failed"]
  sys.stdout.flush()
  print(PREFIX + lines[0], file=sys.stderr, flush=True)
  sys.exit(code)


def pyplot(without: str):
  """matplotlib.pyplot on the file-only Agg backend, or None (after one line on stderr,
  `warning: ...`, saying what is done `without` it) where the `plots` extra is not
  installed."""
  try:
    import matplotlib  # pylint: disable=import-outside-toplevel
  except ImportError:
    print(f"warning: plots need matplotlib (pip install -e '.[plots]'); {without}",
          file=sys.stderr, flush=True)
    return None
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  return plt


def save_figure(plt, fig, path: str) -> None:
  """A matplotlib figure to `path` (the format from its extension), then closed."""
  fig.savefig(path)
  plt.close(fig)


# ----------------------------------------------------------------------------- logs

def verbosity_requested(argv=None) -> bool:
  """Whether the command line sets absl's --verbosity (-v): the libraries' lines wanted."""
  for arg in (sys.argv if argv is None else argv)[1:]:
    if arg == "--":
      break
    name = arg.split("=", 1)[0]
    if name in ("-v", "--v", "-verbosity", "--verbosity"):
      return True
  return False


def quiet_native_logs(argv=None) -> None:
  """Unless the command line asks for --verbosity: TF_CPP_MIN_LOG_LEVEL=2 (C++ errors only:
  no cpu_feature_guard / TFRecordDataset INFO lines) where the user has not set it, and,
  unless that is 0, the lines TensorFlow's libraries log while they load, before any level
  applies (oneDNN, 'All log messages before absl::InitializeLog()'), dropped from the
  first `import tensorflow`. Works only before TensorFlow is first imported."""
  if verbosity_requested(argv):
    return
  level = os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  if level != "0" and "tensorflow" not in sys.modules and not any(isinstance(f, _QuietImport)
                                                 for f in sys.meta_path):
    sys.meta_path.insert(0, _QuietImport())


# An INFO / WARNING line of absl's C++ log format, and absl's note that logging is not set up.
_NATIVE_CHATTER = re.compile(r"^(WARNING: All log messages before absl::InitializeLog\(\)"
                             r"|[IW]\d{4} \d\d:\d\d:\d+\.\d+ +\d+ [\w.]+:\d+\] )")


@contextlib.contextmanager
def native_chatter_dropped():
  """Whatever is written to file descriptor 2 inside is written again afterwards, less the
  libraries' INFO / WARNING lines (`_NATIVE_CHATTER`)."""
  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile() as tmp:
    os.dup2(tmp.fileno(), 2)
    try:
      yield
    finally:
      sys.stderr.flush()
      os.dup2(saved, 2)
      os.close(saved)
      tmp.seek(0)
      lines = tmp.read().decode("utf-8", "replace").splitlines(keepends=True)
      kept = "".join(l for l in lines if not _NATIVE_CHATTER.match(l))
      if kept:
        sys.stderr.write(kept)
        sys.stderr.flush()


class _QuietImport(importlib.abc.MetaPathFinder):
  """Runs the first `import tensorflow` inside `native_chatter_dropped`, then steps aside
  (a mere lookup, `importlib.util.find_spec('tensorflow')`, leaves it in place)."""

  def find_spec(self, name, path, target=None):
    if name != "tensorflow":
      return None
    spec = importlib.machinery.PathFinder.find_spec(name, path, target)
    if spec is None or not hasattr(spec.loader, "exec_module"):
      return spec
    run = spec.loader.exec_module

    def exec_module(module):
      if self in sys.meta_path:
        sys.meta_path.remove(self)
      with native_chatter_dropped():
        run(module)
    spec.loader.exec_module = exec_module
    return spec


def own_record(record: std_logging.LogRecord) -> bool:
  """A log record cvrl should show without --verbosity: cvrl's own, or an error."""
  return (record.levelno >= std_logging.ERROR or record.name.startswith("cvrl")
          or os.path.abspath(record.pathname).startswith(_OWN_ROOTS))


class OwnLinesFilter(std_logging.Filter):
  def filter(self, record):
    return own_record(record)


def quiet_libraries() -> None:
  """Without --verbosity: absl at WARNING, and the absl handler (where Python logging
  ends up under absl.app) passes only cvrl's records and errors."""
  from absl import flags, logging  # pylint: disable=import-outside-toplevel
  if verbosity_requested() or ("verbosity" in flags.FLAGS and flags.FLAGS["verbosity"].present):
    return
  logging.set_verbosity(logging.WARNING)
  handler = logging.get_absl_handler()
  if not any(isinstance(f, OwnLinesFilter) for f in handler.filters):
    handler.addFilter(OwnLinesFilter())


# ------------------------------------------------------------------- config overrides

def _is_section(value) -> bool:
  from ml_collections import config_dict  # pylint: disable=import-outside-toplevel
  return isinstance(value, config_dict.ConfigDict)


def key_paths(config, prefix: str = "") -> list[str]:
  """Every field path of a ConfigDict ('optim.base_lr', ...), sections included."""
  out = []
  for key in config.keys():
    out.append(prefix + key)
    if _is_section(config.get(key)):
      out.extend(key_paths(config.get(key), f"{prefix}{key}."))
  return out


def unknown_key(config, path: str) -> str | None:
  """None if `path` names a field of `config`; else the one-line message with the
  nearest valid keys ("did you mean optim.base_lr?")."""
  node, parts = config, path.split(".")
  for i, part in enumerate(parts):
    if not _is_section(node):
      return None  # inside a field's value (a dict, a dataclass): not ours to judge
    if part in node.keys():
      node = node.get(part)
      continue
    section = ".".join(parts[:i])
    siblings = sorted(node.keys())
    near = [ALIASES[a] for a in difflib.get_close_matches(part, ALIASES, 1, 0.8)
            if ALIASES[a] in siblings]
    near += difflib.get_close_matches(part, siblings, n=3, cutoff=0.6)
    elsewhere = [p for p in key_paths(config) if p.rsplit(".", 1)[-1] == part]
    near = [f"{section}.{k}" if section else k for k in dict.fromkeys(near)][:3] + elsewhere[:2]
    hint = (f"did you mean {' or '.join(near)}?" if near else
            f"the keys{' of ' + section if section else ''} are {', '.join(siblings)}")
    return f"unknown config key {path!r}; {hint}"
  return None


def unknown_override(argv, name: str = "config") -> str | None:
  """The message for the first `--<name>.<path>` override of argv that names no field of
  the config `--<name>=FILE[:ARG]` gives (None: all of them exist, or no config)."""
  # pylint: disable=import-outside-toplevel
  from ml_collections.config_flags.config_flags import ConfigFileFlagParser
  spec = next((a.split("=", 1)[1] for a in argv[1:] if a.startswith(f"--{name}=")), None)
  if spec is None:
    return None
  try:
    config = ConfigFileFlagParser(name, lock_config=False).parse(spec)
  except Exception:  # pylint: disable=broad-except  (reported as the flag's own error)
    return None
  for arg in argv[1:]:
    flag = arg.split("=", 1)[0].lstrip("-")
    for lead in (f"{name}.", f"no{name}."):
      if flag.startswith(lead):
        message = unknown_key(config, flag[len(lead):])
        if message:
          return message
  return None


# ------------------------------------------------------------------------ flag parsing

def flag_error_message(error: Exception) -> str:
  """One line from an absl flag error: a config file's own error (its last line) rather
  than the traceback ml_collections wraps it in."""
  text = str(error)
  if "Error whilst parsing config file" in text:
    last = [l.strip() for l in text.splitlines() if l.strip()][-1]
    return last.split(": ", 1)[1] if last.split(":", 1)[0].endswith("Error") else last
  return text.strip().splitlines()[0] if text.strip() else type(error).__name__


def parse_flags(argv):
  """absl's `flags_parser` for app.run: --help to stdout, exit 0; a flag or config key
  the program does not have, a bad value or a missing config file: one line, exit 2."""
  from absl import app, flags  # pylint: disable=import-outside-toplevel
  args = argv[1:argv.index("--")] if "--" in argv else argv[1:]
  wanted = [a for a in args if a in HELP_FLAGS]
  if wanted:
    app.usage(shorthelp=wanted[0] != "--helpfull", writeto_stdout=True, exitcode=0)
  try:
    rest = flags.FLAGS(argv)
  except (flags.Error, AttributeError, KeyError, OSError) as e:
    message = explain(argv, e)
    if message is None:
      raise
    fail(message)
  message = missing_config_file(argv)
  if message:
    fail(message)
  return rest


def explain(argv, error: Exception, flag_values=None) -> str | None:
  """The one line for a user's mistake that made parsing `argv` fail with `error`, or
  None when it is not one (the error keeps its traceback)."""
  from absl import flags  # pylint: disable=import-outside-toplevel
  message = missing_config_file(argv, flag_values) or unknown_override(argv)
  if message is None and isinstance(error, flags.Error):
    message = flag_error_message(error)
  return message


def missing_config_file(argv, flag_values=None) -> str | None:
  """The message for a `--NAME=FILE[:ARG]` config flag whose FILE could not be loaded
  (ml_collections defers that error to the config's first use)."""
  from absl import flags  # pylint: disable=import-outside-toplevel
  flag_values = flags.FLAGS if flag_values is None else flag_values
  for name, flag in flag_values._flags().items():  # pylint: disable=protected-access
    if type(flag.value).__name__ != "_ErrorConfig" and not _unloadable(argv, name, flag):
      continue
    spec = next((a.split("=", 1)[1] for a in argv[1:] if a.startswith(f"--{name}=")), "")
    return (f"--{name}: no config file {spec.split(':', 1)[0]!r} (paths are relative to the "
            f"working directory, e.g. --{name}=configs/demo.py)")
  return None


def _unloadable(argv, name, flag) -> bool:
  """A config flag not parsed yet (its parse failed) whose FILE does not exist."""
  if type(flag).__name__ != "_ConfigFlag" or flag.present:
    return False
  spec = next((a.split("=", 1)[1] for a in argv[1:] if a.startswith(f"--{name}=")), None)
  return spec is not None and not os.path.isfile(spec.split(":", 1)[0])


def run(main, argv=None) -> None:
  """app.run(main) with cvrl's conventions (module docstring): ConfigError and
  app.UsageError raised by `main` are the user's, one line and exit 2."""
  from absl import app  # pylint: disable=import-outside-toplevel
  quiet_native_logs(argv)

  def wrapped(args):
    quiet_libraries()
    try:
      return main(args)
    except (ConfigError, app.UsageError) as e:
      fail(str(e))
  app.run(wrapped, argv=argv, flags_parser=parse_flags)


def run_plain(main, *args):
  """`main(*args)` of a program that parses its own arguments (argparse,
  `ArgumentParser` below) under the same conventions as `run`."""
  from absl import logging  # pylint: disable=import-outside-toplevel
  quiet_native_logs()
  logging.use_absl_handler()
  quiet_libraries()
  try:
    return main(*args)
  except ConfigError as e:
    fail(str(e))


class ArgumentParser(argparse.ArgumentParser):
  """argparse with cvrl's conventions: a bad argument is one line, exit 2; -v/--verbosity
  lets the libraries' log lines through (read by `run_plain` from sys.argv)."""

  def __init__(self, *args, **kwargs):
    super().__init__(*args, **kwargs)
    self.add_argument("-v", "--verbosity", type=int, default=None,
                      help="show TensorFlow / absl / orbax log lines (absl's verbosity)")

  def error(self, message):
    fail(f"{message} (see {self.prog} --help)")
