"""A new method is one file: a copy of the cvrl package with one module added under
cvrl/objectives/, and nothing else touched, runs under that module's name."""
import json
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _package_copy(tmp_path):
  """cvrl copied to tmp_path/cvrl (caches left out); returns tmp_path."""
  shutil.copytree(os.path.join(ROOT, "cvrl"), tmp_path / "cvrl",
                  ignore=shutil.ignore_patterns("__pycache__"))
  return tmp_path


def _summary(cwd, *overrides):
  """`python -m cvrl.main` (the summary job of the tiny SimCLR config) run from `cwd`, so
  the cvrl package found is `cwd`'s; its one JSON line, parsed."""
  env = dict(os.environ, PYTHONPATH=str(cwd), JAX_PLATFORMS="cpu")
  r = subprocess.run(
      [sys.executable, "-m", "cvrl.main", f"--config={ROOT}/configs/simclr_tiny.py",
       "--config.job=summary", *overrides], cwd=cwd, env=env, capture_output=True, text=True,
      timeout=600)
  assert r.returncode == 0, r.stderr[-2000:]
  return r, json.loads(r.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_a_copied_objective_module_runs_under_its_new_name(tmp_path):
  copy = _package_copy(tmp_path)
  source = (copy / "cvrl" / "objectives" / "simclr.py").read_text()
  assert source.count("make = SimCLR") == 1  # the entry point: nothing in it names the method
  (copy / "cvrl" / "objectives" / "mysimclr.py").write_text(source)
  _, new = _summary(copy, "--config.objective.name=mysimclr")
  _, old = _summary(copy)
  assert new["objective"] == "mysimclr" and old["objective"] == "simclr"
  assert new["head_params"] == old["head_params"] > 0
  assert new["backbone_params"] == old["backbone_params"] > 0
  # An unknown name still fails in one line that lists the new method with the others.
  env = dict(os.environ, PYTHONPATH=str(copy), JAX_PLATFORMS="cpu")
  r = subprocess.run(
      [sys.executable, "-m", "cvrl.main", f"--config={ROOT}/configs/simclr_tiny.py",
       "--config.job=summary", "--config.objective.name=nosuch"], cwd=copy, env=env,
      capture_output=True, text=True, timeout=600)
  assert r.returncode != 0
  assert "mysimclr" in r.stderr and "nosuch" in r.stderr
  assert len(r.stderr.strip().splitlines()) == 1, r.stderr
