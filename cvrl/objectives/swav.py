"""rho-SwAV (Feichtenhofer et al., 2021): swapped prediction of Sinkhorn codes between clips.

Each clip's normalised projection z (3-layer MLP with BN, 2048 hidden, 128 out) is scored
against K = 1000 unit-norm prototypes (scores = z . c_k). For each of the first
`num_assign` clips i (the reference's crops_for_assign, clips 0 and 1), the codes q_i are
Sinkhorn-Knopp over the global batch (eps 0.05, 3 iterations, no gradient); every other
clip j predicts them: -sum_k q_ik log softmax(scores_j / T)_k, T = 0.1, averaged over the
batch. Loss = mean over assigned clips i of the mean over j != i.

`pairing` (rho > 2): 'consecutive' (the default) as the reference's sequential mode: the
two-clip loss on clips (k, k + 1), k = 0 .. rho - 2, summed; 'all' the loss above over all
rho clips at once (`num_assign` clips assigned).

Prototypes are re-normalised after every optimizer step (and at initialisation), which
is what the reference's normalisation at the start of each forward amounts to. For the
first `freeze_prototypes_{steps,epochs}` they get no gradient (the reference cancels
their gradients during epoch 1).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from ml_collections import config_dict

from cvrl import config_lib
from cvrl.models.heads import l2_normalize
from cvrl.objectives import rho
from cvrl.objectives.simclr import PAIRINGS, consecutive_pairs
from cvrl.objectives.sinkhorn import sinkhorn
from cvrl.objectives.views import apply_views



def objective_config() -> dict:
  """config.objective fields for rho-SwAV (Feichtenhofer et al., CVPR 2021)."""
  return dict(name="swav", temperature=0.1, num_clips=2, head_hidden=2048, head_layers=2,
              head_out=128, head_bn=True, bn_per_view=True, num_prototypes=1000,
              sinkhorn_epsilon=0.05, sinkhorn_iterations=3, num_assign=2,
              freeze_prototypes_epochs=config_dict.FieldReference(1, field_type=int),
              freeze_prototypes_steps=config_dict.placeholder(int), pairing="consecutive")

def swav_loss(scores, temperature: float, *, epsilon: float = 0.05, iterations: int = 3,
              num_assign: int = 2):
  """scores: [B, V, K] clip-to-prototype similarities. Returns (loss, metrics)."""
  _, v, _ = scores.shape
  if not 1 <= num_assign <= v or v < 2:
    raise ValueError(f"SwAV needs >= 2 clips and 1 <= num_assign <= clips, got {v} clips, "
                     f"num_assign={num_assign}")
  scores = scores.astype(jnp.float32)
  log_p = jax.nn.log_softmax(scores / temperature, axis=-1)
  total = 0.0
  for i in range(num_assign):
    q = sinkhorn(scores[:, i], epsilon=epsilon, iterations=iterations)
    sub = 0.0
    for j in range(v):
      if j != i:
        sub = sub - jnp.mean(jnp.sum(q * log_p[:, j], axis=-1))
    total = total + sub / (v - 1)
  loss = total / num_assign
  codes = sinkhorn(scores[:, 0], epsilon=epsilon, iterations=iterations)
  # How many prototypes the first clip's codes use (equipartition keeps this high).
  used = jnp.mean(jnp.any(jnp.argmax(codes, axis=1)[:, None] == jnp.arange(scores.shape[-1]),
                          axis=0).astype(jnp.float32))
  return loss, {"prototypes_used": used}


class Prototypes(nnx.Module):
  """K unit-norm prototype vectors, the rows of `kernel` [K, D].

  Named `kernel` as any dense kernel, so the optimizer treats the prototypes as the
  reference's LARS does (a 2-D weight: weight decay and the trust ratio apply).
  """

  def __init__(self, dim: int, num: int, *, rngs: nnx.Rngs):
    bound = 1.0 / dim ** 0.5  # as torch.nn.Linear's default, then normalised
    w = jax.random.uniform(rngs.params(), (num, dim), jnp.float32, -bound, bound)
    self.kernel = nnx.Param(l2_normalize(w))

  def normalize(self):
    self.kernel[...] = l2_normalize(self.kernel[...])


class SwAVModel(nnx.Module):

  def __init__(self, online: rho.Network, prototypes: Prototypes):
    self.encoder = online.encoder
    self.head = online.head
    self.prototypes = prototypes


class SwAV(rho.RhoObjective):

  def validate(self) -> None:
    """Config errors as one-line ValueErrors, raised when the objective is made."""
    cfg = self.config.objective
    if cfg.get("pairing", "all") not in PAIRINGS:
      raise ValueError(f"config.objective.pairing must be one of {list(PAIRINGS)}, got "
                       f"{cfg.pairing!r}")
    if not 1 <= int(cfg.num_assign) <= rho.num_clips(self.config):
      raise ValueError(f"config.objective.num_assign must be in [1, num_clips], got "
                       f"{cfg.num_assign}")
    self.freeze_prototypes_steps()

  def build(self, rngs):
    cfg = self.config.objective
    online = rho.build_network(self.config, rngs)
    return SwAVModel(online, Prototypes(int(cfg.head_out), int(cfg.num_prototypes), rngs=rngs))

  def freeze_prototypes_steps(self) -> int:
    data = self.config.get("data", {})
    return config_lib.steps("freeze_prototypes", self.config.objective,
                            num_examples=data.get("num_train_examples"),
                            batch_size=self.config.get("batch_size"), default=0)

  def loss(self, model, batch, *, step, rng):
    cfg = self.config.objective
    video = rho.clips_of(batch, rho.num_clips(self.config))
    z = apply_views(model, lambda m, x: l2_normalize(m.head(m.encoder(x))), video,
                    per_view=bool(cfg.bn_per_view))
    w = model.prototypes.kernel[...]
    w = jnp.where(jnp.asarray(step) < self.freeze_prototypes_steps(), jax.lax.stop_gradient(w), w)
    scores = jnp.einsum("bvd,kd->bvk", z, w)
    fn = lambda s, n: swav_loss(s, float(cfg.temperature), epsilon=float(cfg.sinkhorn_epsilon),
                                iterations=int(cfg.sinkhorn_iterations), num_assign=n)
    if cfg.get("pairing", "all") == "consecutive":
      return consecutive_pairs(lambda s: fn(s, 2), scores)
    return fn(scores, int(cfg.num_assign))

  def after_update(self, model, *, step):
    model.prototypes.normalize()


make = SwAV  # the method's entry point (cvrl.core.discovery)
