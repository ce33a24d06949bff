"""The entry point: job dispatch, one-line errors before anything compiles, `summary`."""
import json
import os
import subprocess
import sys

import pytest

from cvrl import main
from cvrl.core import discovery
from cvrl.jobs import summary

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cli(*args):
  env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
  return subprocess.run([sys.executable, "-m", "cvrl.main", *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=600)


def k600(arg=None):
  from configs import cvrl_k600_r3d50  # pylint: disable=import-outside-toplevel
  return cvrl_k600_r3d50.get_config(arg)


def test_unknown_job_and_bad_depth_fail_with_one_line_naming_choices():
  c = k600()
  c.job = "trian"
  with pytest.raises(main.ConfigError, match="pretrain"):
    main.parse(c)
  c = k600("depth=17")
  c.job = "summary"
  with pytest.raises(main.ConfigError, match=r"\[18, 34, 50, 101, 152, 200\]"):
    main.parse(c)


def test_a_run_parses_its_config_once_and_runs_the_parsed_value(monkeypatch):
  c = k600()
  c.job = "summary"
  parsed, ran = [], []
  real = summary.parse
  monkeypatch.setattr(summary, "parse", lambda config: parsed.append(real(config)) or parsed[-1])
  monkeypatch.setattr(summary, "run", lambda job, workdir: ran.append((job, workdir)) or {})
  main.run(c, None)
  assert len(parsed) == 1 and ran == [(parsed[0], None)]
  assert isinstance(parsed[0], summary.Summary)


@pytest.mark.slow
def test_cli_errors_exit_nonzero_with_one_line():
  r = cli("--config=configs/cvrl_k600_r3d50.py:depth=19", "--config.job=summary")
  assert r.returncode == 2
  assert r.stderr.strip().splitlines()[-1].startswith("cvrl: error: config.model.depth")
  r = cli("--config=configs/cvrl_k600_r3d50.py", "--config.job=summary", "--config.batch_sise=8")
  assert r.returncode != 0 and "batch_sise" in r.stderr


def test_summary_of_the_paper_r3d50():
  c = k600()
  c.job = "summary"
  out = summary.summarize(summary.parse(c))
  assert abs(out["backbone_params"] - 31.7e6) / 31.7e6 < 1e-3
  assert out["feature_shape"] == [8, 7, 7, 2048]
  # Projection head: 3 x (Dense 2048 without bias + BN) + Dense 2048 -> 128.
  assert out["head_params"] == 3 * (2048 * 2048 + 2 * 2048) + 2048 * 128 + 128
  # Forward FLOPs are dominated by the convolutions: check against an analytic MAC count.
  assert 0.9 < out["gflops_per_clip"] / (2 * r3d50_macs() / 1e9) < 1.1


def r3d50_macs():
  """Multiply-adds of the CVRL R3D-50 on 16x224x224, counted from its layout."""
  macs = 8 * 112 * 112 * 5 * 7 * 7 * 3 * 64  # stem -> 8 x 112 x 112
  t, hw, cin = 8, 56, 64  # after the 1x3x3 max-pool
  for stage, (n, kt) in enumerate(zip((3, 4, 6, 3), (1, 1, 3, 3))):
    mid = 64 * 2 ** stage
    for j in range(n):
      stride = 2 if (j == 0 and stage > 0) else 1
      out_hw = hw // stride
      macs += t * hw * hw * kt * cin * mid  # t x 1 x 1
      macs += t * out_hw * out_hw * 9 * mid * mid  # 1 x 3 x 3, strided
      macs += t * out_hw * out_hw * mid * 4 * mid  # 1 x 1 x 1
      if j == 0:
        macs += t * out_hw * out_hw * cin * 4 * mid  # projection shortcut
      hw, cin = out_hw, 4 * mid
  return macs


@pytest.mark.slow
def test_summary_cli_prints_one_json_line_for_a_big_model(tmp_path):
  r = cli("--config=configs/cvrl_k600_r3d50.py:depth=152,width=3", "--config.job=summary",
          f"--workdir={tmp_path}")
  assert r.returncode == 0, r.stderr
  lines = [l for l in r.stdout.splitlines() if l.strip()]
  assert len(lines) == 1
  out = json.loads(lines[0])
  assert out["feature_shape"] == [8, 7, 7, 6144]
  assert out["backbone_params"] > 700e6
  assert json.loads(open(tmp_path / "summary.json").read()) == out


def test_bad_evaluator_fails_with_one_line_naming_the_kinds():
  from configs import demo  # pylint: disable=import-outside-toplevel
  c = demo.get_config()
  c.evals.knn.kind = "svm"
  with pytest.raises(main.ConfigError, match=r"one of knn, linear, multiview, got 'svm'"):
    main.parse(c)
  c = demo.get_config()
  c.evals.knn.init = "imagenet"
  with pytest.raises(main.ConfigError, match="trained"):
    main.parse(c)


def test_every_job_module_exists():
  jobs = discovery.names("cvrl.jobs", "run")
  assert set(jobs) == {"pretrain", "probe", "finetune", "evaluate", "summary"}
  for name in jobs:
    assert callable(main.job_module(name).run), name
