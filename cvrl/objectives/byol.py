"""rho-BYOL (Feichtenhofer et al., 2021): predict the target's projection of the other clips.

Online: encoder -> projector (2 layers, 4096 hidden, 256 out, BN) -> predictor
(256 -> 4096 -> BN -> ReLU -> 256). Target (`model.target`): an EMA of the online encoder
and projector, momentum 0.996 cosine-annealed to 1; it gets no gradient (excluded from
`trainable`, and its outputs are stop-gradient'ed).

Loss: 2 - 2 cos(p_i, z_j) between the online prediction of clip i and the target
projection of every other clip j of the same video. `reduction='sum'` (the default, as the
reference's sequential mode: one backward per query clip, each the mean over the other
clips' keys and the videos) sums over query clips i the mean over (j, videos); 'mean'
averages over all ordered pairs (i, j), i != j, and videos.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from cvrl.models.heads import MLP, l2_normalize
from cvrl.objectives import momentum as momentum_lib
from cvrl.objectives import rho
from cvrl.objectives.base import defaults
from cvrl.objectives.views import apply_views



def byol_loss(p, z, *, reduction: str = "mean"):
  """p: [B, V, D] online predictions, z: [B, V, D] target projections (both normalised
  here). Returns (loss, metrics)."""
  if reduction not in ("mean", "sum"):
    raise ValueError(f"BYOL reduction must be 'mean' or 'sum', got {reduction!r}")
  b, v, _ = p.shape
  p = l2_normalize(p.astype(jnp.float32))
  z = l2_normalize(z.astype(jnp.float32))
  cos = jnp.einsum("bid,bjd->bij", p, z)
  pairs = ~jnp.eye(v, dtype=bool)
  per_query = jnp.sum(jnp.where(pairs, 2.0 - 2.0 * cos, 0.0), axis=(0, 2)) / (b * (v - 1))
  loss = jnp.mean(per_query) if reduction == "mean" else jnp.sum(per_query)
  mean_cos = jnp.sum(jnp.where(pairs, cos, 0.0)) / (b * v * (v - 1))
  return loss, {"cosine_similarity": mean_cos}


class BYOLModel(nnx.Module):
  """Online encoder, projector and predictor; the target encoder and projector."""

  def __init__(self, online: rho.Network, predictor: MLP):
    self.encoder = online.encoder
    self.head = online.head
    self.predictor = predictor
    self.target = nnx.clone(online)


class BYOL(rho.RhoObjective):
  """The projector (head fields, rho.RhoObjective) and predictor_hidden; the target's
  momentum and its schedule ('cosine' / 'constant'); reduction: see the module docstring."""

  def __init__(self, encoder, run, *, head_hidden: int = 4096, head_layers: int = 1,
               head_out: int = 256, head_bn: bool = True, predictor_hidden: int = 4096,
               momentum: float = 0.996, momentum_schedule: str = "cosine",
               reduction: str = "sum", **rho_fields):
    super().__init__(encoder, run, head_hidden=head_hidden, head_layers=head_layers,
                     head_out=head_out, head_bn=head_bn, **rho_fields)
    if reduction not in ("mean", "sum"):
      raise ValueError(f"config.objective.reduction must be 'mean' or 'sum', got {reduction!r}")
    self.predictor_hidden, self.reduction = int(predictor_hidden), reduction
    self.momentum_at = momentum_lib.schedule(momentum, momentum_schedule, run.total_steps)

  @property
  def trainable(self):
    return rho.ONLINE_PARAMS

  def build(self, rngs):
    online = self.build_network(rngs)
    predictor = MLP(self.head_out, self.predictor_hidden, self.head_out, num_hidden=1,
                    bn=True, **self.encoder_spec.bn, rngs=rngs)
    return BYOLModel(online, predictor)

  def loss(self, model, batch, *, step, rng):
    video = self.clips(batch)
    per_view = self.bn_per_view
    p = apply_views(model, lambda m, x: m.predictor(m.head(m.encoder(x))), video,
                    per_view=per_view)
    z = apply_views(model, lambda m, x: m.target.project(x), video, per_view=per_view)
    return byol_loss(p, jax.lax.stop_gradient(z), reduction=self.reduction)

  def after_update(self, model, *, step):
    # The target used at step t + 1 averages in the parameters after update t, with the
    # reference's momentum for iteration t + 1.
    m = self.momentum_at(jnp.asarray(step) + 1)
    momentum_lib.ema_update([(model.target.encoder, model.encoder),
                             (model.target.head, model.head)], m)


def objective_config() -> dict:
  """config.objective fields for rho-BYOL (Feichtenhofer et al., CVPR 2021)."""
  return defaults(BYOL, "byol")


make = BYOL  # the method's entry point (cvrl.core.discovery)
