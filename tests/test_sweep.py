"""experiments/sweep.py: grid expansion, launch commands, skip-if-done local runs, and the
CSV / Markdown / PNG collection, on the `summary` job."""
import csv
import json
import os
import shlex
import subprocess
import sys

import numpy as np
import pytest

from cvrl.core import cli
from experiments import sweep

CONFIG = "configs/cvrl_k600_r3d50.py"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def r3d_params(depth: int, width: float) -> int:
  """Trainable parameters of the 'cvrl' R3D counted by hand: conv kernels + BN scale/bias."""
  def ch(c):
    return max(1, int(round(c * width)))

  def conv_bn(k, cin, cout):
    return int(np.prod(k)) * cin * cout + 2 * cout
  blocks = {18: ("basic", (2, 2, 2, 2)), 34: ("basic", (3, 4, 6, 3)),
            50: ("bottleneck", (3, 4, 6, 3))}[depth]
  kind, counts = blocks
  temporal = (1, 1, 3, 3)
  total = conv_bn((5, 7, 7), 3, ch(64))
  cin = ch(64)
  for stage, n in enumerate(counts):
    w = ch(64 * 2 ** stage)
    t = temporal[stage]
    for b in range(n):
      if kind == "basic":
        cout = w
        total += conv_bn((t, 3, 3), cin, w) + conv_bn((t, 3, 3), w, w)
      else:
        cout = 4 * w
        total += conv_bn((t, 1, 1), cin, w) + conv_bn((1, 3, 3), w, w) + conv_bn((1, 1, 1), w, cout)
      if cin != cout or (b == 0 and stage > 0):
        total += conv_bn((1, 1, 1), cin, cout)
      cin = cout
  return total


def test_grid_expansion_names_and_commands(tmp_path):
  axes = sweep.parse_axes(["18", "50"], ["0.125", "0.25"],
                          ["data.crop_size=32,48", "data.area_range=(0.3, 1.0),(0.5,1.0)"])
  assert [f for f, _ in axes] == ["model.depth", "model.width", "data.crop_size",
                                  "data.area_range"]
  assert axes[3][1] == ["(0.3, 1.0)", "(0.5,1.0)"]
  points = sweep.expand(axes)
  assert len(points) == 16 and len({p.name for p in points}) == 16
  assert points[0].name == "d18_w0.125_crop-size32_area-range0.3-1.0"
  assert [p.value("model.depth") for p in points] == ["18"] * 8 + ["50"] * 8
  cmd = sweep.command("python", CONFIG, str(tmp_path), points[-1])
  assert cmd[:3] == ["python", "-m", "cvrl.main"]
  assert f"--workdir={tmp_path}/{points[-1].name}" in cmd
  assert "--config.data.area_range=(0.5,1.0)" in cmd
  for bad in (["model.depth=1"], ["=1"], ["x.y="]):
    with pytest.raises(ValueError):
      sweep.parse_axes(["50"], [], bad)


@pytest.mark.slow
def test_summary_sweep_runs_skips_and_collects(tmp_path):
  """2 depths x 2 widths of the summary job: launch.sh, one point run for real through
  cvrl.main (the others already done are skipped), then CSV / Markdown / PNG."""
  workdir = str(tmp_path / "sweep")
  extra = ["data.num_frames=8", "data.crop_size=32", "job=summary"]
  points = sweep.expand(sweep.parse_axes(["18", "50"], ["0.125", "0.25"], extra))
  script = sweep.write_launch_script(CONFIG, workdir, points, "python")
  lines = [l for l in open(script).read().splitlines() if l.startswith("python ")]
  assert len(lines) == 4
  assert shlex.split(lines[3])[3:] == sweep.point_args(CONFIG, workdir, points[3])

  for p in points[:3]:  # the first three "finished" earlier (the summary job in-process)
    sweep.point_summary(CONFIG, workdir, p)
  status = sweep.run_local(CONFIG, workdir, points, results="summary.json")
  assert status == {points[0].name: "skipped", points[1].name: "skipped",
                    points[2].name: "skipped", points[3].name: "done"}
  with open(os.path.join(workdir, points[3].name, "summary.json")) as f:
    ran = json.loads(f.readline())  # written by `python -m cvrl.main` in a subprocess
  assert ran["model"] == "r3d50_cvrl_0.25x" and ran["input_shape"] == [8, 32, 32, 3]

  rows = sweep.collect(CONFIG, workdir, points, results="summary.json")
  columns = sweep._columns(rows, ["model.depth", "model.width", "data.num_frames",
                                  "data.crop_size", "job"])
  sweep.write_csv(os.path.join(workdir, "sweep.csv"), rows, columns)
  sweep.write_markdown(os.path.join(workdir, "sweep.md"), rows, columns, "t")
  with open(os.path.join(workdir, "sweep.csv")) as f:
    table = list(csv.DictReader(f))
  assert [r["point"] for r in table] == [p.name for p in points]
  for r in table:
    assert int(r["backbone_params"]) == r3d_params(int(r["model.depth"]), float(r["model.width"]))
  assert float(table[3]["gflops_per_clip"]) == ran["gflops_per_clip"]
  gf = {(r["model.depth"], r["model.width"]): float(r["gflops_per_clip"]) for r in table}
  assert gf[("50", "0.25")] > gf[("50", "0.125")] > 0 and gf[("18", "0.25")] > gf[("18", "0.125")]
  md = open(os.path.join(workdir, "sweep.md")).read().splitlines()
  assert len([l for l in md if l.startswith("| d")]) == 4
  assert f"| {int(table[3]['backbone_params']) / 1e6:.2f} |" in md[-1]


def test_plot_draws_one_line_per_depth_against_params_and_gflops(tmp_path):
  rows = [{"model.depth": d, "model": f"r3d{d}_cvrl_{w}x", "backbone_params": p,
           "gflops_per_clip": g, "top1": a}
          for d, w, p, g, a in [("18", 0.125, 1e6, 0.4, 0.30), ("50", 0.25, 8e6, 3.1, 0.41),
                                ("18", 0.25, 4e6, 1.5, 0.35), ("50", 0.125, 2e6, 0.9, 0.33),
                                ("50", 0.5, 3e7, 12.0, float("nan"))]]
  plt = cli.pyplot("")
  fig = sweep.figure(plt, rows, "top1", "a sweep")
  left, right = fig.axes
  by_params = {"R3D-18": [[1, .30], [4, .35]], "R3D-50": [[2, .33], [8, .41]]}
  by_gflops = {"R3D-18": [[.4, .30], [1.5, .35]], "R3D-50": [[.9, .33], [3.1, .41]]}
  for ax, expect in ((left, by_params), (right, by_gflops)):
    got = {l.get_label(): l.get_xydata() for l in ax.get_lines()}
    assert list(got) == list(expect)  # one line per depth, the NaN point left out
    for k, xy in expect.items():
      np.testing.assert_allclose(got[k], xy)
    assert ax.get_xscale() == "log"
  assert (left.get_xlabel(), right.get_xlabel()) == ("backbone parameters (M)", "GFLOPs per clip")
  assert left.get_ylabel() == "top1" and fig._suptitle.get_text() == "a sweep"
  assert [t.get_text() for t in right.get_legend().get_texts()] == ["R3D-18", "R3D-50"]
  plt.close(fig)
  assert sweep.plot(str(tmp_path / "p.png"), rows, "top1")
  assert plt.imread(str(tmp_path / "p.png")).shape[:2] == (462, 1100)


@pytest.mark.slow
def test_command_line_prints_the_launch_commands(tmp_path):
  out = subprocess.run(
      [sys.executable, "-m", "experiments.sweep", f"--config={CONFIG}", "--depths=18,50",
       "--widths=0.125", "--set=optim.base_lr=0.1,0.2", f"--workdir={tmp_path}",
       "--launch=print"], capture_output=True, text=True, cwd=ROOT, timeout=120, check=False)
  assert out.returncode == 0, out.stderr[-2000:]
  cmds = [l for l in out.stdout.splitlines() if l.startswith("python -m cvrl.main")]
  assert len(cmds) == 4
  assert "--config.optim.base_lr=0.2" in cmds[-1] and "--config.model.depth=50" in cmds[-1]
  grid = json.load(open(tmp_path / "grid.json"))
  assert list(grid["points"]) == ["d18_w0.125_base-lr0.1", "d18_w0.125_base-lr0.2",
                                  "d50_w0.125_base-lr0.1", "d50_w0.125_base-lr0.2"]


TINY_PROBE_CONFIG = """
import os
from cvrl import config_lib


def get_config(arg=None):
  c = config_lib.probe_config()
  c.random_init = True
  c.batch_size = 8
  c.total_epochs = None
  c.total_steps = 6
  c.warmup_epochs = None
  c.warmup_steps = 1
  c.optim.update(base_lr=0.5, base_batch_size=8)
  d = c.data
  d.source = "synthetic"
  d.synthetic.dir = os.path.join(os.path.dirname(os.path.abspath(__file__)), "synthetic")
  d.synthetic.update(num_train_videos=16, num_eval_videos=8, num_classes=4, num_frames=8,
                     size=24, num_shards=1)
  d.update(num_frames=4, stride=1, crop_size=16, eval_resize=16, eval_crop_size=16,
           jit_photometric=False)
  c.model.update(depth=18, width=0.125, preset="cvrl")
  c.probe.update(extract_features=True, feature_epochs=1, save_model=False)
  c.evaluate.update(num_clips=1, num_crops=1, batch_size=8)
  return c
"""


@pytest.mark.slow
def test_tiny_grid_end_to_end(tmp_path):
  """2 depths of a real job (a linear probe of random-init encoders on synthetic videos)
  through the command line: runs, results, CSV, table and plot (lines between points
  are checked on collected results above; each run here costs a process and a compile)."""
  config = tmp_path / "tiny_probe.py"
  config.write_text(TINY_PROBE_CONFIG)
  workdir = tmp_path / "sweep"
  argv = [sys.executable, "-m", "experiments.sweep", f"--config={config}", "--depths=18,34",
          "--widths=0.0625", f"--workdir={workdir}", "--launch=local", "--collect"]
  out = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, timeout=900, check=False)
  assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
  names = ["d18_w0.0625", "d34_w0.0625"]
  with open(workdir / "sweep.csv") as f:
    table = list(csv.DictReader(f))
  assert [r["point"] for r in table] == names
  for r in table:
    with open(workdir / r["point"] / "results.json") as f:
      res = json.load(f)
    assert res["job"] == "probe"
    assert float(r["top1"]) == pytest.approx(res["metrics"]["top1"])
    assert float(r["train_accuracy"]) == pytest.approx(res["metrics"]["train_accuracy"])
    assert int(r["backbone_params"]) == r3d_params(int(r["model.depth"]), float(r["model.width"]))
    assert r["status"] == "done"
  md = (workdir / "sweep.md").read_text().splitlines()
  assert [l.split("|")[1].strip() for l in md if l.startswith("| d")] == names
  assert (workdir / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

  again = subprocess.run(argv[:-1], capture_output=True, text=True, cwd=ROOT, timeout=300,
                         check=False)  # every point has results.json: all skipped
  assert again.returncode == 0, again.stderr[-2000:]
  assert again.stdout.count("results exist, skipped") == len(names)
