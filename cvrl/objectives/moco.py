"""rho-MoCo (Feichtenhofer et al., 2021): queries against a momentum key encoder and a queue.

- Key encoder (encoder + projection head under `model.target`): an EMA of the online
  network with momentum m_t = 1 - (1 - m0)(cos(pi t / T) + 1) / 2, m0 = 0.994; no
  gradient reaches it (excluded from `trainable`, and its keys are stop-gradient'ed).
- Every clip is a query in turn; each other clip's key of the same video is its positive,
  the queue's keys its negatives: for query clip i and key clip j != i of video b,
  CE over [q_bi . k_bj, q_bi . queue] / T with the positive first. `reduction='mean'`
  averages over all (b, i, j); 'sum' sums over query clips i the mean over (b, j), which
  is the gradient of the reference's sequential mode (one backward per query clip).
- The queue (`queue_size` keys, 65,536 by default) is a replicated global array in
  `model.queue`; after the loss it receives the keys of the global batch (all rho clips,
  clip-major as the reference's multi-view queue, or only the first clip's), written at
  `queue_ptr`, oldest first out.
- "No update until the queue is full": the reference skips the optimizer for the first
  queue_size / batch steps while its (randomly initialised) queue fills. Here the queue
  starts empty and the loss masks unfilled slots, so its value is well defined from step 0;
  while the queue is not yet full the returned loss is multiplied by 0 (no gradient reaches
  any parameter) unless `update_before_queue_full`. The trainer still applies weight decay
  on those steps; `infonce` in the metrics is the unmasked value.
- No shuffle-BN: under jit BatchNorm statistics are global (synchronised), the setting in
  which the reference turns shuffling off.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from cvrl import config_lib
from cvrl.models.heads import l2_normalize
from cvrl.objectives import momentum as momentum_lib
from cvrl.objectives import rho
from cvrl.objectives.base import register
from cvrl.objectives.views import apply_views

MASKED = -1e9



def objective_config() -> dict:
  """config.objective fields for rho-MoCo (methods.md section 2)."""
  return dict(name="moco", temperature=0.1, num_clips=2, head_hidden=2048, head_layers=2,
              head_out=128, head_bn=False, bn_per_view=True, momentum=0.994,
              momentum_schedule="cosine", queue_size=65_536, enqueue="all",
              update_before_queue_full=False, reduction="mean")

def moco_loss(q, k, queue, num_valid, temperature: float, *, reduction: str = "mean"):
  """q, k: [B, V, D] queries and keys (normalised here); queue [K, D] of normalised keys,
  of which slots [0, num_valid) are filled. Returns (loss, metrics)."""
  if reduction not in ("mean", "sum"):
    raise ValueError(f"MoCo reduction must be 'mean' or 'sum', got {reduction!r}")
  b, v, _ = q.shape
  q = l2_normalize(q.astype(jnp.float32))
  k = l2_normalize(k.astype(jnp.float32))
  pos = jnp.einsum("bid,bjd->bij", q, k) / temperature  # query clip i, key clip j
  neg = jnp.einsum("bid,kd->bik", q, queue.astype(jnp.float32)) / temperature
  valid = jnp.arange(queue.shape[0]) < num_valid
  neg = jnp.where(valid, neg, MASKED)
  neg_lse = jax.nn.logsumexp(neg, axis=-1)  # [B, V]
  ce = jnp.logaddexp(pos, neg_lse[..., None]) - pos
  pairs = ~jnp.eye(v, dtype=bool)  # j != i
  per_query = jnp.sum(jnp.where(pairs, ce, 0.0), axis=(0, 2)) / (b * (v - 1))
  loss = jnp.mean(per_query) if reduction == "mean" else jnp.sum(per_query)
  hardest_neg = jnp.max(neg, axis=-1)
  accuracy = jnp.sum(jnp.where(pairs, pos > hardest_neg[..., None], False)) / (b * v * (v - 1))
  return loss, {"contrastive_accuracy": accuracy}


def enqueue(queue, ptr, filled, keys):
  """Writes keys [n, D] at ptr (n must divide K). Returns (queue, ptr, filled)."""
  size, n = queue.shape[0], keys.shape[0]
  if size % n:
    raise ValueError(f"MoCo queue size {size} must be a multiple of the keys enqueued per "
                     f"step ({n})")
  queue = jax.lax.dynamic_update_slice(queue, keys.astype(queue.dtype), (ptr, 0))
  return queue, (ptr + n) % size, jnp.minimum(filled + n, size)


class MoCoModel(nnx.Module):
  """Online encoder + head, the key network `target`, and the key queue."""

  def __init__(self, online: rho.Network, queue_size: int, dim: int):
    self.encoder = online.encoder
    self.head = online.head
    self.target = nnx.clone(online)
    self.queue = rho.Buffer(jnp.zeros((queue_size, dim), jnp.float32))
    self.queue_ptr = rho.Buffer(jnp.zeros((), jnp.int32))
    self.queue_filled = rho.Buffer(jnp.zeros((), jnp.int32))


@register("moco")
class MoCo(rho.RhoObjective):

  @property
  def trainable(self):
    return rho.ONLINE_PARAMS

  def validate(self) -> None:
    """Config errors as one-line ValueErrors, raised when the objective is made."""
    cfg = self.config.objective
    per_step = int(self.config.batch_size) * (rho.num_clips(self.config)
                                              if cfg.enqueue == "all" else 1)
    if cfg.enqueue not in ("all", "first"):
      raise ValueError(f"config.objective.enqueue must be 'all' or 'first', got {cfg.enqueue!r}")
    if int(cfg.queue_size) % per_step:
      raise ValueError(f"config.objective.queue_size ({cfg.queue_size}) must be a multiple of "
                       f"the keys enqueued per step ({per_step})")
    if cfg.reduction not in ("mean", "sum"):
      raise ValueError(f"config.objective.reduction must be 'mean' or 'sum', got {cfg.reduction!r}")
    momentum_lib.momentum_at(0, base=float(cfg.momentum), total_steps=1,
                             schedule=cfg.momentum_schedule)

  def build(self, rngs):
    cfg = self.config.objective
    online = rho.build_network(self.config, rngs)
    return MoCoModel(online, int(cfg.queue_size), int(cfg.head_out))

  def momentum(self, step):
    cfg = self.config.objective
    return momentum_lib.momentum_at(step, base=float(cfg.momentum),
                                    total_steps=config_lib.steps("total", self.config),
                                    schedule=cfg.momentum_schedule)

  def loss(self, model, batch, *, step, rng):
    cfg = self.config.objective
    video = rho.clips_of(batch, rho.num_clips(self.config))
    per_view = bool(cfg.bn_per_view)
    q = apply_views(model, lambda m, x: m.head(m.encoder(x)), video, per_view=per_view)
    k = apply_views(model, lambda m, x: m.target.project(x), video, per_view=per_view)
    k = jax.lax.stop_gradient(k)
    size = int(cfg.queue_size)
    filled = model.queue_filled[...]
    loss, metrics = moco_loss(q, k, model.queue[...], filled, float(cfg.temperature),
                              reduction=cfg.reduction)
    if cfg.enqueue == "all":
      keys = jnp.swapaxes(k, 0, 1).reshape(-1, k.shape[-1])
    elif cfg.enqueue == "first":
      keys = k[:, 0]
    else:
      raise ValueError(f"config.objective.enqueue must be 'all' or 'first', got {cfg.enqueue!r}")
    queue, ptr, new_filled = enqueue(model.queue[...], model.queue_ptr[...], filled, keys)
    model.queue[...] = queue
    model.queue_ptr[...] = ptr
    model.queue_filled[...] = new_filled
    metrics["infonce"] = loss
    metrics["queue_fill"] = filled.astype(jnp.float32) / size
    if not cfg.update_before_queue_full:
      loss = loss * (filled >= size).astype(loss.dtype)
    return loss, metrics

  def after_update(self, model, *, step):
    # The key network used at step t + 1 averages in the parameters after update t, with
    # the reference's momentum for iteration t + 1.
    m = self.momentum(jnp.asarray(step) + 1)
    momentum_lib.ema_update([(model.target.encoder, model.encoder),
                             (model.target.head, model.head)], m)
