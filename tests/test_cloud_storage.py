"""Workdirs and checkpoints on gs://, against a GCS API on this machine (gcp-storage-emulator,
in memory): the demo pretrains, resumes and is probed with every file in the bucket and no
local `gs:` folder; two processes started in different directories share one gs:// workdir
and resume. The clients are pointed at the emulator as the README says
(STORAGE_EMULATOR_HOST, TENSORSTORE_GCS_HTTP_URL, EPATH_USE_TF=false); TensorFlow's own GCS
client cannot be, so TensorBoard events are off here (--config.log.tensorboard=false)."""
import json
import os
import socket
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUCKET = "bucket"
DEMO = ["--config=configs/demo.py:steps=20,videos=256", "--config.checkpoint.every_steps=10",
        "--config.log.tensorboard=false",
        "--config.evals.knn.every_steps=20"]  # the kNN at step 0 and the end, not at 10 too


def free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def wait_for_port(port, proc, timeout=60):
  deadline = time.time() + timeout
  while time.time() < deadline:
    assert proc.poll() is None, f"the storage emulator exited ({proc.returncode})"
    with socket.socket() as s:
      if s.connect_ex(("127.0.0.1", port)) == 0:
        return
    time.sleep(0.1)
  raise TimeoutError(f"the storage emulator did not listen on {port}")


@pytest.fixture(scope="module")
def emulator(tmp_path_factory):
  """The emulator with an empty bucket; the clients of this process pointed at it."""
  port = free_port()
  log = open(tmp_path_factory.mktemp("emulator") / "log", "w")  # pylint: disable=consider-using-with
  proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "tests", "_gcs_emulator.py"),
                           "start", "--host", "127.0.0.1", f"--port={port}", "--in-memory",
                           f"--default-bucket={BUCKET}", "-q"], stdout=log, stderr=log)
  wait_for_port(port, proc)
  url = f"http://127.0.0.1:{port}"
  env = {"STORAGE_EMULATOR_HOST": url, "TENSORSTORE_GCS_HTTP_URL": url,
         "EPATH_USE_TF": "false", "NO_GCE_CHECK": "true"}  # no metadata server to ask
  saved = {k: os.environ.get(k) for k in env}
  os.environ.update(env)
  yield env
  for k, v in saved.items():
    if v is None:
      os.environ.pop(k, None)
    else:
      os.environ[k] = v
  proc.terminate()
  proc.wait(timeout=30)
  log.close()


def gs(path):
  from etils import epath  # pylint: disable=import-outside-toplevel  (after the env is set)
  return epath.Path(f"gs://{BUCKET}/{path}")


def run_cli(env, args, cwd=ROOT, timeout=1200):
  """(exit status, stdout + stderr, stderr) of `python -m cvrl.main ARGS`."""
  full = dict(os.environ, **env, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
  full.pop("XLA_FLAGS", None)
  proc = subprocess.run([sys.executable, "-m", "cvrl.main", *args], cwd=cwd, env=full,
                        capture_output=True, text=True, timeout=timeout)
  return proc.returncode, proc.stdout + proc.stderr, proc.stderr


def steps(path):
  return sorted(int(p.name) for p in gs(path).iterdir() if p.name.isdigit())


def no_local_gs_folder(*dirs):
  for d in dirs:
    for root, names, _ in os.walk(d):
      assert not [n for n in names if n.startswith("gs:")], (root, names)


@pytest.fixture(scope="module")
def demo(emulator, tmp_path_factory):
  """The demo pretrained on gs://bucket/run; then its latest checkpoint deleted and the
  same command run again."""
  cache = str(tmp_path_factory.mktemp("xla"))
  cmd = [*DEMO, f"--workdir=gs://{BUCKET}/run", f"--config.parallel.compilation_cache_dir={cache}"]
  first = run_cli(emulator, cmd)[:2]
  assert first[0] == 0, first[1][-5000:]
  saved = steps("run/checkpoints")
  gs("run/checkpoints/20").rmtree()
  second = run_cli(emulator, cmd)[:2]
  assert second[0] == 0, second[1][-5000:]
  return first[1], saved, second[1], cache


@pytest.mark.slow
def test_the_demo_pretrains_and_resumes_on_gs(demo):
  first, saved, second, _ = demo
  assert saved == [10, 20], first[-3000:]
  results = json.loads(gs("run/results.json").read_text())
  assert results["step"] == 20 and {"knn", "knn_random_init"} <= set(results["evals"])
  rows = [json.loads(l) for l in gs("run/metrics.jsonl").read_text().splitlines()]
  assert any("eval/knn/knn_accuracy" in r for r in rows) and rows[-1]["step"] == 20
  # Resumed from step 10 (the 20 deleted), finished and saved 20 again; its rows appended.
  assert "resumed from gs://bucket/run/checkpoints at step 10" in second, second[-3000:]
  assert steps("run/checkpoints") == [10, 20]
  assert len([r for r in rows if r.get("step") == 20 and "loss" in r]) == 2
  no_local_gs_folder(ROOT, os.getcwd())


@pytest.mark.slow
def test_the_probe_of_a_gs_checkpoint_writes_to_gs(demo, emulator):
  cache = demo[3]
  rc, out, _ = run_cli(emulator, [
      f"--config=configs/demo_probe.py:pretrained=gs://{BUCKET}/run,steps=20",
      f"--workdir=gs://{BUCKET}/probe", f"--config.parallel.compilation_cache_dir={cache}",
      "--config.data.synthetic.num_train_videos=256", "--config.data.num_train_examples=256",
      "--config.total_epochs=2", "--config.warmup_epochs=1", "--config.probe.random_baseline=false",
      "--config.log.tensorboard=false"])
  assert rc == 0, out[-5000:]
  results = json.loads(gs("probe/results.json").read_text())
  assert results["checkpoint"] == f"gs://{BUCKET}/run" and results["step"] == 20
  assert "top1" in results["metrics"]
  # The multi-view test's files and the saved classifier are there too.
  names = {p.name for p in gs("probe").iterdir()}
  assert {"model.json", "model", "confusion_matrix.csv", "scores.npz", "checkpoints"} <= names
  no_local_gs_folder(ROOT, os.getcwd())


def truncate_objects(folder):
  """A copy cut short: every array data object under `folder` keeps 10 bytes."""
  for p in folder.iterdir():
    if p.is_dir():
      truncate_objects(p)
    elif p.parent.name == "d":
      p.write_bytes(p.read_bytes()[:10])


@pytest.mark.slow
def test_a_truncated_checkpoint_on_gs_is_skipped_and_set_aside(demo, emulator):
  truncate_objects(gs("run/checkpoints/20/model"))
  cmd = [*DEMO, f"--workdir=gs://{BUCKET}/run", f"--config.parallel.compilation_cache_dir={demo[3]}"]
  rc, out, err = run_cli(emulator, cmd)
  assert rc == 0 and "Traceback" not in err, out[-3000:]
  warnings = [l for l in out.splitlines() if l.startswith("warning:")]
  assert len(warnings) == 1 and warnings[0].startswith(
      f"warning: checkpoint 20 in gs://{BUCKET}/run/checkpoints does not restore ("), warnings
  assert warnings[0].endswith(f"resuming from step 10, step 20 moved to "
                              f"gs://{BUCKET}/run/checkpoints/20.corrupt")
  assert steps("run/checkpoints") == [10, 20] and gs("run/checkpoints/20.corrupt/model").is_dir()


@pytest.mark.slow
def test_a_missing_bucket_or_checkpoint_on_gs_is_one_line(emulator, tmp_path):
  rc, out, _ = run_cli(emulator, [f"--config={ROOT}/configs/demo.py", "--workdir=gs://nobucket/run"],
                    cwd=tmp_path)
  assert rc == 2 and out.strip().splitlines() == [
      "cvrl: error: gs://nobucket/run: bucket gs://nobucket does not exist (or this account "
      "cannot see it); create it or fix the name"], out[-3000:]
  rc, out, _ = run_cli(emulator, [f"--config={ROOT}/configs/demo_probe.py:pretrained=gs://{BUCKET}/none",
                               f"--workdir=gs://{BUCKET}/p"], cwd=tmp_path)
  lines = out.strip().splitlines()
  assert rc == 2 and len(lines) == 1 and lines[0].startswith(
      f"cvrl: error: config.pretrained: no pretraining checkpoint at gs://{BUCKET}/none"), out
  assert os.listdir(tmp_path) == [] and not gs("p").exists()  # nothing written


def start_process(env, index, port, cwd, steps):
  full = dict(os.environ, **env, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
              JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo", JAX_ENABLE_COMPILATION_CACHE="false")
  full.pop("XLA_FLAGS", None)
  return subprocess.Popen([
      sys.executable, "-m", "cvrl.main", f"--config={ROOT}/configs/cvrl_tiny.py:steps={steps}",
      f"--workdir=gs://{BUCKET}/two", "--config.checkpoint.every_steps=2",
      "--config.log.tensorboard=false", f"--config.parallel.coordinator_address=127.0.0.1:{port}",
      "--config.parallel.num_processes=2", f"--config.parallel.process_id={index}"],
      cwd=cwd, env=full, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def run_two(env, cwds, steps=4):
  port = free_port()
  procs = [start_process(env, i, port, cwd, steps) for i, cwd in enumerate(cwds)]
  outs = [p.communicate(timeout=1200)[0] for p in procs]
  assert [p.returncode for p in procs] == [0, 0], [o[-3000:] for o in outs]
  return outs


@pytest.mark.slow
def test_two_processes_in_different_directories_share_a_gs_workdir(emulator, tmp_path):
  cwds = [tmp_path / "host0", tmp_path / "host1"]
  for d in cwds:
    d.mkdir()
  run_two(emulator, cwds)
  assert steps("two/checkpoints") == [2, 4]
  gs("two/checkpoints/4").rmtree()
  outs = run_two(emulator, cwds)
  assert f"resumed from gs://{BUCKET}/two/checkpoints at step 2" in outs[0], outs[0][-3000:]
  assert steps("two/checkpoints") == [2, 4]
  rows = [json.loads(l) for l in gs("two/metrics.jsonl").read_text().splitlines()]
  assert rows[-1]["step"] == 4
  assert [os.listdir(d) for d in cwds] == [[], []]  # no local gs: folder where they ran


def test_a_peers_probe_vanishing_mid_check_is_not_taken_for_a_file(emulator, monkeypatch):
  """Hosts check one shared workdir at once: the prefix holds only another host's probe,
  which is gone right after this host's first question to the store. The check still takes
  the prefix for a folder (asking exists() then is_dir() did not); an object is a file."""
  import gcsfs  # pylint: disable=import-outside-toplevel
  from cvrl.core import paths  # pylint: disable=import-outside-toplevel
  from cvrl.core.errors import ConfigError  # pylint: disable=import-outside-toplevel
  peer = gs("race/.cvrl-probe-peer")
  peer.write_text("peer\n")
  armed, real_info, real_as_path = [], gcsfs.GCSFileSystem._info, paths.as_path

  async def info(self, path, **kwargs):
    out = await real_info(self, path, **kwargs)
    if armed and armed.pop():  # the peer unlinks its probe
      await self._rm_file(f"{BUCKET}/race/.cvrl-probe-peer")
      self.invalidate_cache()
    return out

  def as_path(p):
    armed.append(True)  # from here on, check_workdir asks about the workdir itself
    return real_as_path(p)

  monkeypatch.setattr(gcsfs.GCSFileSystem, "_info", info)
  monkeypatch.setattr(paths, "as_path", as_path)
  assert os.fspath(paths.check_workdir(f"gs://{BUCKET}/race")) == f"gs://{BUCKET}/race"
  assert not armed and not gs("race").exists()  # the probes gone, the peer's and its own
  monkeypatch.undo()
  gs("object").write_text("x")
  with pytest.raises(ConfigError, match=f"workdir gs://{BUCKET}/object is a file; give a directory"):
    paths.check_workdir(f"gs://{BUCKET}/object")
