"""A user's mistake is one line, `cvrl: error: ...`, naming the fix, exit 2, before anything
is compiled or written (cvrl.core.cli, cvrl.main.check_inputs); --help exits 0; an unexpected
exception keeps its traceback. The same for the experiments' command lines."""
import os
import subprocess
import sys

import pytest

from configs import demo
from cvrl import config_lib, main
from cvrl.core import cli
from cvrl.core.errors import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(*args, module="cvrl.main"):
  env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
  env.pop("TF_CPP_MIN_LOG_LEVEL", None)
  return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=300)


def one_line(r, *needles):
  """Exit 2 and exactly one stderr line, `cvrl: error: ...` holding every needle."""
  lines = r.stderr.strip().splitlines()
  assert r.returncode == 2 and len(lines) == 1, (r.returncode, r.stderr[-3000:])
  assert lines[0].startswith("cvrl: error: ") and all(n in lines[0] for n in needles), lines[0]


@pytest.mark.parametrize("path,near", [
    ("optim.learning_rat", "did you mean optim.base_lr?"),
    ("optim.base_lrr", "did you mean optim.base_lr?"),
    ("batch_sise", "did you mean batch_size?"),
    ("data.augmentation.flip_prb", "did you mean data.augmentation.flip_prob or "),  # nearest first
    ("flip_prob", "did you mean data.augmentation.flip_prob?"),  # the key in another section
    ("optim.xyzzy", "the keys of optim are b1, b2, base_batch_size, base_lr"),
])
def test_unknown_key_names_the_nearest(path, near):
  c = demo.get_config()
  msg = cli.unknown_key(c, path)
  assert msg.startswith(f"unknown config key {path!r}; ") and near in msg, msg
  assert cli.unknown_key(c, "data.num_frames") is None and cli.unknown_key(c, "optim") is None


@pytest.mark.slow
def test_command_line_mistakes_are_one_line():
  one_line(run("--config=configs/demo.py", "--config.optim.learning_rat=0.1"),
           "'optim.learning_rat'", "optim.base_lr")
  one_line(run("--config=configs/nope.py", "--config.job=summary"), "no config file",
           "configs/nope.py")
  one_line(run("--config=configs/demo.py:stepz=4"), "'stepz'", "steps")
  one_line(run("--config=configs/demo.py", "--config.batch_size=many"), "batch_size", "many")
  one_line(run("--workdri=/tmp/x"), "workdri", "workdir")
  r = run("--help")
  assert r.returncode == 0 and "--config" in r.stdout and not r.stderr


def test_config_from_command_line_raises_one_line_config_errors():
  with pytest.raises(ConfigError, match=r"did you mean optim\.base_lr\?"):
    config_lib.config_from_command_line(["--config=configs/demo.py", "--config.optim.lr=1"])
  with pytest.raises(ConfigError, match="no config file"):
    config_lib.config_from_command_line(["--config=configs/nope.py"])


@pytest.mark.slow
def test_missing_inputs_fail_before_the_workdir_is_written(tmp_path):
  """Globs that match nothing and a checkpoint directory without a checkpoint."""
  c = demo.get_config("steps=2,probe=False")
  c.data.source, c.data.train_paths = "tfrecord", str(tmp_path / "none" / "*.tfrecord")
  with pytest.raises(ConfigError, match=r"config\.data\.train_paths: .* matches no file; set "):
    main.run(c, str(tmp_path / "wd"))
  from configs import demo_probe  # pylint: disable=import-outside-toplevel
  (tmp_path / "empty").mkdir()
  p = demo_probe.get_config(f"pretrained={tmp_path / 'empty'}")
  with pytest.raises(ConfigError, match="config.pretrained: no pretraining checkpoint in"):
    main.run(p, str(tmp_path / "wd"))
  assert not (tmp_path / "wd").exists()


@pytest.mark.slow
def test_a_glob_matching_nothing_is_one_line_and_writes_nothing(tmp_path):
  r = run("--config=configs/demo.py:steps=2,probe=False", "--config.data.source=tfrecord",
          f"--config.data.train_paths={tmp_path}/nothing-*", f"--workdir={tmp_path}/wd")
  one_line(r, "config.data.train_paths", "matches no file")
  assert not (tmp_path / "wd").exists()


@pytest.mark.slow
def test_an_unexpected_exception_keeps_its_traceback():
  code = ("from cvrl.core import cli\n"
          "def main(argv):\n  raise RuntimeError('a bug')\n"
          "cli.run(main)\n")
  r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                     timeout=120, env=dict(os.environ, PYTHONPATH=ROOT))
  assert r.returncode == 1 and "Traceback" in r.stderr and "RuntimeError: a bug" in r.stderr


@pytest.mark.slow
def test_experiments_help_exits_0_and_mistakes_are_one_line(tmp_path):
  r = run("--help", module="experiments.bench_quality")
  assert r.returncode == 0 and not r.stderr, r.stderr[-2000:]
  usage = r.stdout.splitlines()
  assert any(l.strip().startswith("[--steps=N]") for l in usage), usage[:5]  # not run together
  one_line(run("--seeds=x", module="experiments.bench_quality"), "--seeds")
  one_line(run("--methods=cvlr", module="experiments.bench_quality"), "cvlr", "cvrl")
  one_line(run("--config=configs/demo.py", f"--workdir={tmp_path}/sweep", "--launch=print",
               "--set=optim.lr=0.1,0.2", module="experiments.sweep"), "optim.base_lr")
  assert not (tmp_path / "sweep").exists()
  one_line(run("--repeats=x", module="experiments.bench_step"), "--repeats")
