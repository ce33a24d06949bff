"""Retrieval recall@k and kNN votes against independent loop computations."""
import collections

import numpy as np
import pytest

from cvrl.eval import retrieval


def fixed_features(seed=0, n_train=57, n_test=23, dim=16, classes=5):
  rng = np.random.default_rng(seed)
  centres = rng.normal(size=(classes, dim))
  train_y = rng.integers(0, classes, n_train)
  test_y = rng.integers(0, classes, n_test)
  train_x = centres[train_y] + 1.5 * rng.normal(size=(n_train, dim))
  test_x = centres[test_y] + 1.5 * rng.normal(size=(n_test, dim))
  return train_x, train_y, test_x, test_y


def brute_force_ranking(test_x, train_x):
  """Cosine similarity, full sort, one query at a time (no shared code with retrieval)."""
  out = []
  for q in test_x:
    sims = [float(np.dot(q, t) / (np.linalg.norm(q) * np.linalg.norm(t))) for t in train_x]
    out.append(sorted(range(len(train_x)), key=lambda i: -sims[i]))
  return out


def test_nearest_neighbours_match_full_sort_across_chunks():
  train_x, _, test_x, _ = fixed_features()
  sims, idx = retrieval.nearest_neighbours(test_x, train_x, k=10, chunk=4)
  ranking = brute_force_ranking(test_x, train_x)
  np.testing.assert_array_equal(idx, np.array([r[:10] for r in ranking]))
  assert np.all(np.diff(sims, axis=1) <= 0)
  q = test_x[3] / np.linalg.norm(test_x[3])
  t = train_x[idx[3, 0]] / np.linalg.norm(train_x[idx[3, 0]])
  assert sims[3, 0] == pytest.approx(float(q @ t), abs=1e-5)


def test_recall_at_k_matches_independent_numpy():
  train_x, train_y, test_x, test_y = fixed_features()
  got = retrieval.knn_evaluate(train_x, train_y, test_x, test_y, num_classes=5)
  ranking = brute_force_ranking(test_x, train_x)
  for k in (1, 5, 10, 20):
    hits = [any(train_y[j] == test_y[q] for j in ranking[q][:k]) for q in range(len(test_y))]
    assert got[f"recall@{k}"] == pytest.approx(np.mean(hits))
  # recall@k can only grow with k; on this data it is not trivially 0 or 1 at k = 1
  rec = [got[f"recall@{k}"] for k in (1, 5, 10, 20)]
  assert rec == sorted(rec) and 0 < rec[0] < 1


def test_knn_votes_match_independent_computation():
  train_x, train_y, test_x, test_y = fixed_features(seed=1)
  k, temp = 7, 0.1
  sims, idx = retrieval.nearest_neighbours(test_x, train_x, k)
  majority = retrieval.knn_predict(sims, train_y[idx], 5, k, vote="majority")
  weighted = retrieval.knn_predict(sims, train_y[idx], 5, k, vote="weighted", temperature=temp)
  ranking = brute_force_ranking(test_x, train_x)
  for q in range(len(test_y)):
    nn = ranking[q][:k]
    counts = collections.Counter(int(train_y[j]) for j in nn)
    top = max(counts.values())
    tied = [c for c, n in counts.items() if n == top]
    sim = lambda j: np.dot(test_x[q], train_x[j]) / (np.linalg.norm(test_x[q]) * np.linalg.norm(train_x[j]))
    simsum = {c: sum(sim(j) for j in nn if train_y[j] == c) for c in tied}
    assert majority[q] == max(tied, key=lambda c: simsum[c])
    score = collections.defaultdict(float)
    for j in nn:
      score[int(train_y[j])] += np.exp(sim(j) / temp)
    assert weighted[q] == max(score, key=score.get)


def test_majority_tie_goes_to_the_more_similar_class():
  sims = np.array([[0.9, 0.8, 0.7, 0.6]])
  labels = np.array([[2, 1, 1, 2]])  # 2 votes each; class 2 sums 1.5, class 1 sums 1.5 - eps
  sims[0, 3] = 0.61
  assert retrieval.knn_predict(sims, labels, 3, 4, vote="majority")[0] == 2
  sims[0, 3] = 0.59
  assert retrieval.knn_predict(sims, labels, 3, 4, vote="majority")[0] == 1
  with pytest.raises(ValueError, match="majority"):
    retrieval.knn_predict(sims, labels, 3, 4, vote="mode")


def test_identical_train_and_test_sets_give_perfect_recall_at_1():
  train_x, train_y, _, _ = fixed_features(seed=2)
  got = retrieval.knn_evaluate(train_x, train_y, train_x, train_y, num_classes=5, knn_k=1)
  assert got["recall@1"] == 1.0 and got["knn_accuracy"] == 1.0
