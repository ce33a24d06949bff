"""rho-SimCLR (Feichtenhofer et al., 2021): NT-Xent over all rho clips of the global batch.

Every other clip of the same video is a positive. For each anchor clip a and each of its
rho - 1 positives p, one cross-entropy over all other clips of the global batch (every
clip but a itself) with p as the target; the loss is the mean over all (a, p) pairs.
With rho = 2 this is the reference's two-clip NT-Xent exactly.

`pairing` (rho > 2): 'consecutive' (the default) as the reference's sequential mode, which
runs the two-clip loss on clips (k, k + 1) for k = 0 .. rho - 2 and sums them (one backward
each); 'all' the multi-positive loss above over all rho clips at once.

`positives_in_denominator=False` gives the variant of the reference's multi-crop masks
(pySlowFast `_simclr_precompute_pos_neg_mask_multi`): the softmax for (a, p) runs over p
and the clips of other videos only, leaving a's other positives out.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from cvrl.models.heads import l2_normalize
from cvrl.objectives import rho
from cvrl.objectives.base import defaults
from cvrl.objectives.views import apply_views

MASKED = -1e9  # finite, so rows with nothing left keep finite gradients



PAIRINGS = ("consecutive", "all")


def consecutive_pairs(loss_fn, x):
  """Sum over k of loss_fn(x[:, [k, k + 1]]) for x [B, V, ...]: the reference's sequential
  pairing of clips for SimCLR and SwAV. Returns (loss, metrics averaged over pairs)."""
  v = x.shape[1]
  results = [loss_fn(x[:, k:k + 2]) for k in range(v - 1)]
  loss = sum(r[0] for r in results)
  metrics = jax.tree.map(lambda *m: sum(m) / len(m), *[r[1] for r in results])
  return loss, metrics

def multi_positive_nt_xent(z, temperature: float, *, positives_in_denominator: bool = True):
  """z: [B, V, D] embeddings of V clips of B videos (normalised here). Returns (loss, metrics).

  Global-batch math: under jit with z sharded over the batch, the value is the loss of the
  concatenated global batch.
  """
  b, v, d = z.shape
  n = b * v
  z = l2_normalize(z.astype(jnp.float32)).reshape(n, d)
  logits = z @ z.T / temperature
  video = jnp.arange(n) // v
  same_video = video[:, None] == video[None, :]
  is_self = jnp.eye(n, dtype=bool)
  positive = same_video & ~is_self
  if positives_in_denominator:
    lse = jax.nn.logsumexp(jnp.where(is_self, MASKED, logits), axis=1)
    ce = lse[:, None] - logits
  else:
    neg_lse = jax.nn.logsumexp(jnp.where(same_video, MASKED, logits), axis=1)
    ce = jnp.logaddexp(logits, neg_lse[:, None]) - logits
  loss = jnp.sum(jnp.where(positive, ce, 0.0)) / (n * (v - 1))
  nearest = jnp.argmax(jnp.where(is_self, MASKED, logits), axis=1)
  accuracy = jnp.mean(positive[jnp.arange(n), nearest])
  return loss, {"contrastive_accuracy": accuracy}


class SimCLR(rho.RhoObjective):
  """temperature: NT-Xent's; positives_in_denominator, pairing: see the module docstring;
  the rho fields (clips, head) in rho.RhoObjective."""

  def __init__(self, encoder, run, *, temperature: float = 0.1,
               positives_in_denominator: bool = True, pairing: str = "consecutive",
               **rho_fields):
    super().__init__(encoder, run, **rho_fields)
    check_pairing(pairing)
    self.temperature, self.pairing = float(temperature), pairing
    self.positives_in_denominator = bool(positives_in_denominator)

  def build(self, rngs):
    return self.build_network(rngs)

  def loss(self, model, batch, *, step, rng):
    video = self.clips(batch)
    z = apply_views(model, lambda m, x: m.head(m.encoder(x)), video, per_view=self.bn_per_view)
    fn = lambda x: multi_positive_nt_xent(
        x, self.temperature, positives_in_denominator=self.positives_in_denominator)
    if self.pairing == "consecutive":
      return consecutive_pairs(fn, z)
    return fn(z)


def check_pairing(pairing: str) -> None:
  if pairing not in PAIRINGS:
    raise ValueError(f"config.objective.pairing must be one of {list(PAIRINGS)}, got "
                     f"{pairing!r}")


def objective_config() -> dict:
  """config.objective fields for rho-SimCLR (Feichtenhofer et al., CVPR 2021)."""
  return defaults(SimCLR, "simclr")


make = SimCLR  # the method's entry point (cvrl.core.discovery)
