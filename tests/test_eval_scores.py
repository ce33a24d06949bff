"""Video-level metrics from per-view scores, against loops."""
import numpy as np
import pytest

from cvrl.eval import scores


def test_average_views_is_the_mean_of_view_softmaxes():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(4, 6, 5)) * 3
  got = scores.average_views(logits)
  for b in range(4):
    want = np.mean([np.exp(l) / np.exp(l).sum() for l in logits[b]], axis=0)
    np.testing.assert_allclose(got[b], want, rtol=1e-12)
  np.testing.assert_allclose(got.sum(1), 1.0)


def test_topk_confusion_and_per_class_accuracy():
  rng = np.random.default_rng(1)
  probs = rng.random((40, 6))
  labels = rng.integers(0, 5, 40)  # class 5 never occurs
  metrics, cm = scores.classification_metrics(probs, labels, 6)
  for k in (1, 5):
    hits = [labels[i] in np.argsort(-probs[i])[:k] for i in range(40)]
    assert metrics[f"top{k}"] == pytest.approx(np.mean(hits))
  want = np.zeros((6, 6), int)
  for y, p in zip(labels, probs.argmax(1)):
    want[y, p] += 1
  np.testing.assert_array_equal(cm, want)
  pca = scores.per_class_accuracy(cm)
  assert np.isnan(pca[5])
  for c in range(5):
    assert pca[c] == pytest.approx(np.mean(probs.argmax(1)[labels == c] == c))
  assert metrics["mean_class_accuracy"] == pytest.approx(np.mean(pca[:5]))
  assert metrics["num_videos"] == 40
