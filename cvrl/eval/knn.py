"""The 'knn' evaluator (TCLR's retrieval protocol, Dave et al., CVIU 2022): backbone
features averaged over `num_clips` x `num_crops` views, L2-normalised; each video of the
test split queries the labelled train split by cosine similarity. Reports retrieval
recall@k (a hit when any of the k nearest training videos shares the class) and weighted
kNN top-1 (Wu et al. 2018; `knn_vote`: 'weighted' by exp(sim / T), or 'majority').

As the evaluate job's mode='knn' it reads config.evaluate's knn fields instead.
"""
from __future__ import annotations

from cvrl.eval import common
from cvrl.eval import features as F
from cvrl.eval import retrieval


class KNN(common.Evaluator):
  FIELDS = dict(
      num_clips=2, num_crops=1,  # views per video whose features are averaged
      knn_k=20, knn_vote="weighted", knn_temperature=0.07, recall_ks=(1, 5))
  headline = ("knn_accuracy", "recall@1")

  @classmethod
  def check(cls, name, spec) -> None:
    super().check(name, spec)
    common.check_choice(name, spec, "knn_vote", retrieval.VOTES)
    common.check_choice(name, spec, "num_crops", (1, 3))

  def evaluate_fields(self) -> dict:
    s = self.spec
    return dict(knn_clips=int(s.num_clips), knn_crops=int(s.num_crops), knn_k=int(s.knn_k),
                knn_vote=s.knn_vote, knn_temperature=float(s.knn_temperature),
                recall_ks=tuple(int(k) for k in s.recall_ks))

  def evaluate(self, encoder) -> dict:
    out = knn_report(encoder, self.config, self.mesh, self.model_config)
    return {k: v for k, v in out.items() if k != "seconds"}

  @classmethod
  def run_job(cls, config, mesh, workdir: str) -> dict:
    """config.evaluate's knn fields on the encoder of config.pretrained / random_init."""
    del workdir
    encoder, model_config, source = F.load_encoder(config, mesh)
    metrics = knn_report(encoder, config, mesh, model_config)
    keys = [f"recall@{k}" for k in config.evaluate.recall_ks] + ["knn_accuracy", "num_queries"]
    return {"metrics": metrics, "checkpoint": source, "step": source.get("step"),
            "headline": keys}


def knn_report(encoder, config, mesh, model_config=None) -> dict:
  """Retrieval recall@k and kNN accuracy of `encoder`'s clip-averaged features
  (`model_config`: the encoder's, None: config.model)."""
  e = config.evaluate
  feats = common.split_features(encoder, config, mesh, model_config)
  train, test = feats["train"], feats["eval"]
  metrics = retrieval.knn_evaluate(
      train.values, train.labels, test.values, test.labels, num_classes=F.num_classes(config.data),
      ks=tuple(int(k) for k in e.recall_ks), knn_k=int(e.knn_k), vote=e.knn_vote,
      temperature=float(e.knn_temperature))
  metrics["views_per_video"] = int(e.knn_clips) * int(e.knn_crops)
  metrics["seconds"] = train.seconds + test.seconds
  return metrics


make = KNN  # the kind's entry point (cvrl.core.discovery)
