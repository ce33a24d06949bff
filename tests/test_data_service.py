"""Input on the tf.data service (cvrl.data.service), on 127.0.0.1: a dispatcher and two
workers started through the launcher (subprocesses, free ports) serve the demo's pipeline.
The service's batches hold exactly the local pipeline's examples (content, label, example
id, epoch); a SIGKILLed worker loses only the rest of its epoch and duplicates nothing, with
one warning line; the demo's pretraining and its evaluator go on through the service when a
worker is killed mid-run, and the run stops with one line and exit 2 within
data.service_timeout once its last worker dies, as it does when the dispatcher is
unreachable or has no worker; the launcher stops with exit 0 on SIGTERM."""
import collections
import gc
import hashlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time

import ml_collections
import numpy as np
import pytest

import configs.demo as demo
from cvrl.core.errors import ConfigError
from cvrl.data import pipeline
from cvrl.data import sources
from cvrl.data import service
from _processes import metrics_rows, wait_for

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VIDEOS, BATCH = 24, 4  # 6 batches per epoch, no remainder
ENV = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))


class Launched:
  """A `python -m cvrl.data.service ...` process; its output goes to a file."""

  def __init__(self, tmp, name, *args):
    self.log = os.path.join(tmp, f"{name}.log")
    with open(self.log, "w") as out:
      self.proc = subprocess.Popen([sys.executable, "-m", "cvrl.data.service", *args],
                                   cwd=ROOT, env=ENV, stdout=out, stderr=subprocess.STDOUT)
    self.port = None

  def output(self):
    with open(self.log) as f:
      return f.read()

  def ready(self, timeout=180):
    assert wait_for(lambda: "ready on port" in self.output(), self.proc, timeout), self.output()
    line = next(l for l in self.output().splitlines() if "ready on port" in l)
    self.port = int(line.rsplit(" ", 1)[1])
    return self


def worker(tmp, dispatcher_port, name):
  return Launched(tmp, name, "worker", f"--dispatcher=localhost:{dispatcher_port}",
                  "--port=0", "--host=localhost")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
  tmp = str(tmp_path_factory.mktemp("service"))
  dispatcher = Launched(tmp, "dispatcher", "dispatcher", "--port=0",
                        f"--work_dir={os.path.join(tmp, 'journal')}").ready()
  workers = [worker(tmp, dispatcher.port, f"worker{i}") for i in range(2)]
  for w in workers:
    w.ready()
  yield {"tmp": tmp, "dispatcher": dispatcher, "workers": workers}
  service.stop_watchdogs()
  for p in [dispatcher] + workers:
    if p.proc.poll() is None:
      p.proc.kill()
      p.proc.wait()


def data_config(tmp, address=""):
  cfg = demo.get_config(f"steps=4,probe=False,videos={VIDEOS},batch_size={BATCH}").data
  cfg.synthetic.update(dir=os.path.join(tmp, "videos"), num_eval_videos=10)
  cfg.service = address
  cfg.service_timeout = 20.0
  sources.prepare(cfg)
  return cfg


def build(cfg, train=True):
  sampler = {"name": "cvrl"} if train else {"name": "multiview", "num_clips": 2, "num_crops": 1}
  return pipeline.build_dataset(cfg, sampler=sampler, train=train, batch_size=BATCH, seed=0,
                                process_index=0, process_count=1, label_fraction=1.0)


def rows(batches):
  """One row per example: (example id, epoch, label, hash of its video [+ photometric])."""
  out = []
  for b in batches:
    for i in range(len(b["label"])):
      digest = hashlib.sha1(b["video"][i].tobytes())
      if "photometric" in b:
        digest.update(b["photometric"][i].tobytes())
      out.append((int(b["index"][i]), int(b["stats"][i][0]), int(b["label"][i]), digest.hexdigest()))
  return out


def local_epochs(cfg, last_epoch):
  """{epoch: Counter of rows} of the local pipeline, epochs 0..last_epoch."""
  epochs = collections.defaultdict(collections.Counter)
  ds = build(data_config_like(cfg, ""))
  for batch in ds.as_numpy_iterator():
    for row in rows([batch]):
      epochs[row[1]][row] += 1
    if min(r[1] for r in rows([batch])) > last_epoch:
      break
  return {e: c for e, c in epochs.items() if e <= last_epoch}


def data_config_like(cfg, address):
  out = cfg.copy_and_resolve_references()
  out.service = address
  return out


def by_epoch(service_rows):
  epochs = collections.defaultdict(collections.Counter)
  for row in service_rows:
    epochs[row[1]][row] += 1
  return epochs


def _read_and_release(where, reads):
  """Reads `reads` elements of a distributed dataset; (its watchdog, the watchdog's thread)
  while the iterator alone holds the dataset, then the iterator released too."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  cfg = ml_collections.ConfigDict({"service": where, "service_timeout": 5.0})
  ds = service.distribute(tf.data.Dataset.range(100), cfg)
  it = iter(ds)
  assert [int(next(it)) for _ in range(reads)] == list(range(reads))
  del ds
  dog = service._watchdog(where, 5.0)  # pylint: disable=protected-access
  thread = dog._thread  # pylint: disable=protected-access
  assert dog.armed and thread.is_alive()  # the iterator still reads
  del it
  return dog, thread


def test_releasing_the_dataset_stops_its_watchdog():
  """No explicit stop: once its dataset and iterator are released, the watchdog stops
  (it would otherwise poll the service for ever); a later dataset starts it again."""
  from tensorflow.data.experimental import service as tf_service
  dispatcher = tf_service.DispatchServer(tf_service.DispatcherConfig(port=0))
  where = dispatcher.target.split("://")[1]
  one = tf_service.WorkerServer(tf_service.WorkerConfig(dispatcher_address=where))
  try:
    for reads in (3, 1):
      dog, thread = _read_and_release(where, reads)
      assert not dog.armed
      thread.join(timeout=30)  # its look at the service in progress, then it ends
      assert not thread.is_alive()
  finally:
    one.stop()
    dispatcher.stop()


@pytest.mark.slow
def test_unreachable_dispatcher_or_no_worker_is_one_line_exit_2(cluster, tmp_path):
  from tensorflow.data.experimental import service as tf_service
  bare = tf_service.DispatchServer(tf_service.DispatcherConfig(port=0))  # no worker
  start = time.monotonic()
  with pytest.raises(ConfigError, match="has no reachable worker"):
    service.check(bare.target.split("://")[1], 3.0)
  assert time.monotonic() - start < 10
  bare.stop()
  # The job: a dispatcher that is not there (a closed port) -> one line, exit 2, bounded.
  s = socket.socket()
  s.bind(("127.0.0.1", 0))
  closed = f"127.0.0.1:{s.getsockname()[1]}"
  s.close()
  start = time.monotonic()
  proc = subprocess.run(
      [sys.executable, "-m", "cvrl.main", "--config=configs/demo.py:steps=4,probe=False,videos=24",
       f"--workdir={tmp_path}", f"--config.data.service={closed}",
       "--config.data.service_timeout=5", "--config.data.synthetic.num_eval_videos=10",
       f"--config.data.synthetic.dir={os.path.join(cluster['tmp'], 'videos')}"],
      cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
  elapsed = time.monotonic() - start
  errors = [l for l in proc.stderr.splitlines() if l.startswith("cvrl: error:")]
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert len(errors) == 1 and "no tf.data service dispatcher answers at" in errors[0], proc.stderr
  assert "Traceback" not in proc.stderr
  assert elapsed < 120, elapsed  # startup (imports, synthetic data) + the 5 s bound


@pytest.mark.slow
def test_service_batches_hold_the_local_pipelines_examples(cluster):
  address = f"localhost:{cluster['dispatcher'].port}"
  cfg = data_config(cluster["tmp"])
  # Evaluation: one pass is one split, produced whole by one worker: the same batches.
  local_eval = list(build(cfg, train=False).as_numpy_iterator())
  remote_eval = list(build(data_config_like(cfg, address), train=False).as_numpy_iterator())
  assert len(remote_eval) == len(local_eval) == 3  # 10 videos, batch 4, last one padded
  for a, b in zip(local_eval, remote_eval):
    assert sorted(a) == sorted(b)
    for key in a:
      np.testing.assert_array_equal(a[key], b[key], err_msg=key)
  # Training: epochs come from both workers at once; each whole epoch is the local epoch.
  ds = build(data_config_like(cfg, address))
  got = rows(ds.take(30).as_numpy_iterator())
  del ds
  epochs = by_epoch(got)
  local = local_epochs(cfg, max(epochs))
  complete = [e for e, c in epochs.items() if sum(c.values()) == VIDEOS]
  assert len(complete) >= 3, {e: sum(c.values()) for e, c in epochs.items()}
  for e, counts in epochs.items():
    if e in complete:
      assert counts == local[e], e
    else:  # in flight when reading stopped: a part of the local epoch
      assert not counts - local[e], e
  assert max(collections.Counter(got).values()) == 1


@pytest.mark.slow
def test_with_one_worker_a_resumed_run_reads_what_an_uninterrupted_run_would(cluster):
  """One worker produces the epochs in order: the local stream itself, and a run resumed at
  step s (here mid-epoch: epoch 1, offset 8) reads batches s, s+1, ... of it."""
  from tensorflow.data.experimental import service as tf_service
  dispatcher = tf_service.DispatchServer(tf_service.DispatcherConfig(port=0))
  where = dispatcher.target.split("://")[1]
  one = tf_service.WorkerServer(tf_service.WorkerConfig(dispatcher_address=where))
  cfg = data_config(cluster["tmp"])
  step, n = 8, 6
  local = list(build(cfg).take(step + n).as_numpy_iterator())
  resumed = pipeline.build_dataset(data_config_like(cfg, where), sampler={"name": "cvrl"},
                                   train=True, batch_size=BATCH, seed=0, start_step=step,
                                   process_index=0, process_count=1, label_fraction=1.0)
  got = list(resumed.take(n).as_numpy_iterator())
  del resumed
  service.stop_watchdogs()
  one.stop()
  dispatcher.stop()
  for a, b in zip(local[step:], got):
    for key in ("video", "photometric", "label", "index"):
      np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    np.testing.assert_array_equal(a["stats"][:, 0], b["stats"][:, 0])  # the epoch
  assert len(got) == n


@pytest.mark.slow
def test_a_killed_worker_loses_the_rest_of_its_epoch_and_duplicates_nothing(cluster, caplog):
  address = f"localhost:{cluster['dispatcher'].port}"
  cfg = data_config(cluster["tmp"])
  victim = cluster["workers"][1]
  ds = build(data_config_like(cfg, address))
  got, it = [], ds.as_numpy_iterator()
  with caplog.at_level(logging.WARNING):
    for _ in range(6):
      got += rows([next(it)])
    victim.proc.send_signal(signal.SIGKILL)
    victim.proc.wait()
    for _ in range(30):
      got += rows([next(it)])
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and "is unreachable" not in caplog.text:
      time.sleep(0.2)
  del it, ds
  gc.collect()
  warnings = [r.getMessage() for r in caplog.records if "is unreachable" in r.getMessage()]
  assert len(warnings) == 1 and f"localhost:{victim.port}" in warnings[0], warnings
  assert max(collections.Counter(got).values()) == 1  # nothing twice
  epochs = by_epoch(got)
  local = local_epochs(cfg, max(epochs))
  partial = [e for e, c in epochs.items() if sum(c.values()) < VIDEOS]
  # At most: the epoch the dead worker held, the one reading stopped in.
  assert len(partial) <= 2, {e: sum(c.values()) for e, c in epochs.items()}
  for e, counts in epochs.items():
    assert not counts - local[e], e  # every example is the local pipeline's, byte for byte
  # Batches went on with the survivor: 30 more batches, whole epochs among them.
  assert len(epochs) - len(partial) >= 4


# The demo's pretraining with its kNN evaluator every EVAL_EVERY steps, through the service:
# a worker is killed at metrics.jsonl's first row (the evaluator's at step 0), so every
# training step and the evaluator at EVAL_EVERY read after it; then the last workers die.
EVAL_EVERY = 20


@pytest.mark.slow
def test_a_run_goes_on_when_a_worker_is_killed_and_stops_in_one_line_when_the_last_dies(
    cluster, tmp_path):
  fresh = worker(cluster["tmp"], cluster["dispatcher"].port, "worker2").ready()
  cluster["workers"].append(fresh)
  workdir = str(tmp_path)
  cmd = [sys.executable, "-m", "cvrl.main",
         f"--config=configs/demo.py:steps=100000,probe=True,videos={VIDEOS},batch_size={BATCH}",
         f"--workdir={workdir}", f"--config.data.service=localhost:{cluster['dispatcher'].port}",
         f"--config.data.synthetic.dir={os.path.join(cluster['tmp'], 'videos')}",
         "--config.data.synthetic.num_eval_videos=10", "--config.data.service_timeout=5",
         "--config.log.every_steps=1", "--config.checkpoint.every_steps=100000",
         f"--config.evals.knn.every_steps={EVAL_EVERY}"]
  log = os.path.join(cluster["tmp"], "trainer.log")
  with open(log, "w") as out:
    proc = subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=out, stderr=subprocess.STDOUT)
  evaluated = lambda step: any(r.get("step") == step and "eval/knn/knn_accuracy" in r
                               for r in metrics_rows(workdir))
  try:
    assert wait_for(lambda: evaluated(0), proc, 600), open(log).read()[-5000:]
    fresh.proc.send_signal(signal.SIGKILL)
    # Training goes on, and the evaluator reads through the service after the kill too (a
    # finite pass must not wait on the dead worker's task).
    assert wait_for(lambda: evaluated(EVAL_EVERY), proc, 600), open(log).read()[-5000:]
    survived = open(log).read()
    service.stop_watchdogs()  # this process's own: the last workers die now
    for w in cluster["workers"]:
      if w.proc.poll() is None:
        w.proc.send_signal(signal.SIGKILL)
    killed = time.monotonic()
    rc = proc.wait(timeout=120)
    elapsed = time.monotonic() - killed
  finally:
    if proc.poll() is None:
      proc.kill()
  assert f"eval/knn step {EVAL_EVERY}:" in survived, survived[-3000:]
  assert max(r["step"] for r in metrics_rows(workdir) if "loss" in r) >= EVAL_EVERY
  assert len([l for l in survived.splitlines() if "is unreachable" in l]) == 1, survived[-5000:]
  text = open(log).read()
  errors = [l for l in text.splitlines() if l.startswith("cvrl: error:")]
  assert rc == 2, text[-5000:]
  assert len(errors) == 1 and "no reachable worker" in errors[0], text[-3000:]
  assert elapsed < 5 + 20, elapsed  # data.service_timeout, the watchdog's look, slack


@pytest.mark.slow
def test_launcher_stops_on_sigterm_with_exit_0(cluster):
  service.stop_watchdogs()
  for p in [cluster["dispatcher"]] + [w for w in cluster["workers"] if w.proc.poll() is None]:
    p.proc.send_signal(signal.SIGTERM)
    assert p.proc.wait(timeout=60) == 0, p.output()
    assert "stopped" in p.output().splitlines()[-1], p.output()
