"""Video-level classification metrics from per-view scores (pure, host-side numpy).

Multi-view testing averages the softmax of every view of a video (CVRL: 10 clips x 3
crops); these functions turn the averaged per-video probabilities into top-k accuracy,
per-class accuracy and a confusion matrix.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np


def softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
  z = np.asarray(logits, np.float64)
  z = z - z.max(axis=axis, keepdims=True)
  e = np.exp(z)
  return e / e.sum(axis=axis, keepdims=True)


def average_views(view_logits: np.ndarray) -> np.ndarray:
  """[videos, views, classes] logits -> [videos, classes] mean of the views' softmax."""
  return softmax(view_logits, axis=-1).mean(axis=1)


def topk_correct(probs: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
  """[videos] bool: the label is among the k highest scores (ties broken by class id)."""
  order = np.argsort(-np.asarray(probs), axis=1, kind="stable")[:, :k]
  return np.any(order == np.asarray(labels)[:, None], axis=1)


def confusion_matrix(labels: np.ndarray, preds: np.ndarray, num_classes: int) -> np.ndarray:
  """[true class, predicted class] counts (int64)."""
  cm = np.zeros((num_classes, num_classes), np.int64)
  np.add.at(cm, (np.asarray(labels), np.asarray(preds)), 1)
  return cm


def per_class_accuracy(cm: np.ndarray) -> np.ndarray:
  """Recall of each class (NaN for a class without test videos)."""
  total = cm.sum(axis=1)
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.where(total > 0, np.diag(cm) / np.maximum(total, 1), np.nan)


def classification_metrics(probs: np.ndarray, labels: np.ndarray, num_classes: int,
                           ks: Sequence[int] = (1, 5)) -> tuple[dict, np.ndarray]:
  """Headline metrics dict and the confusion matrix of the top-1 predictions."""
  probs, labels = np.asarray(probs), np.asarray(labels)
  cm = confusion_matrix(labels, np.argmax(probs, axis=1), num_classes)
  pca = per_class_accuracy(cm)
  out = {f"top{k}": float(np.mean(topk_correct(probs, labels, k))) for k in ks
         if k <= num_classes}
  out["mean_class_accuracy"] = float(np.nanmean(pca)) if np.any(np.isfinite(pca)) else float("nan")
  out["num_videos"] = int(len(labels))
  return out, cm
