"""The 'knn' evaluator (TCLR's retrieval protocol, Dave et al., CVIU 2022): backbone
features averaged over `num_clips` x `num_crops` views, L2-normalised; each video of the
test split queries the labelled train split by cosine similarity. Reports retrieval
recall@k (a hit when any of the k nearest training videos shares the class) and weighted
kNN top-1 (Wu et al. 2018; `knn_vote`: 'weighted' by exp(sim / T), or 'majority').
"""
from __future__ import annotations

from cvrl.eval import common
from cvrl.eval import retrieval


class KNN(common.Evaluator):
  headline = ("knn_accuracy", "recall@1")

  def __init__(self, make_encoder, splits, *, num_clips: int = 2, num_crops: int = 1,
               knn_k: int = 20, knn_vote: str = "weighted", knn_temperature: float = 0.07,
               recall_ks: tuple = (1, 5), **common_fields):
    """num_clips x num_crops: views per video whose features are averaged; knn_k
    neighbours vote ('weighted' / 'majority', weights exp(sim / knn_temperature));
    recall@k for each k of recall_ks."""
    super().__init__(make_encoder, splits, **common_fields)
    common.check_choice(self.name, "knn_vote", knn_vote, retrieval.VOTES)
    common.check_choice(self.name, "num_crops", num_crops, (1, 3))
    self.num_clips, self.num_crops = int(num_clips), int(num_crops)
    self.knn_k, self.knn_vote, self.knn_temperature = int(knn_k), knn_vote, float(knn_temperature)
    self.recall_ks = tuple(int(k) for k in recall_ks)

  def evaluate(self, encoder) -> dict:
    return {k: v for k, v in self.report(encoder)[0].items() if k != "seconds"}

  def report(self, encoder) -> tuple[dict, tuple]:
    """(recall@k and kNN accuracy of `encoder`'s view-averaged features with the seconds
    they took, the evaluate job's headline)."""
    feats = self.splits.features(encoder, self.num_clips, self.num_crops, self.batch_size)
    train, test = feats["train"], feats["eval"]
    metrics = retrieval.knn_evaluate(
        train.values, train.labels, test.values, test.labels,
        num_classes=self.splits.num_classes, ks=self.recall_ks, knn_k=self.knn_k,
        vote=self.knn_vote, temperature=self.knn_temperature)
    metrics["views_per_video"] = self.num_clips * self.num_crops
    metrics["seconds"] = train.seconds + test.seconds
    keys = tuple(f"recall@{k}" for k in self.recall_ks) + ("knn_accuracy", "num_queries")
    return metrics, keys


make = KNN  # the kind's entry point (cvrl.core.discovery)
