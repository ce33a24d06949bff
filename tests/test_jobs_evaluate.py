"""The evaluate job: report files, score fusion, and the jobs end to end on synthetic data."""
import csv
import json

import jax
import numpy as np
import pytest

from _downstream_toys import tiny_data
from cvrl.models.heads import EncoderHead
from cvrl import config_lib
from cvrl.core import parallel
from cvrl.data import sources
from cvrl.eval import common
from cvrl.eval import features as F
from cvrl.eval import multiview
from cvrl.jobs import evaluate


def test_report_files_agree_with_the_scores(tmp_path):
  rng = np.random.default_rng(0)
  probs = rng.dirichlet(np.ones(3), size=11)
  labels = rng.integers(0, 3, 11)
  out = F.SplitOutputs(probs, labels, np.arange(100, 111))
  metrics, cm = multiview.classification_report(out, 3, str(tmp_path))
  np.testing.assert_array_equal(np.load(tmp_path / "confusion_matrix.npy"), cm)
  np.testing.assert_array_equal(np.loadtxt(tmp_path / "confusion_matrix.csv", delimiter=",",
                                           dtype=int).reshape(3, 3), cm)
  rows = list(csv.DictReader(open(tmp_path / "per_class_accuracy.csv")))
  for c, row in enumerate(rows):
    assert int(row["videos"]) == np.sum(labels == c)
    assert int(row["correct"]) == np.sum((labels == c) & (probs.argmax(1) == c))
  saved = multiview.load_scores(str(tmp_path / "scores.npz"))
  np.testing.assert_array_equal(saved["index"], np.arange(100, 111))
  assert metrics["top1"] == pytest.approx(np.mean(probs.argmax(1) == labels))


def _fused_metrics_by_video(probs_by_video, label_by_video, fusion):
  """top-1, top-5 and mean class accuracy of fused per-video scores, one video at a time."""
  correct = {1: {}, 5: {}}
  for video, label in label_by_video.items():
    fused = fusion(*(p[video] for p in probs_by_video))
    ranked = sorted(range(len(fused)), key=lambda c: -fused[c])
    for k in correct:
      correct[k][video] = label in ranked[:k]
  per_class = [np.mean([correct[1][v] for v, l in label_by_video.items() if l == c])
               for c in sorted(set(label_by_video.values()))]
  return {"top1": np.mean(list(correct[1].values())), "top5": np.mean(list(correct[5].values())),
          "mean_class_accuracy": np.mean(per_class)}


def test_fusion_aligns_videos_by_index():
  """Each run lists the videos in its own row order (as runs over differently sharded or
  ordered test sets do): fusion pairs the rows of one video, checked video by video."""
  rng = np.random.default_rng(1)
  videos = rng.choice(1000, 30, replace=False)
  label = {v: int(rng.integers(0, 6)) for v in videos}
  probs = [{v: rng.dirichlet(np.ones(6)) for v in videos} for _ in range(2)]
  runs = []
  for p in probs:
    order = rng.permutation(videos)
    runs.append({"index": order, "label": np.array([label[v] for v in order]),
                 "probs": np.stack([p[v] for v in order])})
  index, labels, aligned = multiview.align_scores(runs)
  np.testing.assert_array_equal(index, np.sort(videos))
  np.testing.assert_array_equal(labels, [label[v] for v in index])
  for p, rows in zip(probs, aligned):
    np.testing.assert_array_equal(rows, np.stack([p[v] for v in index]))
  for fusion, fn in (("mean", lambda *p: np.mean(p, axis=0)),
                     ("_downstream_toys:max_fusion", np.maximum)):  # a user's fusion function
    got = multiview.fuse(runs, fusion, 6)
    for key, value in _fused_metrics_by_video(probs, label, fn).items():
      assert got[key] == pytest.approx(value), (fusion, key)
  with pytest.raises(ValueError, match="different videos"):
    multiview.fuse([runs[0], dict(runs[1], index=runs[1]["index"] + 1)], "mean", 6)
  with pytest.raises(ValueError, match="module:function"):
    multiview.fusion_function("max")


def test_validate_names_the_choices(tmp_path):
  c = config_lib.evaluate_config()
  with pytest.raises(ValueError, match="run_dir"):
    evaluate.parse(c)
  c.evaluate.run_dir = str(tmp_path)
  with pytest.raises(FileNotFoundError, match="model.json"):
    evaluate.parse(c)
  c.evaluate.mode = "knn"
  with pytest.raises(ValueError, match="pretrained"):
    evaluate.parse(c)
  c.evaluate.mode = "linear"  # any evaluator kind is a mode (cvrl/eval/linear.py)
  with pytest.raises(ValueError, match="mode 'linear' needs config.pretrained"):
    evaluate.parse(c)
  c.random_init = True
  evaluate.parse(c)
  c.evaluate.mode = "svm"
  with pytest.raises(ValueError, match=r"knn, linear, multiview, got 'svm'"):
    evaluate.parse(c)


@pytest.mark.slow
def test_multiview_and_knn_jobs_on_synthetic_data(tmp_path_factory):
  """13 test videos, global batch 8 on 8 devices: every video counted once, end to end."""
  from flax import nnx  # pylint: disable=import-outside-toplevel
  from _downstream_toys import numpy_filled, save_numpy_checkpoint  # pylint: disable=import-outside-toplevel
  from cvrl.models import build_encoder  # pylint: disable=import-outside-toplevel
  from cvrl.models.heads import LinearClassifier  # pylint: disable=import-outside-toplevel
  from cvrl.eval import classifier_io  # pylint: disable=import-outside-toplevel
  work = tmp_path_factory.mktemp("runs")
  e = tiny_data(config_lib.evaluate_config(), tmp_path_factory.mktemp("synthetic"))
  e.evaluate.update(num_clips=2, num_crops=3, batch_size=8, knn_clips=2, recall_ks=(1, 5, 10, 20))
  sources.prepare(e.data, ["eval"])

  # A trained classifier as probe / finetune leave it in their workdir.
  model = numpy_filled(lambda: EncoderHead(
      build_encoder(e.model, nnx.Rngs(0)), LinearClassifier(64, 4, rngs=nnx.Rngs(1))), seed=4)
  run_dir = str(work / "probe")
  classifier_io.save_classifier(run_dir, model, e.model, num_classes=4, normalize=True,
                                dropout=0.3, source={"init": "test"})
  splits = common.Splits(e.data, int(e.seed))
  with jax.set_mesh(parallel.make_mesh()):
    in_process = multiview.evaluate_classifier(model, splits, str(work / "in_process"),
                                               multiview.Test.of(e.evaluate))
  e.evaluate.run_dir = run_dir
  e.evaluate.fuse_with = str(work / "in_process" / "scores.npz")
  ev = evaluate.run(evaluate.parse(e), str(work / "eval"))
  a = multiview.load_scores(str(work / "in_process" / "scores.npz"))
  b = multiview.load_scores(str(work / "eval" / "scores.npz"))
  assert len(b["index"]) == 13 and len(set(b["index"].tolist())) == 13
  np.testing.assert_array_equal(a["index"], b["index"])
  np.testing.assert_allclose(b["probs"], a["probs"], rtol=1e-5, atol=1e-7)  # saved == in memory
  assert ev["metrics"]["num_videos"] == 13 and ev["metrics"]["views_per_video"] == 6
  assert ev["metrics"]["top1"] == pytest.approx(in_process["top1"])
  assert ev["metrics"]["fused"]["top1"] == pytest.approx(ev["metrics"]["top1"])  # self-fusion
  saved = json.load(open(work / "eval" / "results.json"))
  assert saved["checkpoint"]["run_dir"] == run_dir and saved["config"]["job"] == "evaluate"

  pre = tiny_data(config_lib.pretrain_config("cvrl"), e.data.synthetic.dir)
  pre.objective.update(head_hidden=16, head_out=8, head_layers=1)
  save_numpy_checkpoint(pre, str(work / "pretrain"))
  e.evaluate.mode = "knn"
  e.pretrained = str(work / "pretrain")
  knn = evaluate.run(evaluate.parse(e), str(work / "knn"))["metrics"]
  assert knn["num_queries"] == 13 and knn["num_keys"] == 24 and knn["views_per_video"] == 2
  recalls = [knn[f"recall@{k}"] for k in (1, 5, 10, 20)]
  assert recalls == sorted(recalls) and recalls[-1] > 0.9  # 20 of 24 keys: nearly every class
  saved = json.load(open(work / "knn" / "results.json"))
  assert saved["mode"] == "knn" and saved["checkpoint"]["init"] == "pretrained"

  e.evaluate.mode = "linear"  # any evaluator kind, at its defaults, on the checkpoint
  lin = evaluate.run(evaluate.parse(e), str(work / "linear"))
  assert lin["mode"] == "linear" and lin["checkpoint"]["init"] == "pretrained"
  assert lin["metrics"]["num_videos"] == 13 and 0.0 <= lin["metrics"]["top1"] <= 1.0


def test_recipe_configs_also_drive_the_evaluate_job(tmp_path):
  """`--config=configs/cvrl_k600_linear.py --config.job=evaluate` reads the same fields."""
  from configs import cvrl_k600_linear, ucf101_finetune  # pylint: disable=import-outside-toplevel
  from cvrl import main  # pylint: disable=import-outside-toplevel
  (tmp_path / "model.json").write_text("{}")
  for c in (cvrl_k600_linear.get_config("pretrained=/ckpt"),
            ucf101_finetune.get_config("pretrained=/ckpt")):
    c.job = "evaluate"
    c.evaluate.run_dir = str(tmp_path)
    c.lock()
    assert main.parse(c)[0] is evaluate
    c.evaluate.mode = "knn"
    main.parse(c)  # knn reads config.pretrained (set) or random_init


def test_linear_evaluator_head_fits_separable_features():
  """The 'linear' evaluator's classifier on cached features (the engine's FeatureHeadTask
  fit): held-out clusters classified, its forward pass Dense(f / ||f||) in numpy."""
  from flax import nnx  # pylint: disable=import-outside-toplevel
  from cvrl.eval import linear  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(0)
  centres = rng.normal(size=(4, 16)) * 3

  def split(n):
    y = rng.integers(0, 4, n)
    x = (centres[y] + rng.normal(size=(n, 16))).astype(np.float32)
    return F.SplitOutputs(x, y.astype(np.int64), np.arange(n))
  train, test = split(128), split(64)
  head = linear.fit_head(train, 4, normalize=True, steps=100, batch=32, lr=1.0, seed=0)
  logits = np.asarray(nnx.jit(lambda h, x: h(x))(head, test.values))
  assert np.mean(logits.argmax(1) == test.labels) > 0.9
  f = test.values / np.linalg.norm(test.values, axis=1, keepdims=True)
  want = f @ np.asarray(head.dense.kernel[...]) + np.asarray(head.dense.bias[...])
  np.testing.assert_allclose(logits, want, rtol=1e-4, atol=1e-5)
