"""The default log is cvrl's own lines: TensorFlow's C++ lines (oneDNN, 'All log messages
before absl::InitializeLog()'), absl / orbax records below ERROR appear only with
--verbosity (cvrl.core.cli)."""
import logging
import os
import subprocess
import sys

import pytest

from cvrl.core import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ORBAX_FILE = "/venv/site-packages/orbax/checkpoint/type_handler_registry.py"


def record(pathname, level, name="absl"):
  return logging.LogRecord(name, level, pathname, 1, "message", None, None)


def test_library_records_below_error_are_dropped():
  own = os.path.join(ROOT, "cvrl", "train", "engine.py")
  keep = cli.OwnLinesFilter()
  assert keep.filter(record(own, logging.WARNING))  # cvrl's warnings (SIGTERM, ...)
  assert keep.filter(record(os.path.join(ROOT, "experiments", "sweep.py"), logging.INFO))
  assert not keep.filter(record(ORBAX_FILE, logging.WARNING))  # "Type handler registry ..."
  assert not keep.filter(record(ORBAX_FILE, logging.INFO))
  assert not keep.filter(record("/x/jax/_src/xla_bridge.py", logging.INFO, "jax._src.xla_bridge"))
  assert keep.filter(record(ORBAX_FILE, logging.ERROR))  # errors always


def test_native_chatter_is_dropped_and_the_rest_kept(capfd):
  with cli.native_chatter_dropped():
    os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called are written"
                b" to STDERR\n")
    os.write(2, b"I0000 00:00:1796402966.847197   14033 port.cc:153] oneDNN custom operations"
                b" are on.\n")
    os.write(2, b"W1204 16:49:19.895300 140636265712512 foo.cc:108] a warning\n")
    os.write(2, b"E0000 00:00:1796402966.847197   14033 bar.cc:1] an error\n")
    os.write(2, b"something else\n")
  err = capfd.readouterr().err
  assert err == ("E0000 00:00:1796402966.847197   14033 bar.cc:1] an error\n"
                 "something else\n")


def test_verbosity_flag_is_read_from_the_command_line():
  assert not cli.verbosity_requested(["p", "--config=x"])
  assert cli.verbosity_requested(["p", "--verbosity=0"])
  assert cli.verbosity_requested(["p", "-v", "1"])
  assert not cli.verbosity_requested(["p", "--", "--verbosity=0"])


def _job(*extra):
  """cvrl.main on a glob matching nothing: TensorFlow is imported (the check reads the
  glob with it) and the job stops with its one line."""
  env = dict(os.environ, PYTHONPATH=ROOT)
  env.pop("TF_CPP_MIN_LOG_LEVEL", None)
  return subprocess.run(
      [sys.executable, "-m", "cvrl.main", "--config=configs/demo.py:steps=2,probe=False",
       "--config.data.source=tfrecord", "--config.data.train_paths=/nonexistent/*",
       "--workdir=/nonexistent/wd", *extra],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_a_job_prints_only_its_own_line_unless_verbose():
  quiet = _job()
  assert quiet.returncode == 2
  assert quiet.stderr.strip().splitlines() == [
      "cvrl: error: config.data.train_paths: TFRecord path or glob '/nonexistent/*' matches "
      "no file; set --config.data.train_paths=GLOB[,GLOB...] to the TFRecord shards"], quiet.stderr
  verbose = _job("--verbosity=0")
  assert verbose.returncode == 2
  assert len(verbose.stderr.strip().splitlines()) > 1, verbose.stderr  # TF's lines are back
