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

from cvrl import config_lib
from cvrl.models.heads import MLP, l2_normalize
from cvrl.objectives import momentum as momentum_lib
from cvrl.objectives import rho
from cvrl.objectives.views import apply_views



def objective_config() -> dict:
  """config.objective fields for rho-BYOL (Feichtenhofer et al., CVPR 2021)."""
  return dict(name="byol", num_clips=2, head_hidden=4096, head_layers=1, head_out=256,
              head_bn=True, predictor_hidden=4096, bn_per_view=True, momentum=0.996,
              momentum_schedule="cosine", reduction="sum")

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

  @property
  def trainable(self):
    return rho.ONLINE_PARAMS

  def validate(self) -> None:
    """Config errors as one-line ValueErrors, raised when the objective is made."""
    cfg = self.config.objective
    rho.num_clips(self.config)
    if cfg.reduction not in ("mean", "sum"):
      raise ValueError(f"config.objective.reduction must be 'mean' or 'sum', got {cfg.reduction!r}")
    momentum_lib.momentum_at(0, base=float(cfg.momentum), total_steps=1,
                             schedule=cfg.momentum_schedule)

  def build(self, rngs):
    cfg = self.config.objective
    online = rho.build_network(self.config, rngs)
    predictor = MLP(int(cfg.head_out), int(cfg.predictor_hidden), int(cfg.head_out), num_hidden=1,
                    bn=True, bn_momentum=self.config.model.bn_momentum,
                    bn_eps=self.config.model.bn_eps, rngs=rngs)
    return BYOLModel(online, predictor)

  def momentum(self, step):
    cfg = self.config.objective
    return momentum_lib.momentum_at(step, base=float(cfg.momentum),
                                    total_steps=config_lib.steps("total", self.config),
                                    schedule=cfg.momentum_schedule)

  def loss(self, model, batch, *, step, rng):
    cfg = self.config.objective
    video = rho.clips_of(batch, rho.num_clips(self.config))
    per_view = bool(cfg.bn_per_view)
    p = apply_views(model, lambda m, x: m.predictor(m.head(m.encoder(x))), video,
                    per_view=per_view)
    z = apply_views(model, lambda m, x: m.target.project(x), video, per_view=per_view)
    return byol_loss(p, jax.lax.stop_gradient(z), reduction=cfg.reduction)

  def after_update(self, model, *, step):
    # The target used at step t + 1 averages in the parameters after update t, with the
    # reference's momentum for iteration t + 1.
    m = self.momentum(jnp.asarray(step) + 1)
    momentum_lib.ema_update([(model.target.encoder, model.encoder),
                             (model.target.head, model.head)], m)


make = BYOL  # the method's entry point (cvrl.core.discovery)
