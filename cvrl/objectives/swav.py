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

from cvrl import config_lib
from cvrl.models.heads import l2_normalize
from cvrl.objectives import rho
from cvrl.objectives.base import defaults
from cvrl.objectives.simclr import check_pairing, consecutive_pairs
from cvrl.objectives.sinkhorn import sinkhorn
from cvrl.objectives.views import apply_views



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
  """temperature: the swapped prediction's; num_prototypes; Sinkhorn's epsilon and
  iterations; num_assign: the clips whose codes are predicted; the prototypes frozen for
  the first freeze_prototypes_{steps,epochs}; pairing: see the module docstring; the rho
  fields (clips, head) in rho.RhoObjective."""

  def __init__(self, encoder, run, *, temperature: float = 0.1, head_bn: bool = True,
               num_prototypes: int = 1000, sinkhorn_epsilon: float = 0.05,
               sinkhorn_iterations: int = 3, num_assign: int = 2,
               freeze_prototypes_epochs: int | None = 1,
               freeze_prototypes_steps: int | None = None, pairing: str = "consecutive",
               **rho_fields):
    super().__init__(encoder, run, head_bn=head_bn, **rho_fields)
    check_pairing(pairing)
    if not 1 <= int(num_assign) <= self.num_clips:
      raise ValueError(f"config.objective.num_assign must be in [1, num_clips], got "
                       f"{num_assign}")
    self.temperature, self.pairing = float(temperature), pairing
    self.num_prototypes = int(num_prototypes)
    self.sinkhorn = dict(epsilon=float(sinkhorn_epsilon), iterations=int(sinkhorn_iterations))
    self.num_assign = int(num_assign)
    self.freeze_prototypes_steps = config_lib.steps(
        "freeze_prototypes", dict(freeze_prototypes_epochs=freeze_prototypes_epochs,
                                  freeze_prototypes_steps=freeze_prototypes_steps),
        num_examples=run.num_train_examples, batch_size=run.batch_size, default=0)

  def build(self, rngs):
    online = self.build_network(rngs)
    return SwAVModel(online, Prototypes(self.head_out, self.num_prototypes, rngs=rngs))

  def loss(self, model, batch, *, step, rng):
    video = self.clips(batch)
    z = apply_views(model, lambda m, x: l2_normalize(m.head(m.encoder(x))), video,
                    per_view=self.bn_per_view)
    w = model.prototypes.kernel[...]
    w = jnp.where(jnp.asarray(step) < self.freeze_prototypes_steps, jax.lax.stop_gradient(w), w)
    scores = jnp.einsum("bvd,kd->bvk", z, w)
    fn = lambda s, n: swav_loss(s, self.temperature, num_assign=n, **self.sinkhorn)
    if self.pairing == "consecutive":
      return consecutive_pairs(lambda s: fn(s, 2), scores)
    return fn(scores, self.num_assign)

  def after_update(self, model, *, step):
    model.prototypes.normalize()


def objective_config() -> dict:
  """config.objective fields for rho-SwAV (Feichtenhofer et al., CVPR 2021)."""
  return defaults(SwAV, "swav")


make = SwAV  # the method's entry point (cvrl.core.discovery)
