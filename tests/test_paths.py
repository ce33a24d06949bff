"""cvrl.core.paths: local paths as before, URLs never made local; the workdir pre-flight
(a file, a folder without permission, an unreachable store: one line, exit 2, nothing
written); what only TensorFlow reads or writes gets a gs:// path unchanged."""
import json
import os
import socket
import subprocess
import sys

import pytest

from cvrl.core import paths
from cvrl.core.errors import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_local_paths_are_absolute_and_urls_stay_urls(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  assert os.fspath(paths.as_path("run")) == str(tmp_path / "run")
  assert os.fspath(paths.as_path("gs://bucket/run")) == "gs://bucket/run"
  assert paths.join("gs://bucket/run", "checkpoints", "7") == "gs://bucket/run/checkpoints/7"
  assert paths.join("run", "probe") == os.path.join("run", "probe")
  assert paths.is_url("gs://b/x") and not paths.is_url("/tmp/x") and not paths.is_url("gs:/x")


def test_write_json_appends_and_moves_locally(tmp_path):
  target = tmp_path / "a" / "b.json"
  paths.write_json(str(target), {"x": 1})
  assert json.loads(target.read_text()) == {"x": 1} and os.listdir(target.parent) == ["b.json"]
  log = paths.AppendFile(str(tmp_path / "m.jsonl"))
  log.write("1\n")
  log.close()
  log = paths.AppendFile(str(tmp_path / "m.jsonl"))
  log.write("2\n")
  log.close()
  assert (tmp_path / "m.jsonl").read_text() == "1\n2\n"
  (tmp_path / "s" / "d").mkdir(parents=True)
  (tmp_path / "s" / "d" / "f").write_text("x")
  paths.move_tree(str(tmp_path / "s"), str(tmp_path / "t"))
  assert (tmp_path / "t" / "d" / "f").read_text() == "x" and not (tmp_path / "s").exists()


def test_check_workdir_creates_it_and_leaves_no_probe(tmp_path):
  paths.check_workdir(str(tmp_path / "new" / "run"))
  assert os.listdir(tmp_path / "new" / "run") == []


def test_a_workdir_that_is_a_file_is_refused(tmp_path):
  (tmp_path / "f").write_text("x")
  with pytest.raises(ConfigError, match=r"workdir .*f is a file; give a directory"):
    paths.check_workdir(str(tmp_path / "f"))


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_a_workdir_without_permission_is_refused_and_nothing_is_left(tmp_path):
  (tmp_path / "ro").mkdir()
  os.chmod(tmp_path / "ro", 0o500)
  try:
    with pytest.raises(ConfigError, match=r"cannot be written .*Permission"):
      paths.check_workdir(str(tmp_path / "ro" / "a" / "b"))
  finally:
    os.chmod(tmp_path / "ro", 0o700)
  assert os.listdir(tmp_path / "ro") == []


def test_a_probe_that_cannot_be_written_removes_what_it_created(tmp_path, monkeypatch):
  def refuse(self, *args, **kwargs):
    raise PermissionError(13, "Permission denied", os.fspath(self))
  monkeypatch.setattr(type(paths.as_path(tmp_path)), "write_text", refuse)
  with pytest.raises(ConfigError, match=r"a/b cannot be written \(PermissionError"):
    paths.check_workdir(str(tmp_path / "a" / "b"))
  assert os.listdir(tmp_path) == []


def closed_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_an_unreachable_store_is_one_line_in_seconds(tmp_path):
  env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
             STORAGE_EMULATOR_HOST=f"http://127.0.0.1:{closed_port()}", EPATH_USE_TF="false")
  r = subprocess.run([sys.executable, "-m", "cvrl.main", f"--config={ROOT}/configs/demo.py",
                      "--workdir=gs://bucket/run"], cwd=tmp_path, env=env,
                     capture_output=True, text=True, timeout=300)
  lines = r.stderr.strip().splitlines()
  assert r.returncode == 2 and len(lines) == 1, r.stderr[-3000:]
  assert lines[0].startswith("cvrl: error: gs://bucket/run: cannot reach the store at 127.0.0.1")
  assert os.listdir(tmp_path) == []  # no local gs: folder, nothing else


def test_tensorflow_only_paths_reach_tensorflow_unchanged(monkeypatch):
  """TFRecord globs and TensorBoard's event folder are TensorFlow's to open (its own GCS
  client): handed over exactly as given, never made local."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  from cvrl.data.sources import tfrecord  # pylint: disable=import-outside-toplevel
  from cvrl.engine import metrics  # pylint: disable=import-outside-toplevel
  seen = []
  monkeypatch.setattr(tf.io.gfile, "glob", lambda p: seen.append(p) or [p])
  assert tfrecord.resolve_paths("gs://b/train-*.tfrecord,gs://b/x") == [
      "gs://b/train-*.tfrecord", "gs://b/x"]
  assert seen == ["gs://b/train-*.tfrecord", "gs://b/x"]
  monkeypatch.setattr(tf.summary, "create_file_writer", lambda d: seen.append(d) or None)
  monkeypatch.setattr(paths, "AppendFile", lambda p: seen.append(p))
  metrics.MetricWriter("gs://b/run", tensorboard=True)
  assert seen[2:] == ["gs://b/run/metrics.jsonl", "gs://b/run"]
