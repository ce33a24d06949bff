"""rho-MoCo (Feichtenhofer et al., 2021): queries against a momentum key encoder and a queue.

- Key encoder (encoder + projection head under `model.target`): an EMA of the online
  network with momentum m_t = 1 - (1 - m0)(cos(pi t / T) + 1) / 2, m0 = 0.994; no
  gradient reaches it (excluded from `trainable`, and its keys are stop-gradient'ed).
- Every clip is a query in turn; each other clip's key of the same video is its positive,
  the queue's keys its negatives: for query clip i and key clip j != i of video b,
  CE over [q_bi . k_bj, q_bi . queue] / T with the positive first. `reduction='mean'`
  averages over all (b, i, j); 'sum' sums over query clips i the mean over (b, j), which
  is the gradient of the reference's sequential mode (one backward per query clip).
- The queue: as the reference (pySlowFast's ContrastiveModel) by default, one queue of
  `queue_size` keys per device (`queue='per_device'`): each device scores its own queries
  against its own queue and enqueues its own keys (all rho clips, clip-major, as the
  reference's multi-view queue; or only the first clip's), no gather. `queue='global'`:
  one queue shared by all devices, fed with the keys of the global batch. `model.queue`
  is [G, queue_size, D], G = devices (1 for 'global'), replicated: G x the memory of one.
- No update while the queue fills: the reference skips the optimizer step for its first
  queue_size / batch_size iterations (its queue starts as random vectors). Here the queue
  starts empty, the loss masks unfilled slots (well defined from step 0) and
  `apply_update` skips those same steps whole: no gradient, no weight decay, no momentum
  (the loss is also multiplied by 0 there). `update_before_queue_full=True` trains at once.
- Shuffle-BN (`shuffle_bn`): the key clips go through the key encoder in a random order
  of the global batch and are put back after, so with per-device BatchNorm
  (parallel.batch_norm='local') a key's BN statistics come from other videos' clips, as
  the reference's shuffle. With synchronised BN (the default) it changes nothing, which
  is why the reference turns it off there.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from cvrl.models.heads import l2_normalize
from cvrl.objectives import momentum as momentum_lib
from cvrl.objectives import rho
from cvrl.objectives.base import defaults
from cvrl.objectives.views import apply_views

MASKED = -1e9



QUEUES = ("per_device", "global")

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


def moco_loss_grouped(q, k, queues, num_valid, temperature: float, *, reduction: str = "mean"):
  """Per-device queues: queues [G, K, D]; the B videos split into G contiguous groups (the
  batch's device shards), group g's queries scored against queues[g] only. The mean over
  groups of `moco_loss` on each, which is the loss over the whole batch."""
  g = queues.shape[0]
  if q.shape[0] % g:
    raise ValueError(f"MoCo per-device queues: batch {q.shape[0]} must split evenly over {g} "
                     f"devices")
  split = lambda x: x.reshape(g, x.shape[0] // g, *x.shape[1:])
  losses, metrics = jax.vmap(
      lambda a, b, c: moco_loss(a, b, c, num_valid, temperature, reduction=reduction))(
          split(q), split(k), queues)
  return jnp.mean(losses), jax.tree.map(jnp.mean, metrics)


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

  def __init__(self, online: rho.Network, queue_size: int, dim: int, groups: int = 1):
    self.encoder = online.encoder
    self.head = online.head
    self.target = nnx.clone(online)
    self.queue = rho.Buffer(jnp.zeros((groups, queue_size, dim), jnp.float32))
    self.queue_ptr = rho.Buffer(jnp.zeros((), jnp.int32))
    self.queue_filled = rho.Buffer(jnp.zeros((), jnp.int32))


class MoCo(rho.RhoObjective):
  """temperature: the InfoNCE's; the key network's momentum and its schedule ('cosine' /
  'constant'); the queue: queue_size keys, 'per_device' (queue_devices of them: None, every
  device) or 'global', fed with 'all' clips' keys or the 'first'; shuffle_bn,
  update_before_queue_full, reduction: see the module docstring; the rho fields (clips,
  head) in rho.RhoObjective."""

  def __init__(self, encoder, run, *, temperature: float = 0.1, momentum: float = 0.994,
               momentum_schedule: str = "cosine", queue_size: int = 65_536,
               enqueue: str = "all", queue: str = "per_device", queue_devices: int | None = None,
               shuffle_bn: bool = False, update_before_queue_full: bool = False,
               reduction: str = "sum", **rho_fields):
    super().__init__(encoder, run, **rho_fields)
    self.temperature, self.queue_size, self.enqueue = float(temperature), int(queue_size), enqueue
    self.queue_kind, self.queue_devices, self.shuffle_bn = queue, queue_devices, bool(shuffle_bn)
    self.update_before_queue_full, self.reduction = bool(update_before_queue_full), reduction
    self.momentum_at = momentum_lib.schedule(momentum, momentum_schedule, run.total_steps)
    self.validate()

  def validate(self) -> None:
    """Field errors as one-line ValueErrors, raised when the objective is made."""
    # Keys a queue receives per step: the global batch's, or one device's when their number
    # is set (unknown here otherwise: the backend may not be up yet, so the global batch).
    groups = int(self.queue_devices or 1) if self.queue_kind == "per_device" else 1
    per_step = self.run.batch_size // groups * (self.num_clips if self.enqueue == "all" else 1)
    if self.enqueue not in ("all", "first"):
      raise ValueError(f"config.objective.enqueue must be 'all' or 'first', got {self.enqueue!r}")
    if self.queue_size % per_step:
      raise ValueError(f"config.objective.queue_size ({self.queue_size}) must be a multiple of "
                       f"the keys enqueued per step ({per_step})")
    if self.reduction not in ("mean", "sum"):
      raise ValueError(f"config.objective.reduction must be 'mean' or 'sum', got "
                       f"{self.reduction!r}")
    if self.queue_kind not in QUEUES:
      raise ValueError(f"config.objective.queue must be one of {list(QUEUES)}, got "
                       f"{self.queue_kind!r}")

  @property
  def trainable(self):
    return rho.ONLINE_PARAMS

  def queue_groups(self) -> int:
    """Queues kept: one per device ('per_device', `queue_devices` or every device) or 1."""
    if self.queue_kind != "per_device":
      return 1
    return int(self.queue_devices) if self.queue_devices else jax.device_count()

  def no_update_steps(self) -> int:
    """The reference's iters_noupdate: queue_size / batch_size steps without an update."""
    if self.update_before_queue_full:
      return 0
    return self.queue_size // self.run.batch_size

  def build(self, rngs):
    online = self.build_network(rngs)
    groups = self.queue_groups()
    if self.run.batch_size % groups:
      raise ValueError(f"config.objective.queue='per_device': batch_size {self.run.batch_size} "
                       f"must split evenly over {groups} devices")
    return MoCoModel(online, self.queue_size, self.head_out, groups)

  def apply_update(self, model, *, step):
    return jnp.asarray(step) >= self.no_update_steps()

  def loss(self, model, batch, *, step, rng):
    video = self.clips(batch)
    per_view = self.bn_per_view
    q = apply_views(model, lambda m, x: m.head(m.encoder(x)), video, per_view=per_view)
    if self.shuffle_bn:
      order = jax.random.permutation(jax.random.fold_in(rng, 1), video.shape[0])
      k = apply_views(model, lambda m, x: m.target.project(x), video[order], per_view=per_view)
      k = k[jnp.argsort(order)]
    else:
      k = apply_views(model, lambda m, x: m.target.project(x), video, per_view=per_view)
    k = jax.lax.stop_gradient(l2_normalize(k))
    queues = model.queue[...]
    groups, size = queues.shape[0], queues.shape[1]
    filled = model.queue_filled[...]
    loss, metrics = moco_loss_grouped(q, k, queues, filled, self.temperature,
                                      reduction=self.reduction)
    keys = jnp.swapaxes(k, 0, 1) if self.enqueue == "all" else k[None, :, 0]  # [V, B, D]
    # Each group (device) writes its own videos' keys, clip-major, at the shared pointer.
    keys = keys.reshape(keys.shape[0], groups, -1, keys.shape[-1])
    keys = jnp.swapaxes(keys, 0, 1).reshape(groups, -1, keys.shape[-1])  # [G, n, D]
    ptr = model.queue_ptr[...]
    new = jax.vmap(lambda qu, ke: enqueue(qu, ptr, filled, ke))(queues, keys)
    model.queue[...] = new[0]
    model.queue_ptr[...] = new[1][0]
    model.queue_filled[...] = new[2][0]
    metrics["infonce"] = loss
    metrics["queue_fill"] = filled.astype(jnp.float32) / size
    if not self.update_before_queue_full:
      loss = loss * self.apply_update(model, step=step).astype(loss.dtype)
    return loss, metrics

  def after_update(self, model, *, step):
    # The key network used at step t + 1 averages in the parameters after update t, with
    # the reference's momentum for iteration t + 1.
    m = self.momentum_at(jnp.asarray(step) + 1)
    momentum_lib.ema_update([(model.target.encoder, model.encoder),
                             (model.target.head, model.head)], m)


def objective_config() -> dict:
  """config.objective fields for rho-MoCo (Feichtenhofer et al., CVPR 2021)."""
  return defaults(MoCo, "moco")


make = MoCo  # the method's entry point (cvrl.core.discovery)
