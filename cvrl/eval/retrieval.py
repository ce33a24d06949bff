"""Nearest-neighbour retrieval and kNN classification on video features (TCLR protocol).

Pure numpy on host arrays: the features of a whole split are small (videos x channels)
next to the videos, and exact top-k needs no accelerator. Test videos query the
training videos by cosine similarity; retrieval top-k counts a hit when ANY of the k
nearest training videos has the query's class (TCLR, Dave et al., CVIU 2022).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

RECALL_KS = (1, 5, 10, 20)
VOTES = ("majority", "weighted")


def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
  x = np.asarray(x, np.float32)
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), eps)


def nearest_neighbours(queries: np.ndarray, keys: np.ndarray, k: int,
                       chunk: int = 1024) -> tuple[np.ndarray, np.ndarray]:
  """Cosine similarities and indices of the k nearest keys of each query, nearest first.

  Both sides are L2-normalised here. Queries go in chunks so a K600-sized search
  (55k x 366k) never holds the full similarity matrix.
  """
  q, kk = l2_normalize(queries), l2_normalize(keys)
  k = min(int(k), kk.shape[0])
  sims = np.empty((q.shape[0], k), np.float32)
  idx = np.empty((q.shape[0], k), np.int64)
  for start in range(0, q.shape[0], chunk):
    s = q[start:start + chunk] @ kk.T
    part = np.argpartition(-s, k - 1, axis=1)[:, :k] if k < s.shape[1] else \
        np.tile(np.arange(s.shape[1]), (s.shape[0], 1))
    part_s = np.take_along_axis(s, part, axis=1)
    order = np.argsort(-part_s, axis=1, kind="stable")
    idx[start:start + chunk] = np.take_along_axis(part, order, axis=1)
    sims[start:start + chunk] = np.take_along_axis(part_s, order, axis=1)
  return sims, idx


def retrieval_recall(query_labels: np.ndarray, key_labels: np.ndarray, nn_idx: np.ndarray,
                     ks: Sequence[int] = RECALL_KS) -> dict[int, float]:
  """Fraction of queries with at least one same-class video among their k nearest keys."""
  neighbour_labels = np.asarray(key_labels)[nn_idx]
  same = neighbour_labels == np.asarray(query_labels)[:, None]
  return {int(k): float(np.mean(np.any(same[:, :k], axis=1))) for k in ks}


def knn_predict(nn_sims: np.ndarray, nn_labels: np.ndarray, num_classes: int, k: int,
                vote: str = "weighted", temperature: float = 0.07) -> np.ndarray:
  """Class of each query from its k nearest labelled neighbours.

  vote='weighted': class score = sum of exp(similarity / temperature) over the neighbours
    of that class (the weighted kNN of Wu et al. 2018, also used by DINO).
  vote='majority': the most frequent class; a tie goes to the tied class whose
    neighbours have the larger summed similarity.
  """
  if vote not in VOTES:
    raise ValueError(f"kNN vote must be one of {VOTES}, got {vote!r}")
  s = np.asarray(nn_sims, np.float64)[:, :k]
  lab = np.asarray(nn_labels)[:, :k]
  onehot = np.eye(num_classes)[lab]  # [Q, k, C]
  if vote == "weighted":
    score = np.einsum("qk,qkc->qc", np.exp(s / temperature), onehot)
  else:
    counts = onehot.sum(1)
    sim_sum = np.einsum("qk,qkc->qc", s, onehot)  # in [-k, k]
    score = counts * (2 * k + 1) + sim_sum  # counts first, then similarity
  return np.argmax(score, axis=1)


def knn_evaluate(train_features: np.ndarray, train_labels: np.ndarray,
                 test_features: np.ndarray, test_labels: np.ndarray, *, num_classes: int,
                 ks: Sequence[int] = RECALL_KS, knn_k: int = 20, vote: str = "weighted",
                 temperature: float = 0.07) -> dict:
  """Retrieval recall@k (test -> train) and kNN classification accuracy."""
  sims, idx = nearest_neighbours(test_features, train_features, max(max(ks), knn_k))
  recall = retrieval_recall(test_labels, train_labels, idx, ks)
  pred = knn_predict(sims, np.asarray(train_labels)[idx], num_classes, knn_k, vote, temperature)
  out = {f"recall@{k}": v for k, v in recall.items()}
  out["knn_accuracy"] = float(np.mean(pred == np.asarray(test_labels)))
  out["knn_k"] = int(knn_k)
  out["knn_vote"] = vote
  out["num_queries"] = int(len(test_labels))
  out["num_keys"] = int(len(train_labels))
  return out
