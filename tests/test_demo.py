"""The demo from the README, end to end in subprocesses: its loss falls, its kNN evaluators
report during pretraining and beside a random-init encoder, its log is short; SIGKILL +
restart ends with the parameters of an uninterrupted run; SIGTERM saves a checkpoint,
exits 0; the retrieval config runs on its checkpoint."""
import json
import os
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx

from cvrl.engine import checkpoint
from _processes import committed_steps, wait_for

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 100  # the demo shortened: same model and data, fewer steps and videos
VIDEOS = 256
BATCH = 16  # configs/demo.py


def command(workdir, cache, *extra, probe=True):
  return [sys.executable, "-m", "cvrl.main",
          f"--config=configs/demo.py:steps={STEPS},probe={probe},videos={VIDEOS}",
          f"--workdir={workdir}",
          f"--config.parallel.compilation_cache_dir={cache}", "--config.checkpoint.every_steps=20",
          *extra]


def start(cmd):
  env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
  env.pop("XLA_FLAGS", None)  # one CPU device, as the README's command runs
  return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)


def finish(proc, timeout=1200):
  out = proc.communicate(timeout=timeout)[0]
  return proc.returncode, out


def model_arrays(workdir, step):
  _, model = checkpoint.load_pretrained(workdir, step)
  return [np.asarray(x) for x in jax.tree.leaves(nnx.state(model))]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
  return str(tmp_path_factory.mktemp("jax_cache"))


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory, cache):
  workdir = str(tmp_path_factory.mktemp("demo"))
  rc, out = finish(start(command(workdir, cache)))
  assert rc == 0, out[-5000:]
  return workdir, out


@pytest.mark.slow
def test_demo_runs_and_its_loss_falls(demo_run):
  workdir, out = demo_run
  rows = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  rows = [r for r in rows if "loss" in r]  # training rows (evaluators have their own)
  assert rows[-1]["step"] == STEPS
  losses = [r["loss"] for r in rows]
  # Below 0.95 x the loss of collapsed (all equal) embeddings, 2 ln(2B - 1), not just
  # below the loss of the random init, and its pretext accuracy above chance: the net
  # tells videos apart (5.83 against 6.87 at step 100 in one run).
  chance = 2 * np.log(2 * BATCH - 1)
  assert losses[-1] < min(0.95 * chance, losses[0]), losses
  assert rows[-1]["contrastive_accuracy"] > 2 / (2 * BATCH - 1), rows[-1]
  assert "ETA" in out and "clips/s" in out
  assert committed_steps(workdir)[-1] == STEPS
  assert len(out.splitlines()) <= 100, out  # cvrl's lines; orbax/absl INFO only with -v


@pytest.mark.slow
def test_demo_knn_evaluators_watch_pretraining_and_the_random_init(demo_run):
  workdir, out = demo_run
  rows = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  knn = [r for r in rows if "eval/knn/knn_accuracy" in r]
  assert [r["step"] for r in knn] == [0, STEPS // 2, STEPS]
  for r in knn:
    assert 0.0 <= r["eval/knn/knn_accuracy"] <= r["eval/knn/recall@5"] <= 1.0
    assert r["eval/knn/seconds"] > 0 and "loss" not in r  # apart from the training rows
  random = [r for r in rows if "eval/knn_random_init/knn_accuracy" in r]
  assert [r["step"] for r in random] == [STEPS]
  # The random-init encoder is the pretraining's own initialisation (same seed).
  assert random[0]["eval/knn_random_init/knn_accuracy"] == knn[0]["eval/knn/knn_accuracy"]
  # Pretraining already helps after 100 steps on 256 videos, a little: the demo's recipe
  # gains most after step 200 (README), and how much at step 100 moves with the machine's
  # float arithmetic (0.289 against 0.273 on one 2-core AMD machine, for this same code;
  # more on the machines of earlier CI runs). The 400-step gain is the README's table.
  assert knn[-1]["eval/knn/knn_accuracy"] > random[0]["eval/knn_random_init/knn_accuracy"]
  results = json.load(open(os.path.join(workdir, "results.json")))
  assert results["evals"]["knn"]["knn_accuracy"] == knn[-1]["eval/knn/knn_accuracy"]
  assert results["evals"]["knn_random_init"]["num_queries"] == knn[-1]["eval/knn/num_queries"]
  assert f"eval/knn step {STEPS}:" in out


@pytest.mark.slow
def test_retrieval_config_runs_on_the_demo_checkpoint(demo_run, tmp_path):
  workdir, _ = demo_run
  proc = start([sys.executable, "-m", "cvrl.main",
                "--config=configs/tclr_ucf101_retrieval.py:source=synthetic,frames=8,stride=2,"
                f"size=32,clips=2,pretrained={workdir}", f"--workdir={tmp_path}"])
  rc, out = finish(proc)
  assert rc == 0, out[-3000:]
  res = json.load(open(os.path.join(tmp_path, "results.json")))["metrics"]
  assert 0 <= res["recall@1"] <= res["recall@5"] <= res["recall@10"] <= res["recall@20"] <= 1
  assert 0 <= res["knn_accuracy"] <= 1 and res["num_queries"] > 0


@pytest.mark.slow
def test_sigkill_then_restart_ends_with_the_uninterrupted_parameters(demo_run, cache, tmp_path):
  reference, _ = demo_run
  workdir = str(tmp_path)
  proc = start(command(workdir, cache, probe=False))
  assert wait_for(lambda: 20 in committed_steps(workdir), proc), finish(proc)[1][-5000:]
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert STEPS not in committed_steps(workdir)  # killed mid-training
  rc, out = finish(start(command(workdir, cache, probe=False)))
  assert rc == 0, out[-5000:]
  assert "resumed from" in out
  for a, b in zip(model_arrays(reference, STEPS), model_arrays(workdir, STEPS), strict=True):
    np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_exits_0(cache, tmp_path):
  workdir = str(tmp_path)
  proc = start(command(workdir, cache, "--config.checkpoint.every_steps=1000", probe=False))
  metrics = os.path.join(workdir, "metrics.jsonl")
  assert wait_for(lambda: os.path.exists(metrics) and os.path.getsize(metrics) > 0, proc), \
      finish(proc)[1][-5000:]
  proc.send_signal(signal.SIGTERM)
  rc, out = finish(proc)
  assert rc == 0, out[-5000:]
  steps = committed_steps(workdir)
  assert len(steps) == 1 and 0 < steps[0] < STEPS, steps
  assert len(model_arrays(workdir, steps[0])) > 10
