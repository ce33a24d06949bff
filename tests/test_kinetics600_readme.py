"""experiments/kinetics600/README.md: every command in its bash blocks is a real one, and
its compute table follows from the summary job's GFLOPs.

cvrl.main commands are parsed exactly as the CLI parses them and run as the summary job;
make_csv runs for real on a fake Kinetics tree; the converter's flags and the CSVs it
reads are checked without decoding; the importer's flags are parsed.
"""
import csv
import os
import re
import shlex

import pytest
from absl import flags

from cvrl import config_lib
from cvrl.jobs import summary
from experiments.kinetics600 import make_csv

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "experiments", "kinetics600", "README.md")
K600_VIDEOS = 366_016


def commands() -> list[list[str]]:
  """Every command of the README's bash blocks, continuation lines joined."""
  text = open(README).read()
  out = []
  for block in re.findall(r"```bash\n(.*?)```", text, re.S):
    for line in block.replace("\\\n", " ").splitlines():
      line = line.strip()
      if line and not line.startswith("#"):
        out.append(line)
  return out


def argv_of(line: str, env: dict) -> list[str]:
  words = shlex.split(line)
  while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):  # VAR=value prefixes
    words = words[1:]
  return [re.sub(r"\$(\w+)", lambda m: env[m.group(1)], w) for w in words]


@pytest.fixture()
def fake_k600(tmp_path):
  """Official-format annotation CSVs for 3 classes and a few (empty) clips on disk."""
  env = {"K600": str(tmp_path / "k600"), "RUNS": str(tmp_path / "runs")}
  ann = tmp_path / "k600" / "annotations"
  ann.mkdir(parents=True)
  classes = ["abseiling", "zumba", "juggling balls"]
  for split, folder, n in (("train", "train", 6), ("validate", "val", 2)):
    rows = [(c, f"{split[:2]}{i:02d}{k:07d}", 10, 20, split)
            for k, c in enumerate(classes) for i in range(n)]
    with open(ann / f"{split}.csv", "w", newline="") as f:
      w = csv.writer(f)
      w.writerow(["label", "youtube_id", "time_start", "time_end", "split"])
      w.writerows(rows)
    for c, yid, *_ in rows[1:]:  # the first clip is "taken down"
      d = tmp_path / "k600" / "videos" / folder / c
      d.mkdir(parents=True, exist_ok=True)
      (d / f"{yid}_000010_000020.mp4").write_bytes(b"")
  return env


def parse_cvrl_main(argv: list[str]):
  return config_lib.config_from_command_line([*argv[3:], "--config.job=summary"])


def test_every_readme_command_is_real(fake_k600, monkeypatch):
  from cvrl.data import convert  # pylint: disable=import-outside-toplevel
  from cvrl.tools import import_tf_checkpoint  # pylint: disable=import-outside-toplevel
  converted = []
  monkeypatch.setattr(convert, "convert", lambda items, *a, **kw: converted.append(items) or {
      "videos": len(items), "written": len(items), "unreadable": [], "num_shards": a[1],
      "num_classes": len({l for _, l in items})})
  seen, summaries = set(), {}
  lines = commands()
  assert len(lines) >= 15
  for line in lines:
    if line.startswith("export "):
      continue
    argv = argv_of(line, fake_k600)
    assert argv[:2] == ["python", "-m"], f"not a python module command: {line}"
    module = argv[2]
    seen.add(module)
    if module == "experiments.kinetics600.make_csv":
      assert make_csv.main(argv[3:]) == 0
    elif module == "cvrl.data.convert":
      assert convert.main(argv[3:]) == 0
      assert converted[-1], line
    elif module == "cvrl.tools.import_tf_checkpoint":
      fv = flags.FlagValues()
      import_tf_checkpoint.define_flags(fv)
      fv(["import_tf_checkpoint", *argv[3:]])
      assert fv.checkpoint and fv.workdir
    elif module == "cvrl.main":
      config = parse_cvrl_main(argv)
      summaries[line] = summary.summarize(summary.parse(config))
    else:
      raise AssertionError(f"the README test does not know how to check {module}: {line}")
  assert seen >= {"experiments.kinetics600.make_csv", "cvrl.data.convert", "cvrl.main",
                  "cvrl.tools.import_tf_checkpoint"}
  assert sum(1 for l in summaries if "cvrl_k600_r3d50" in l) == 3
  assert sum(1 for l in summaries if "cvrl_k600_linear" in l) == 3
  for l, s in summaries.items():  # the linear eval runs the 32-frame clips
    assert s["input_shape"][0] == (32 if "cvrl_k600_linear" in l else 16), l

  # make_csv: 1 clip per split missing, integer labels from the shared class list.
  k600 = fake_k600["K600"]
  assert open(f"{k600}/lists/classes.txt").read().split("\n")[:3] == [
      "abseiling", "juggling balls", "zumba"]
  with open(f"{k600}/lists/train.csv") as f:
    rows = list(csv.reader(f))[1:]
  assert len(rows) == 17 and {r[1] for r in rows} == {"0", "1", "2"}
  assert len(open(f"{k600}/lists/train.csv.missing.txt").read().split()) == 1
  # the converter read exactly those rows, with the labels kept as integers
  assert sorted(converted[0]) == sorted((p, l) for p, l in rows)
  with open(f"{k600}/smoke/train.csv") as f:  # --fraction: >= 1 clip per class
    assert len(list(csv.reader(f))) - 1 in (2, 3)


def test_compute_table_follows_from_the_summary_job():
  text = open(README).read()
  table = [l for l in text.splitlines() if re.match(r"\| (pretrain|linear eval) ", l)]
  assert len(table) == 3
  gflops = {}
  for frames, crop in ((16, 224), (32, 224), (32, 256)):
    config = parse_cvrl_main(["python", "-m", "cvrl.main",
                              "--config=configs/cvrl_k600_r3d50.py",
                              f"--config.data.num_frames={frames}",
                              f"--config.data.crop_size={crop}"])
    gflops[(frames, crop)] = summary.summarize(summary.parse(config))["gflops_per_clip"]
  for g in gflops.values():
    assert f"{g:g}" in text
  for line in table:
    cells = [c.strip() for c in line.strip("|").split("|")]
    g, clips, passes, epochs, eflops, v3, a100 = (float(c) for c in cells[1:])
    want_g = gflops[(16, 224)] if cells[0].startswith("pretrain") else gflops[(32, 224)]
    assert g == want_g
    assert clips == (2 if cells[0].startswith("pretrain") else 1) * K600_VIDEOS
    total = g * 1e9 * clips * passes * epochs
    assert eflops == pytest.approx(total / 1e18, abs=0.006)
    assert v3 == pytest.approx(total / (0.4 * 123e12) / 3600, abs=0.5)
    assert a100 == pytest.approx(total / (0.4 * 312e12) / 3600, abs=0.5)
