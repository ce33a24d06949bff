"""Evaluators are found by name: kind K is the module cvrl/eval/K.py. A new evaluator is one
new file; `config.evals` entries take their kind's defaults, and a misspelt key or an
unknown kind fails with one line naming the fix."""
import inspect
import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from cvrl import main
from cvrl.eval import common, knn, linear, multiview

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_kinds_are_the_modules_defining_make():
  assert common.kinds() == ["knn", "linear", "multiview"]
  assert common.get("knn") is knn.KNN and common.get("multiview") is multiview.Multiview
  assert issubclass(multiview.Multiview, linear.Linear)  # imported, yet linear's own kind


def _default(cls, key):
  """A constructor's default of `key` (the kind's own, else the base Evaluator's)."""
  for klass in cls.__mro__:
    params = inspect.signature(klass.__init__).parameters
    if key in params:
      return params[key].default
  raise KeyError(key)


def test_entries_take_their_kinds_defaults_and_only_their_keys():
  cls, kw = common.fields("probe", {"kind": "linear", "linear_steps": 7})
  assert cls is linear.Linear and kw["linear_steps"] == 7
  assert kw["linear_batch"] == _default(linear.Linear, "linear_batch")
  assert kw["every_steps"] == _default(common.Evaluator, "every_steps") and kw["init"] == "trained"
  assert "knn_k" not in kw and "test_clips" not in kw and "kind" not in kw  # not its fields
  ev = common.build("probe", {"kind": "linear", "linear_steps": 7})
  assert (ev.linear_steps, ev.linear_batch, ev.name) == (7, kw["linear_batch"], "probe")
  cls, kw = common.fields("mv", {"kind": "multiview"})
  assert kw["test_crops"] == _default(multiview.Multiview, "test_crops")
  assert kw["linear_steps"] == _default(linear.Linear, "linear_steps")
  with pytest.raises(ValueError, match="unknown key 'knn_k' for kind 'linear'"):
    common.fields("probe", {"kind": "linear", "knn_k": 5})
  with pytest.raises(ValueError, match="config.evals.probe.linear_steps: .*type"):
    common.fields("probe", {"kind": "linear", "linear_steps": "many"})
  with pytest.raises(ValueError, match="config.evals.probe.eval_resize: .*type"):
    common.fields("probe", {"kind": "linear", "eval_resize": "big"})


def test_each_kind_checks_its_fields_in_its_constructor():
  with pytest.raises(ValueError, match=r"config.evals.k.knn_vote must be one of \['majority', "
                     r"'weighted'\], got 'mean'"):
    common.build("k", {"kind": "knn", "knn_vote": "mean"})
  with pytest.raises(ValueError, match="config.evals.m.test_crops must be one of"):
    common.build("m", {"kind": "multiview", "test_crops": 2})
  with pytest.raises(ValueError, match="config.evals.l.num_crops must be one of"):
    common.build("l", {"kind": "linear", "num_crops": 2})
  with pytest.raises(ValueError, match="config.evals.l.every_steps must be >= 1"):
    common.build("l", {"kind": "linear", "every_steps": 0})
  with pytest.raises(ValueError, match="config.evals.l.init must be one of"):
    common.build("l", {"kind": "linear", "init": "imagenet"})


def test_the_evaluate_job_builds_its_mode_from_config_evaluate():
  """config.evaluate's knn_* fields become the mode's keyword arguments; unset, the
  evaluator's own defaults (one place for each)."""
  from cvrl import config_lib  # pylint: disable=import-outside-toplevel
  from cvrl.jobs import evaluate  # pylint: disable=import-outside-toplevel
  c = config_lib.evaluate_config()
  c.evaluate.mode = "knn"
  c.random_init = True  # the mode's encoder
  ev = evaluate._mode_evaluator(evaluate.parse(c))  # pylint: disable=protected-access
  for key in ("num_clips", "num_crops", "knn_k", "knn_vote", "knn_temperature", "recall_ks"):
    assert getattr(ev, key) == _default(knn.KNN, key), key
  assert ev.batch_size == c.evaluate.batch_size
  c.evaluate.update(knn_clips=5, knn_crops=3, knn_k=7, knn_vote="majority", recall_ks=(1, 2))
  ev = evaluate._mode_evaluator(evaluate.parse(c))  # pylint: disable=protected-access
  assert (ev.num_clips, ev.num_crops, ev.knn_k, ev.knn_vote, ev.recall_ks) == (
      5, 3, 7, "majority", (1, 2))
  c.evaluate.mode = "linear"  # the views, not the knn-only fields
  ev = evaluate._mode_evaluator(evaluate.parse(c))  # pylint: disable=protected-access
  assert (ev.num_clips, ev.num_crops) == (5, 3) and not hasattr(ev, "knn_k")
  c.evaluate.knn_crops = 2
  with pytest.raises(ValueError, match="num_crops must be one of"):
    evaluate.parse(c)


def test_the_evaluate_job_looks_its_mode_up_once_and_tests_at_the_run_s_shape(monkeypatch):
  """The mode's class is found once (at parse); the evaluator's views take the test sizes
  of the clip shape the run resolved, which the job's record then holds."""
  from cvrl import config_lib  # pylint: disable=import-outside-toplevel
  from cvrl.engine import clip_shape  # pylint: disable=import-outside-toplevel
  from cvrl.jobs import evaluate  # pylint: disable=import-outside-toplevel
  c = config_lib.evaluate_config()
  c.evaluate.mode, c.random_init = "knn", True
  looked = []
  real = common.get
  monkeypatch.setattr(common, "get", lambda kind, *a: looked.append(kind) or real(kind, *a))
  job = evaluate.parse(c)
  shaped = job.shaped(clip_shape.ClipShape(4, 2, 16, 20, 18, origin="the test"))
  ev = evaluate._mode_evaluator(shaped, common.Splits(shaped.data))  # pylint: disable=protected-access
  assert looked == ["knn"]
  assert (ev.splits.data.eval_resize, ev.splits.data.eval_crop_size) == (20, 18)
  assert shaped.record["data"]["eval_crop_size"] == 18 and shaped.data.num_frames == 4
  assert job.record["data"]["eval_crop_size"] is None and c.data.num_frames is None


def test_unknown_key_names_the_nearest_valid_key():
  with pytest.raises(ValueError) as e:
    common.fields("knn", {"kind": "knn", "every_step": 5})
  message = str(e.value)
  assert "\n" not in message
  assert "config.evals.knn: unknown key 'every_step'" in message
  assert message.endswith("did you mean 'every_steps'?")
  with pytest.raises(ValueError, match="'knn_temperature'"):
    common.fields("knn", {"kind": "knn", "knn_temprature": 0.1})
  # Nothing close: the valid keys instead.
  with pytest.raises(ValueError, match=r"unknown key 'zzz'.*valid keys: \[.*'knn_k'"):
    common.fields("knn", {"kind": "knn", "zzz": 1})


def test_unknown_kind_lists_the_kinds():
  for kind in ("svm", "features", "common", "os.path", "", None):
    with pytest.raises(ValueError) as e:
      common.fields("x", {"kind": kind})
    assert f"config.evals.x.kind must be one of knn, linear, multiview, got {kind!r}" \
        in str(e.value)


def test_the_entry_point_reports_a_misspelt_evaluator_key_in_one_line():
  from configs import demo  # pylint: disable=import-outside-toplevel
  c = demo.get_config()
  c.evals.knn.knn_kk = 5
  with pytest.raises(main.ConfigError, match="unknown key 'knn_kk'.*did you mean 'knn_k'"):
    main.parse(c)
  c = demo.get_config()
  c.evals.knn.knn_vote = "mean"
  with pytest.raises(main.ConfigError, match="knn_vote must be one of"):
    main.parse(c)


# A tiny evaluate job: a random-init 1/8-width R3D-18 on 24 + 13 synthetic videos.
EVAL_CONFIG = """
from cvrl import config_lib


def get_config(arg=None):
  c = config_lib.evaluate_config()
  c.random_init = True
  d = c.data
  d.source = "synthetic"
  d.synthetic.update(dir={data!r}, num_train_videos=24, num_eval_videos=13, num_classes=4,
                     num_frames=16, size=32, num_shards=2)
  d.update(num_frames=4, stride=2, crop_size=16, eval_resize=16, eval_crop_size=16,
           jit_photometric=False)
  c.model.update(depth=18, width=0.125, preset="cvrl")
  c.evaluate.mode = "nearest"
  c.evals = {{"mine": {{"kind": "nearest", "num_clips": 1, "batch_size": 8, "knn_k": 3,
                      "recall_ks": (1, 2)}}}}
  return c
"""


@pytest.mark.slow
def test_a_new_evaluator_is_one_file(tmp_path):
  """A copy of the package plus cvrl/eval/nearest.py (knn.py under another name and class)
  runs it from config.evals by its kind, and takes it as the evaluate job's mode."""
  copy = tmp_path / "copy"
  shutil.copytree(os.path.join(ROOT, "cvrl"), copy / "cvrl",
                  ignore=shutil.ignore_patterns("__pycache__"))
  source = (copy / "cvrl" / "eval" / "knn.py").read_text()
  assert "class KNN(common.Evaluator)" in source and "make = KNN" in source
  (copy / "cvrl" / "eval" / "nearest.py").write_text(
      source.replace("KNN", "Nearest"))
  config = tmp_path / "eval_config.py"
  config.write_text(textwrap.dedent(EVAL_CONFIG.format(data=str(tmp_path / "synthetic"))))
  env = dict(os.environ, PYTHONPATH=str(copy))

  probe = subprocess.run(
      [sys.executable, "-c", "import cvrl, importlib.util\nfrom cvrl.eval import common\n"
       "print(cvrl.__file__)\nprint(common.kinds(), common.get('nearest').__name__)\n"
       f"spec = importlib.util.spec_from_file_location('c', {str(config)!r})\n"
       "module = importlib.util.module_from_spec(spec)\nspec.loader.exec_module(module)\n"
       "c = module.get_config()\ndel c.evals\n"
       "from cvrl.jobs import evaluate\nevaluate.parse(c)\nprint('mode ok')\n"],
      cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=300)
  assert probe.returncode == 0, probe.stderr[-3000:]
  lines = probe.stdout.splitlines()
  assert lines[0] == str(copy / "cvrl" / "__init__.py")
  assert lines[1] == "['knn', 'linear', 'multiview', 'nearest'] Nearest" and lines[2] == "mode ok"

  work = tmp_path / "work"
  out = subprocess.run(
      [sys.executable, "-m", "cvrl.main", f"--config={config}", f"--workdir={work}"],
      cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "evaluate[mine]: knn_accuracy=" in out.stdout
  results = json.loads((work / "results.json").read_text())
  metrics = results["metrics"]
  assert 0.0 <= metrics["mine/knn_accuracy"] <= 1.0
  assert metrics["mine/num_queries"] == 13 and metrics["mine/num_keys"] == 24
  assert metrics["mine/recall@1"] <= metrics["mine/recall@2"]
  assert results["config"]["evals"]["mine"]["kind"] == "nearest"

  # The same config on the package without the file: one line listing the kinds there are.
  bare = subprocess.run(
      [sys.executable, "-m", "cvrl.main", f"--config={config}", f"--workdir={tmp_path / 'bare'}"],
      cwd=str(tmp_path), env=dict(os.environ, PYTHONPATH=ROOT), capture_output=True,
      text=True, timeout=300)
  assert bare.returncode == 2
  assert "config.evals.mine.kind must be one of knn, linear, multiview, got 'nearest'" \
      in bare.stderr
