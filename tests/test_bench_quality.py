"""experiments/bench_quality: stats, gain / gap arithmetic, table, plot, replot; the command
end to end (slow, tiny)."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from configs import demo
from cvrl import config_lib
from cvrl.data import procedural
from cvrl.objectives import base

from experiments import bench_quality as B


def _entry(pre, rnd, sup, curve):
  s = lambda v: B._stats(v)
  gain = np.mean(pre) - np.mean(rnd)
  return {"gain": gain, "gain_std": 0.0, "gap_closed": gain / (np.mean(sup) - np.mean(rnd)),
          "pretrained": {"linear_top1": s(pre), "knn_top1": s(pre)},
          "random": {"linear_top1": s(rnd), "knn_top1": s(rnd)},
          "supervised": {"linear_top1": s(sup)}, "knn_curve": curve, "steps": 40, "seconds": 90}


def test_stats_use_the_sample_std():
  out = B._stats([0.5, 0.7, 0.9])
  assert out["mean"] == pytest.approx(0.7)
  assert out["std"] == pytest.approx(np.std([0.5, 0.7, 0.9], ddof=1))
  assert B._stats([0.3])["std"] == 0.0


def _results(**methods):
  return {"methods": methods, "chance": 0.125, "seeds": 2,
          "data": {"kind": "objects", "num_classes": 8, "num_train_videos": 2048,
                   "num_eval_videos": 256, "difficulty": {"colour": 1.0, "contrast": 1.0,
                                                         "texture": 0.0, "scale": [0.3, 0.4]}}}


def test_markdown_row():
  res = {"methods": {"cvrl": _entry([0.6, 0.7], [0.2, 0.3], [0.8, 0.9], [[0, 0.2], [20, 0.5], [40, 0.75]])}}
  md = B.markdown(res)
  row = md.splitlines()[2]
  assert row.startswith("| cvrl | 40 | 0.650 ± 0.071 | 0.250 ± 0.071 | 0.850 ± 0.071 | +0.400")
  assert "| 0.67 |" in row and row.endswith("| 1.5 |")


def test_knn_plot_has_the_curves_axes_legend_chance_and_a_title_naming_data_and_seeds(tmp_path):
  from cvrl.core import cli  # pylint: disable=import-outside-toplevel
  curve = [[0, 0.2], [20, 0.5], [40, 0.75]]
  cvrl, byol = (dict(_entry([0.6], [0.2], [0.8], c), per_seed=[{"seed": 0}, {"seed": 1}])
                for c in (curve, [[0, 0.2], [40, 0.3]]))
  plt = cli.pyplot("")
  fig = B.knn_figure(plt, _results(cvrl=cvrl, byol=byol))
  ax = fig.axes[0]
  lines = {l.get_label(): l for l in ax.get_lines()}
  assert list(lines) == ["cvrl (40 steps)", "byol (40 steps)", "chance (0.125)"]
  np.testing.assert_allclose(lines["cvrl (40 steps)"].get_xydata(), curve)
  assert set(lines["chance (0.125)"].get_ydata()) == {0.125}
  assert [t.get_text() for t in ax.get_legend().get_texts()] == list(lines)
  assert (ax.get_xlabel(), ax.get_ylabel()) == ("pretraining step", "kNN top-1")
  assert ax.get_ylim() == (0, 1) and len(ax.get_yticks()) > 2
  title = ax.get_title().splitlines()
  assert title[1].endswith("8 classes, 2,048 train / 256 test")
  assert title[2] == "colour=1.0, mean of seeds 0-1"
  fig.canvas.draw()
  box = ax.title.get_window_extent(fig.canvas.get_renderer())
  assert 0 <= box.x0 and box.x1 <= fig.bbox.width and box.y1 <= fig.bbox.height  # not cut off
  plt.close(fig)
  assert B.knn_plot(_results(cvrl=cvrl), str(tmp_path / "k.png"))
  img = plt.imread(str(tmp_path / "k.png"))
  red = np.all(np.abs(img[..., :3] - np.array([214, 39, 40]) / 255) < 0.02, axis=-1)
  assert red.sum() > 100  # the curve in tab:red


def test_without_matplotlib_the_plot_is_skipped_with_one_warning(tmp_path, monkeypatch, capsys):
  monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
  res = _results(cvrl=_entry([0.6], [0.2], [0.8], [[0, 0.2], [40, 0.75]]))
  assert not B.knn_plot(res, str(tmp_path / "k.png"))
  assert not (tmp_path / "k.png").exists()
  err = capsys.readouterr().err.splitlines()
  assert err == ["warning: plots need matplotlib (pip install -e '.[plots]'); wrote the JSON "
                 "and Markdown only"]


def test_replot_joins_saved_results_of_the_same_footing_and_refuses_others(tmp_path):
  entry = lambda c: _entry([0.6], [0.2], [0.8], c)
  a, b = _results(simclr=entry([[0, 0.2], [9, 0.4]])), _results(cvrl=entry([[0, 0.2], [9, 0.6]]))
  a["augmentation"] = b["augmentation"] = "recipe"
  for name, res in (("quality_methods.json", a), ("quality.json", b)):
    (tmp_path / name).write_text(json.dumps(res))
  out = B.replot([str(tmp_path / "quality_methods.json"), str(tmp_path / "quality.json")])
  assert out == str(tmp_path / "quality_methods_knn.png") and os.path.getsize(out) > 0
  b["seeds"] = 3
  (tmp_path / "quality.json").write_text(json.dumps(b))
  with pytest.raises(B.app.UsageError, match="other data, seeds or augmentation"):
    B.replot([str(tmp_path / "quality_methods.json"), str(tmp_path / "quality.json")])


def test_recipes_use_the_procedural_data_and_the_paper_augmentation_on_request():
  c = B.recipe("cvrl", 10, 2)
  assert c.data.synthetic.kind == "objects" and c.seed == 2 and c.total_steps == 10
  assert c.data.augmentation.brightness == 0.3  # the demo's
  p = B.recipe("cvrl", 10, 0, "paper")
  assert p.data.augmentation.brightness == 0.8 and p.data.augmentation.blur_probs == (1.0, 0.1)
  pc, paper = B.recipe("cvrl", 10, 0, "paper_colour").data.augmentation, p.data.augmentation
  for k in ("color_jitter_prob", "brightness", "contrast", "saturation", "hue", "grayscale_prob"):
    assert pc[k] == paper[k], k
  assert pc.area_range == c.data.augmentation.area_range and pc.blur_probs == (0.0,)
  assert c.data.augmentation.background_erase_probs == (0.0,) and c.model.input == "med_pc"
  be = B.recipe("cvrl", 10, 0, "background").data.augmentation
  assert be.background_erase_probs == (1.0, 0.0) and be.background_erase_max == 0.3
  assert be.brightness == 0.3  # the recipe's colour kept
  both = B.recipe("cvrl", 10, 0, "paper_colour_background").data.augmentation
  assert both.background_erase_probs == (1.0, 0.0) and both.brightness == paper.brightness
  dif = B.recipe("cvrl", 10, 0, input_mode="dif")
  assert base.method(**config_lib.method_args(dif)).sampler() == {"name": "cvrl", "extra_frames": 1}
  assert base.method(**config_lib.method_args(c)).sampler() == {"name": "cvrl"}
  with pytest.raises(ValueError, match="augmentation 'strong'"):
    B.recipe("cvrl", 10, 0, "strong")
  s = B.recipe("simclr", 10, 0)
  assert s.objective.name == "simclr" and s.batch_size == 16 and s.data.crop_size == 32


def test_each_base_recipe_is_the_demos_with_its_fields_and_nothing_else():
  """base 'bench' (the default): the demo's config with BENCH_RECIPE's fields (a stride per
  clip, the clip less its median frame); 'earlier' (the tables before it): EARLIER_RECIPE's;
  'demo': the demo's own; every other field the demo's, for every method that takes a
  stride per clip; --input, where given, over the base's."""
  want = demo.get_config("steps=10,probe=False,source=synthetic")
  fields = {"bench": B.BENCH_RECIPE, "earlier": B.EARLIER_RECIPE, "demo": {}}
  assert B.recipe("cvrl", 10, 0).to_json() == B.recipe("cvrl", 10, 0, base="bench").to_json()
  for name, extra in fields.items():
    c, own = B.recipe("cvrl", 10, 0, base=name), B.recipe("cvrl", 10, 0, base="demo")
    assert c.objective.temperature == extra.get("temperature", want.objective.temperature)
    assert c.model.input == extra.get("input", want.model.input)
    assert B.recipe("cvrl", 10, 0, base=name, input_mode="res_pc").model.input == "res_pc"
    for k, v in extra.get("augmentation", {}).items():
      assert c.data.augmentation[k] == v != want.data.augmentation[k], k
    own.objective.temperature, own.model.input = c.objective.temperature, c.model.input
    own.data.augmentation.update(extra.get("augmentation", {}))
    assert own.to_json(sort_keys=True) == c.to_json(sort_keys=True)
  assert B.recipe("moco", 10, 0).data.augmentation.clip_strides == (1, 2, 3)
  for method in ("tclr", "rotation"):  # their samplers place clips by strides of their own
    assert B.recipe(method, 10, 0).data.augmentation.clip_strides == ()
  with pytest.raises(ValueError, match="base 'paper'"):
    B.recipe("cvrl", 10, 0, base="paper")


def test_set_fields_land_last_in_every_methods_config_and_bad_ones_are_one_line():
  sets = ("data.augmentation.clip_strides=(1, 3)", "objective.temperature=0.2",
          "model.input=res_pc")
  for method in ("cvrl", "moco"):
    c = B.recipe(method, 10, 0, overrides=sets)
    assert c.data.augmentation.clip_strides == (1, 3) and c.model.input == "res_pc"
    assert c.objective.temperature == 0.2
    plain = B.recipe(method, 10, 0)
    for item in sets:
      B.set_field(plain, item)
    assert plain.to_json(sort_keys=True) == c.to_json(sort_keys=True)
  for bad in ("data.augmentation.no_such=1", "objective.temperature=(1, 2)", "seed"):
    with pytest.raises(B.app.UsageError, match="--set"):
      B.recipe("cvrl", 10, 0, overrides=(bad,))


def test_the_bench_probe_runs_the_papers_linear_evaluation_schedule():
  """Epochs, warm-up, lr per clip, momentum and weight decay of the paper's recipe
  (configs/cvrl_k600_linear.py), on the bench's cached, un-augmented features."""
  from configs import cvrl_k600_linear  # pylint: disable=import-outside-toplevel
  paper, p = cvrl_k600_linear.get_config(), B._probe_fields()
  assert (p.total_epochs, p.warmup_epochs) == (paper.total_epochs, paper.warmup_epochs)
  assert p.base_lr / p.batch_size == pytest.approx(paper.optim.base_lr / paper.optim.base_batch_size)
  assert (p.momentum, p.weight_decay) == (paper.optim.momentum, paper.optim.weight_decay)
  assert p.feature_epochs == 0 and p.random_baseline and p.normalize


def test_a_preempted_job_stops_the_bench_and_a_finished_one_passes_through():
  with pytest.raises(SystemExit, match="SIGTERM in pretrain at step 3"):
    B._stop_if_preempted({"job": "pretrain", "preempted": True, "step": 3})
  done = {"job": "probe", "preempted": False, "metrics": {"top1": 0.5}}
  assert B._stop_if_preempted(done) is done


def test_difficulty_flag_parses_the_settings_and_rejects_bad_ones():
  assert B.parse_difficulty("colour=1, scale=0.15:0.4") == {"colour": 1.0, "scale": (0.15, 0.4)}
  assert B.parse_difficulty("") == B.parse_difficulty("calibrated") == {}
  for bad in ("blur=1", "colour", "texture=2", "scale=0.4:0.1"):
    with pytest.raises(B.app.UsageError, match="--difficulty"):
      B.parse_difficulty(bad)
  c = B.recipe("cvrl", 10, 0, videos=64, difficulty={"texture": 1.0})
  assert c.data.synthetic.num_train_videos == c.data.num_train_examples == 64
  assert c.data.synthetic.difficulty.texture == 1.0 and c.data.synthetic.difficulty.colour == 0.0
  # The headline data by default (the demo's too), the calibrated data on request: every
  # setting given, whatever the demo's config holds.
  head = B.recipe("cvrl", 10, 0).data.synthetic.difficulty.to_dict()
  assert head == dict(procedural.DIFFICULTY, colour=1.0, texture=0.5)
  assert head == demo.get_config().data.synthetic.difficulty.to_dict()
  easy = B.recipe("cvrl", 10, 0, difficulty=B.parse_difficulty("calibrated"))
  assert easy.data.synthetic.difficulty.to_dict() == procedural.DIFFICULTY


def test_seeds_split_over_processes_meet_in_the_cache(tmp_path, monkeypatch):
  """--first_seed=1 runs seeds 1..n-1 only; a later run from seed 0 computes seed 0 and
  reads the others from the shared workdir's cache."""
  ran = []

  def one_seed(config, run_dir, curve_points, semi, cache_dir):
    ran.append(int(config.seed))
    s = int(config.seed)
    return {"seed": s, "pretrained_linear": 0.5 + 0.1 * s, "random_linear": 0.2,
            "supervised_linear": 0.9, "pretrained_knn": 0.4, "random_knn": 0.3,
            "seconds": 60.0, "knn_curve": [[0, 0.3], [10, 0.4 + 0.1 * s]]}

  monkeypatch.setattr(B, "_one_seed", one_seed)
  run = lambda seeds: B.run_method("cvrl", seeds, 10, str(tmp_path), 1, False)
  assert run(range(1, 3))["seeds"] == 2 and ran == [1, 2]
  out = run(range(3))
  assert ran == [1, 2, 0] and out["seeds"] == 3
  assert out["pretrained"]["linear_top1"]["values"] == [0.5, 0.6, 0.7]
  assert out["gain"] == pytest.approx(0.4) and out["knn_curve"] == [[0, 0.3], [10, 0.5]]


# The bench's data shrunk (32 training videos of 24 frames, 16 held out), then its command.
SMALL_BENCH = """
import sys
from cvrl.core import cli
from experiments import bench_quality as B
full, data_dir = B.bench_data, sys.argv.pop(1)
def small(data, videos, difficulty, family):
  full(data, videos, difficulty, family)
  data.synthetic.update(num_train_videos=32, num_eval_videos=16, num_frames=24, dir=data_dir)
  data.num_train_examples = 32
B.bench_data = small
B.define_flags()
cli.run(B.main)
"""


@pytest.mark.slow
def test_the_command_runs_every_job_and_reports_consistent_numbers(tmp_path):
  """`python -m experiments.bench_quality` end to end (one seed, 4 steps) on a shrunk copy
  of its data, in a process of one CPU device as a user runs it: pretraining, linear probe
  with its random baseline, kNN over checkpoints, the supervised bound, then quality.json
  / .md / .png."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
  env.pop("XLA_FLAGS", None)
  proc = subprocess.run(
      [sys.executable, "-c", SMALL_BENCH, str(tmp_path / "data"), "--methods=cvrl", "--seeds=1",
       "--steps=4", f"--workdir={tmp_path / 'runs'}", f"--out={tmp_path / 'out'}",
       "--curve_points=2", "--semi_fraction=0.5", "--semi_steps=4"],
      cwd=root, env=env, capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
  assert (tmp_path / "runs" / "xla_cache").is_dir()  # the bench caches its compilations
  assert any((tmp_path / "data").iterdir())  # the shrunk data, where the test put it
  out = json.loads((tmp_path / "out" / "quality.json").read_text())
  r = out["methods"]["cvrl"]
  row = r["per_seed"][0]
  assert r["steps"] == 4 and [s for s, _ in r["knn_curve"]] == [0, 2, 4]
  assert r["gain"] == pytest.approx(row["pretrained_linear"] - row["random_linear"])
  assert r["knn_curve"][-1][1] == row["pretrained_knn"] and r["knn_curve"][0][1] == row["random_knn"]
  for k in ("pretrained_linear", "random_linear", "supervised_linear", "pretrained_knn"):
    assert 0.0 <= row[k] <= 1.0 and (row[k] * 16) == pytest.approx(round(row[k] * 16))
  semi = r["semi_supervised"]
  assert semi["label_fraction"] == 0.5 and semi["steps"] == 4
  assert semi["pretrained"]["values"] == [round(row["semi_pretrained"], 4)]
  assert semi["scratch"]["values"] == [round(row["semi_scratch"], 4)]
  md = (tmp_path / "out" / "quality.md").read_text().splitlines()
  assert md[2].startswith("| cvrl | 4 |") and md[6].startswith("| cvrl | 50% | 4 |")
  assert (tmp_path / "out" / "quality_knn.png").stat().st_size > 0
  assert not (tmp_path / "runs" / "cvrl" / "seed0").exists()  # removed unless --keep
