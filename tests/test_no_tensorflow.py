"""A pretraining step needs no TensorFlow (issue 26): the models, the objectives, the
engine's train step and `experiments.bench_step --config` import and run in a process
where importing tensorflow (or tensorflow_datasets) fails. TensorFlow is for tf.data and
TFRecords only."""
import json
import math
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BLOCKED = ("tensorflow", "tensorflow_datasets")
# The demo's R3D-18 at 1/8 width, cut to 4 frames of 16 x 16, no evaluators.
CONFIG = "configs/demo.py:probe=False"
TINY = ["data.num_frames=4", "data.crop_size=16"]

# First thing in the interpreter: a meta path finder that fails every TensorFlow import.
BLOCK = f"""
import sys
class _NoTensorFlow:
  def find_spec(self, name, path=None, target=None):
    if name.split(".")[0] in {BLOCKED!r}:
      raise ImportError(f"{{name}} is blocked in this test")
    return None
sys.meta_path.insert(0, _NoTensorFlow())
"""

STEP = BLOCK + f"""
import json
import cvrl.models, cvrl.objectives, cvrl.jobs.summary
from cvrl.engine import loop as engine
from cvrl.engine import optim
from cvrl.jobs import pretrain
from cvrl.engine import state
from cvrl.engine import tasks
from experiments import bench_step
config = bench_step.load_config({CONFIG!r}, {TINY!r})
assert (config.model.depth, config.model.width) == (18, 0.125)
r = bench_step.config_throughput(config, per_device_batch=2, steps=1, matmul_n=64)
loaded = sorted(m for m in sys.modules if m.split(".")[0] in {BLOCKED!r})
print(json.dumps({{"loss": r["loss"], "clips": r["clips_per_step"], "loaded": loaded}}))
"""


def _env(**extra):
  env = dict(os.environ, JAX_PLATFORMS="cpu", **extra)
  env.pop("XLA_FLAGS", None)
  return env


def _json_line(stdout: str) -> dict:
  lines = [l for l in stdout.splitlines() if l.startswith("{")]
  assert len(lines) == 1, stdout[-2000:]
  return json.loads(lines[0])


@pytest.mark.slow
def test_the_blocker_blocks_tensorflow():
  out = subprocess.run([sys.executable, "-c", BLOCK + "import tensorflow"], cwd=ROOT,
                       env=_env(PYTHONPATH=ROOT), capture_output=True, text=True, timeout=120)
  assert out.returncode != 0 and "tensorflow is blocked in this test" in out.stderr


@pytest.mark.slow
def test_a_cvrl_train_step_runs_without_tensorflow():
  """bench_step's config-mode functions build and run one tiny CVRL step."""
  out = subprocess.run([sys.executable, "-c", STEP], cwd=ROOT, env=_env(PYTHONPATH=ROOT),
                       capture_output=True, text=True, timeout=900)
  assert out.returncode == 0, out.stderr[-4000:]
  r = _json_line(out.stdout)
  assert math.isfinite(r["loss"]) and r["clips"] == 4  # 2 videos x CVRL's 2 views
  assert r["loaded"] == []


@pytest.mark.slow
def test_bench_step_config_mode_runs_without_tensorflow(tmp_path):
  """The command, with a `tensorflow` package on PYTHONPATH whose import fails; its MFU
  fields on the CPU: no known peak (null, said so), a float32 matmul."""
  for name in BLOCKED:
    os.makedirs(tmp_path / name)
    (tmp_path / name / "__init__.py").write_text(
        f"raise ImportError('{name} is blocked in this test')\n")
  sets = [a for s in TINY for a in ("--set", s)]
  out = subprocess.run(
      [sys.executable, "-m", "experiments.bench_step", f"--config={CONFIG}",
       "--per_device_batch", "2", "--steps", "1", "--matmul_n", "64", *sets],
      cwd=ROOT, env=_env(PYTHONPATH=os.pathsep.join([str(tmp_path), ROOT])),
      capture_output=True, text=True, timeout=900)
  assert out.returncode == 0, out.stderr[-4000:]
  r = _json_line(out.stdout)["train_step"]
  assert math.isfinite(r["loss"])
  assert r["mfu_peak"] is None and "cpu" in r["peak_unknown"]
  assert r["matmul_dtype"] == "float32" and r["mfu_matmul"] > 0
  assert r["model_gflop_per_step"] == pytest.approx(
      3 * r["forward_gflop_per_clip"] * r["clips_per_step"], rel=1e-3)
  assert r["memory"]["allocator_peak_bytes"] is None
  assert r["memory"]["xla_memory_analysis"]["peak_bytes"] > 0
  assert r["xla_cost_analysis"]["gflop_per_step"] > 0
