"""The evaluate job: report files, score fusion, and the jobs end to end on synthetic data."""
import csv
import json
import os

import numpy as np
import pytest

from _downstream_toys import tiny_data
from cvrl.train import evaluate
from cvrl.train import features as F
from cvrl.train import probe


def test_report_files_agree_with_the_scores(tmp_path):
  rng = np.random.default_rng(0)
  probs = rng.dirichlet(np.ones(3), size=11)
  labels = rng.integers(0, 3, 11)
  out = F.SplitOutputs(probs, labels, np.arange(100, 111))
  metrics, cm = evaluate.classification_report(out, 3, str(tmp_path))
  np.testing.assert_array_equal(np.load(tmp_path / "confusion_matrix.npy"), cm)
  np.testing.assert_array_equal(np.loadtxt(tmp_path / "confusion_matrix.csv", delimiter=",",
                                           dtype=int).reshape(3, 3), cm)
  rows = list(csv.DictReader(open(tmp_path / "per_class_accuracy.csv")))
  for c, row in enumerate(rows):
    assert int(row["videos"]) == np.sum(labels == c)
    assert int(row["correct"]) == np.sum((labels == c) & (probs.argmax(1) == c))
  saved = evaluate.load_scores(str(tmp_path / "scores.npz"))
  np.testing.assert_array_equal(saved["index"], np.arange(100, 111))
  assert metrics["top1"] == pytest.approx(np.mean(probs.argmax(1) == labels))


def test_fusion_aligns_videos_by_index():
  rng = np.random.default_rng(1)
  idx = np.arange(20)
  labels = rng.integers(0, 4, 20)
  a, b = rng.dirichlet(np.ones(4), 20), rng.dirichlet(np.ones(4), 20)
  perm = rng.permutation(20)
  runs = [{"index": idx, "label": labels, "probs": a},
          {"index": idx[perm], "label": labels[perm], "probs": b[perm]}]
  got = evaluate.fuse(runs, "mean", 4)
  assert got["top1"] == pytest.approx(np.mean(((a + b) / 2).argmax(1) == labels))
  got = evaluate.fuse(runs, "_downstream_toys:max_fusion", 4)  # a user's fusion function
  assert got["top1"] == pytest.approx(np.mean(np.maximum(a, b).argmax(1) == labels))
  with pytest.raises(ValueError, match="different videos"):
    evaluate.fuse([runs[0], {"index": idx + 1, "label": labels, "probs": b}], "mean", 4)
  with pytest.raises(ValueError, match="module:function"):
    evaluate.fusion_function("max")


def test_validate_names_the_choices(tmp_path):
  c = evaluate.base_config()
  with pytest.raises(ValueError, match="run_dir"):
    evaluate.validate(c)
  c.evaluate.run_dir = str(tmp_path)
  with pytest.raises(FileNotFoundError, match="model.json"):
    evaluate.validate(c)
  c.evaluate.mode = "knn"
  with pytest.raises(ValueError, match="pretrained"):
    evaluate.validate(c)
  c.evaluate.mode = "linear"
  with pytest.raises(ValueError, match="multiview"):
    evaluate.validate(c)


@pytest.mark.slow
def test_probe_then_multiview_and_knn_evaluation_on_synthetic_data(tmp_path_factory):
  """13 test videos, global batch 8 on 8 devices: every video counted once, end to end."""
  data_dir = tmp_path_factory.mktemp("synthetic")
  work = tmp_path_factory.mktemp("runs")
  c = tiny_data(probe.base_config(), data_dir)
  c.random_init = True
  c.batch_size = 8
  c.total_epochs, c.total_steps = None, 3
  c.warmup_epochs, c.warmup_steps = None, 1
  c.optim.update(dict(base_lr=0.5, base_batch_size=8))
  c.probe.extract_features = True
  c.evaluate.update(dict(num_clips=2, num_crops=3, batch_size=8, knn_clips=2))
  probe_dir = str(work / "probe")
  res = probe.run(c, probe_dir)
  saved = json.load(open(os.path.join(probe_dir, "results.json")))
  assert saved["metrics"]["top1"] == pytest.approx(res["metrics"]["top1"])
  assert saved["probe"]["test"]["num_videos"] == 13
  assert saved["probe"]["test"]["views_per_video"] == 6
  assert saved["config"]["job"] == "probe" and saved["probe"]["source"]["init"] == "random"

  e = evaluate.base_config()
  e.data = c.data
  e.model = c.model
  e.evaluate = c.evaluate
  e.evaluate.run_dir = probe_dir
  e.evaluate.fuse_with = os.path.join(probe_dir, "scores.npz")
  ev = evaluate.run(e, str(work / "eval"))
  # The saved classifier reproduces the probe's own test, video for video.
  a = evaluate.load_scores(os.path.join(probe_dir, "scores.npz"))
  b = evaluate.load_scores(str(work / "eval" / "scores.npz"))
  np.testing.assert_array_equal(np.sort(b["index"]), np.sort(a["index"]))
  np.testing.assert_allclose(b["probs"], a["probs"], rtol=1e-4, atol=1e-6)
  assert ev["metrics"]["num_videos"] == 13
  assert ev["metrics"]["fused"]["top1"] == pytest.approx(ev["metrics"]["top1"])  # self-fusion

  e.evaluate.mode = "knn"
  e.random_init = True
  knn = evaluate.run(e, str(work / "knn"))["metrics"]
  assert knn["num_queries"] == 13 and knn["num_keys"] == 24
  recalls = [knn[f"recall@{k}"] for k in (1, 5, 10, 20)]
  assert recalls == sorted(recalls) and recalls[-1] > 0.9  # 20 of 24 keys: nearly every class
  assert json.load(open(work / "knn" / "results.json"))["mode"] == "knn"
