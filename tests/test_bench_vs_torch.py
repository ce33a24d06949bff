"""experiments/bench_vs_torch: PyTorch stays optional (the script says so and exits 0
without it); its PyTorch R3Ds have cvrl's parameter counts (skipped without torch)."""
import json
import os
import subprocess
import sys

import pytest

from experiments import bench_vs_torch as B

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NO_TORCH = """
import runpy, sys
class _NoTorch:
  def find_spec(self, name, path=None, target=None):
    if name.split(".")[0] in ("torch", "torchvision"):
      raise ImportError(f"{name} is blocked in this test")
    return None
sys.meta_path.insert(0, _NoTorch())
sys.argv = ["bench_vs_torch", "--tiny"]
runpy.run_module("experiments.bench_vs_torch", run_name="__main__")
"""


@pytest.mark.slow
def test_without_torch_one_line_and_exit_0():
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
  out = subprocess.run([sys.executable, "-c", NO_TORCH], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  lines = out.stdout.strip().splitlines()
  assert len(lines) == 1, out.stdout
  line = json.loads(lines[0])
  assert line["torch"] is None and "PyTorch is not installed" in line["skipped"]


def test_torch_is_not_a_dependency_of_cvrl():
  with open(os.path.join(ROOT, "setup.py"), encoding="utf-8") as f:
    assert "torch" not in f.read()


def test_cvrl_r3d18_has_torchvision_r3d18s_parameters():
  assert B.cvrl_params("r3d18", 1.0) + B.KINETICS400_FC == B.TORCHVISION_R3D18_PARAMS


@pytest.mark.parametrize("name", ["r3d18", "r3d50"])
@pytest.mark.parametrize("width", [1.0, 0.125])
def test_pytorch_models_have_cvrls_parameter_count(name, width):
  pytest.importorskip("torch")
  model = B.TorchR3D(name, width)
  assert B.torch_params(model) == B.cvrl_params(name, width)
  assert B.check_params(name, width, model) == B.cvrl_params(name, width)
  if name == "r3d18" and width == 1.0:
    assert B.torch_params(model) + B.KINETICS400_FC == 33_371_472


def test_the_parameter_check_catches_a_different_model():
  pytest.importorskip("torch")
  with pytest.raises(AssertionError, match="cvrl"):
    B.check_params("r3d50", 0.125, B.TorchR3D("r3d50", 0.25))


@pytest.mark.slow
def test_tiny_run_one_json_line():
  pytest.importorskip("torch")
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
  out = subprocess.run(
      [sys.executable, "-m", "experiments.bench_vs_torch", "--tiny", "--models", "r3d18",
       "--size", "16", "--frameworks", "cvrl,torch_eager"],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
  assert out.returncode == 0, out.stderr[-3000:]
  lines = [l for l in out.stdout.splitlines() if l.startswith("{")]
  assert len(lines) == 1
  (row,) = json.loads(lines[0])["results"]
  assert "errors" not in row, row
  assert set(row["clips_per_sec"]) == {"cvrl", "torch_eager"}
  assert all(v > 0 for v in row["clips_per_sec"].values())
