"""Two processes on 127.0.0.1 (gloo CPU collectives, 2 devices each) pretrain together:
a SIGTERM to one of them stops both after the same step with a checkpoint, exit 0, and
identical parameters; their global batches are those of one process driving 4 devices.
A SIGKILL to one of them stops the other within two minutes with one cvrl line."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from _processes import metrics_rows
from _storage import free_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A worker script: HEAD (join-ready process: argv, devices, gloo, imports), the config `c`,
# RUN (join the processes, run, the full state's leaves), then what it writes.
HEAD = textwrap.dedent("""
    import hashlib, json, os, sys
    import jax
    process_id, num_processes, devices, port, workdir = sys.argv[1:6]
    jax.config.update("jax_num_cpu_devices", int(devices))
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    import numpy as np
    sys.path.insert(0, os.path.join({root!r}, "tests"))
    from test_jobs_pretrain import tiny_config
    from cvrl.jobs import pretrain
    from cvrl.engine import state as state_lib
""").format(root=ROOT)
RUN = textwrap.dedent("""
    if int(num_processes) > 1:
      c.parallel.coordinator_address = "127.0.0.1:" + port
      c.parallel.num_processes = int(num_processes)
      c.parallel.process_id = int(process_id)
    c.lock()
    out = pretrain.run(pretrain.parse(c), workdir)
    leaves = [np.asarray(x.addressable_data(0))
              for x in jax.tree.leaves(state_lib.full_state(out["state"]))]
""")
WORKER = HEAD + textwrap.dedent("""
    c = tiny_config(total_steps=1000, warmup_steps=1)  # runs until SIGTERM
    c.optim.base_lr = 1e-4
    c.checkpoint.every_steps = int(os.environ.get("CVRL_TEST_CKPT_EVERY", "1000"))
    c.log.every_steps = 1
    c.log.tensorboard = False
""") + RUN + textwrap.dedent("""
    assert jax.process_count() == int(num_processes), jax.process_count()
    digest = hashlib.sha256(b"".join(a.tobytes() for a in leaves)).hexdigest()
    with open(os.path.join(workdir, "result_%s_of_%s.json" % (process_id, num_processes)), "w") as f:
      json.dump({"digest": digest, "step": out["step"], "preempted": out["preempted"],
                 "devices": jax.device_count(), "local_devices": jax.local_device_count()}, f)
""")


def spawn(process_id, num_processes, devices, port, workdir, *args, worker=WORKER, cwd=ROOT,
          **extra_env):
  """One worker process: `worker` run in `cwd` with argv process_id, num_processes, devices,
  port, workdir, *args."""
  env = dict(os.environ, **extra_env, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
             TF_CPP_MIN_LOG_LEVEL="2")
  env.pop("XLA_FLAGS", None)
  env["JAX_ENABLE_COMPILATION_CACHE"] = "false"  # several devices per process: see conftest
  return subprocess.Popen([sys.executable, "-c", worker, str(process_id), str(num_processes),
                           str(devices), str(port), workdir, *args], cwd=cwd, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def run_until_preempted(procs, workdir, signal_to, min_logged=2, timeout=900):
  """Waits for `min_logged` metric lines, SIGTERMs procs[signal_to], returns outputs."""
  deadline = time.time() + timeout
  while len(metrics_rows(workdir)) < min_logged:
    assert time.time() < deadline and all(p.poll() is None for p in procs), \
        [p.communicate()[0][-3000:] for p in procs if p.poll() is not None]
    time.sleep(0.2)
  procs[signal_to].send_signal(signal.SIGTERM)
  outputs = [p.communicate(timeout=timeout)[0] for p in procs]
  for p, out in zip(procs, outputs):
    assert p.returncode == 0, out[-4000:]
  return outputs


@pytest.mark.slow
def test_two_processes_stop_together_with_identical_parameters(tmp_path):
  workdir = str(tmp_path / "two")
  port = free_port()
  procs = [spawn(i, 2, 2, port, workdir) for i in range(2)]
  run_until_preempted(procs, workdir, signal_to=1)  # the notice reaches a non-zero process
  results = [json.load(open(os.path.join(workdir, f"result_{i}_of_2.json"))) for i in range(2)]
  assert results[0]["devices"] == 4 and results[0]["local_devices"] == 2
  assert results[0]["preempted"] and results[1]["preempted"]
  assert results[0]["step"] == results[1]["step"] >= 2
  assert results[0]["digest"] == results[1]["digest"]
  # Both processes wrote the one checkpoint of the stop step; only process 0 wrote metrics
  # (one line per step, not two).
  assert os.listdir(os.path.join(workdir, "checkpoints")) == [str(results[0]["step"])]
  rows = metrics_rows(workdir)
  assert [r["step"] for r in rows] == list(range(2, results[0]["step"] + 1))

  # One process driving 4 devices sees the same global batches. The loss of step 2 is
  # that of the initial parameters (the warm-up's first update has lr 0) on global batch
  # 2: equal up to float rounding only if each process fed its own rows of it.
  single = str(tmp_path / "one")
  run_until_preempted([spawn(0, 1, 4, 0, single)], single, signal_to=0)
  one = metrics_rows(single)
  assert rows[0]["loss"] == pytest.approx(one[0]["loss"], rel=1e-5)
  assert rows[1]["loss"] == pytest.approx(one[1]["loss"], rel=1e-3)


@pytest.mark.slow
def test_lost_peer_stops_the_survivor_with_one_line(tmp_path):
  """SIGKILL process 1 after a checkpoint: process 0 exits (code 3) well within two
  minutes, its last line names the lost process, the step and the latest checkpoint, and
  that checkpoint is still readable."""
  from cvrl.core import runtime
  from cvrl.engine import checkpoint as checkpoint_lib
  workdir = str(tmp_path / "lost")
  port = free_port()
  procs = [spawn(i, 2, 2, port, workdir, CVRL_TEST_CKPT_EVERY="2") for i in range(2)]
  deadline = time.time() + 900
  ckpts = os.path.join(workdir, "checkpoints")
  while len(metrics_rows(workdir)) < 3 or not runtime.latest_checkpoint(ckpts):  # one finished
    assert time.time() < deadline and all(p.poll() is None for p in procs), \
        [p.communicate()[0][-3000:] for p in procs if p.poll() is not None]
    time.sleep(0.2)
  procs[1].kill()
  killed = time.time()
  out = procs[0].communicate(timeout=300)[0]
  took = time.time() - killed
  procs[1].communicate()
  assert procs[0].returncode == 3, out[-4000:]  # the documented lost-peer exit code
  assert took < 120, took
  last = out.strip().splitlines()[-1]
  assert last.startswith("cvrl: error: lost process 1 of 2 during step "), last
  assert "restart every process with the same command" in last, last
  latest = runtime.latest_checkpoint(os.path.join(workdir, "checkpoints"))
  assert latest is not None and latest >= 2
  assert f"the latest checkpoint is step {latest} in " in last, last
  config, model = checkpoint_lib.load_pretrained(workdir)
  assert config.job == "pretrain" and model is not None
