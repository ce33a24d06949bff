"""Two processes on 127.0.0.1 (gloo CPU collectives, 2 devices each) pretrain together and
finish with identical parameters, equal to one process driving 4 devices."""
import json
import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

WORKER = textwrap.dedent("""
    import hashlib, json, os, sys
    import jax
    process_id, num_processes, devices, port, workdir = sys.argv[1:6]
    jax.config.update("jax_num_cpu_devices", int(devices))
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    import numpy as np
    sys.path.insert(0, os.path.join({root!r}, "tests"))
    from test_train_pretrain import tiny_config
    from cvrl.train import pretrain, state as state_lib
    c = tiny_config(total_steps=3, warmup_steps=1)
    c.optim.base_lr = 1e-4  # small steps: float rounding is not amplified
    c.checkpoint.every_steps = 2
    c.log.every_steps = 1
    if int(num_processes) > 1:
      c.parallel.coordinator_address = "127.0.0.1:" + port
      c.parallel.num_processes = int(num_processes)
      c.parallel.process_id = int(process_id)
    c.lock()
    out = pretrain.run(c, workdir)
    assert jax.process_count() == int(num_processes), jax.process_count()
    leaves = [np.asarray(x.addressable_data(0))
              for x in jax.tree.leaves(state_lib.full_state(out["state"]))]
    digest = hashlib.sha256(b"".join(a.tobytes() for a in leaves)).hexdigest()
    np.savez(os.path.join(workdir, "params_%s_of_%s.npz" % (process_id, num_processes)), *leaves)
    with open(os.path.join(workdir, "result_%s_of_%s.json" % (process_id, num_processes)), "w") as f:
      json.dump({{"digest": digest, "step": out["step"], "loss": out["loss"],
                 "devices": jax.device_count(), "local_devices": jax.local_device_count()}}, f)
""").format(root=ROOT)


def free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def spawn(process_id, num_processes, devices, port, workdir):
  env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
             TF_CPP_MIN_LOG_LEVEL="2")
  env.pop("XLA_FLAGS", None)
  return subprocess.Popen([sys.executable, "-c", WORKER, str(process_id), str(num_processes),
                           str(devices), str(port), workdir], cwd=ROOT, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow
def test_two_processes_end_with_identical_parameters(tmp_path):
  workdir = str(tmp_path / "two")
  port = free_port()
  procs = [spawn(i, 2, 2, port, workdir) for i in range(2)]
  outputs = [p.communicate(timeout=900)[0] for p in procs]
  for p, out in zip(procs, outputs):
    assert p.returncode == 0, out[-4000:]
  results = [json.load(open(os.path.join(workdir, f"result_{i}_of_2.json"))) for i in range(2)]
  assert results[0]["devices"] == 4 and results[0]["local_devices"] == 2
  assert results[0]["step"] == results[1]["step"] == 3
  assert results[0]["digest"] == results[1]["digest"]
  # Only process 0 writes metrics (one line per step, not two); both saved the checkpoint.
  rows = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  assert [r["step"] for r in rows] == [2, 3]
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["2", "3"]

  # One process with 4 devices sees the same global batches. The loss of step 2 is that
  # of the initial parameters (the warm-up's first update has lr 0) on global batch 2: equal
  # up to float rounding only if every process fed its own rows of it. Later steps and the
  # parameters agree up to the summation order of the cross-device reductions, which this
  # tiny, steep model amplifies a little each step.
  single = str(tmp_path / "one")
  proc = spawn(0, 1, 4, 0, single)
  out = proc.communicate(timeout=900)[0]
  assert proc.returncode == 0, out[-4000:]
  rows_one = [json.loads(l) for l in open(os.path.join(single, "metrics.jsonl"))]
  assert rows[0]["loss"] == pytest.approx(rows_one[0]["loss"], rel=1e-5)
  assert rows[1]["loss"] == pytest.approx(rows_one[1]["loss"], rel=1e-3)
  two = np.load(os.path.join(workdir, "params_0_of_2.npz"))
  one = np.load(os.path.join(single, "params_0_of_1.npz"))
  assert len(two.files) == len(one.files)
  for k in one.files:
    np.testing.assert_allclose(two[k], one[k], rtol=1e-2, atol=1e-2 * np.abs(one[k]).max())
