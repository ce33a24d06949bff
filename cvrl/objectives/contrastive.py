"""The CVRL / SimCLR InfoNCE over the global batch, in two implementations.

- `info_nce_pair` is global-batch math: under jit with a batch-sharded input XLA gathers
  what it needs, and the value is that of the concatenated global batch (per-device
  memory for the logits grows with the global batch squared).
- `info_nce_pair_sharded` is the explicit per-device program (`jax.shard_map`): each
  device all-gathers the embeddings (N x D), scores only its own anchors against them
  (local b x global N logits), and the losses are summed with psum. Autodiff turns the
  all_gather into a reduce-scatter, so gradients equal those of the global version.

Both: embeddings L2-normalised in float32; each anchor has one positive (the other view
of its video) and 2N - 2 negatives (every other clip of the global batch, both views);
self-similarity masked with -1e9; loss = mean CE over view a + mean CE over view b.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from cvrl.models.heads import l2_normalize

LARGE_NUM = 1e9
DATA_AXIS = "data"  # cvrl.core.parallel.DATA_AXIS (not imported: objectives stay mesh-agnostic)


def _row_stats(logits, labels):
  """Per-row cross-entropy, top-1 hit and softmax entropy."""
  logp = jax.nn.log_softmax(logits)
  ce = -jnp.take_along_axis(logp, labels[:, None], axis=1)[:, 0]
  hit = (jnp.argmax(logits, axis=1) == labels).astype(jnp.float32)
  probs = jnp.exp(logp)
  entropy = -jnp.sum(jnp.where(probs > 0, probs * logp, 0.0), axis=1)
  return ce, hit, entropy


def _pair_logits(a, b, keys_a, keys_b, labels, temperature):
  """Logits of anchors `a` (view a) and `b` (view b) against all keys: [ab | aa], [ba | bb]."""
  mask = jax.nn.one_hot(labels, keys_a.shape[0], dtype=a.dtype) * LARGE_NUM
  ab = a @ keys_b.T / temperature
  aa = a @ keys_a.T / temperature - mask
  ba = b @ keys_a.T / temperature
  bb = b @ keys_b.T / temperature - mask
  return jnp.concatenate([ab, aa], axis=1), jnp.concatenate([ba, bb], axis=1)


def info_nce_pair(z_a, z_b, temperature: float):
  """InfoNCE for two views of N videos as global-batch math. Returns (loss, metrics)."""
  z_a = l2_normalize(z_a.astype(jnp.float32))
  z_b = l2_normalize(z_b.astype(jnp.float32))
  labels = jnp.arange(z_a.shape[0])
  logits_a, logits_b = _pair_logits(z_a, z_b, z_a, z_b, labels, temperature)
  ce_a, hit_a, ent_a = _row_stats(logits_a, labels)
  ce_b, hit_b, ent_b = _row_stats(logits_b, labels)
  loss = jnp.mean(ce_a) + jnp.mean(ce_b)
  return loss, {"contrastive_accuracy": (jnp.mean(hit_a) + jnp.mean(hit_b)) / 2,
                "contrastive_entropy": (jnp.mean(ent_a) + jnp.mean(ent_b)) / 2}


def info_nce_pair_sharded(z_a, z_b, temperature: float, *, axis_name: str = DATA_AXIS):
  """`info_nce_pair` as an explicit all_gather program over `axis_name` of the mesh set
  with `jax.set_mesh` (the trainer sets it for its run).

  Per-device memory for the logits: local batch x global batch. The global batch must
  split evenly over the axis.
  """

  def per_device(za, zb):
    za = l2_normalize(za.astype(jnp.float32))
    zb = l2_normalize(zb.astype(jnp.float32))
    keys_a = jax.lax.all_gather(za, axis_name, tiled=True)
    keys_b = jax.lax.all_gather(zb, axis_name, tiled=True)
    n, local = keys_a.shape[0], za.shape[0]
    labels = jax.lax.axis_index(axis_name) * local + jnp.arange(local)
    logits_a, logits_b = _pair_logits(za, zb, keys_a, keys_b, labels, temperature)
    ce_a, hit_a, ent_a = _row_stats(logits_a, labels)
    ce_b, hit_b, ent_b = _row_stats(logits_b, labels)
    sums = jax.lax.psum(jnp.stack([jnp.sum(ce_a) + jnp.sum(ce_b), jnp.sum(hit_a) + jnp.sum(hit_b),
                                   jnp.sum(ent_a) + jnp.sum(ent_b)]), axis_name)
    return sums[0] / n, sums[1] / (2 * n), sums[2] / (2 * n)

  if jax.sharding.get_abstract_mesh().empty:
    raise ValueError("info_nce_pair_sharded needs a mesh: call it under jax.set_mesh(mesh) "
                     "(the trainer does)")
  spec = P(axis_name)
  loss, accuracy, entropy = jax.shard_map(
      per_device, in_specs=(spec, spec), out_specs=(P(), P(), P()))(z_a, z_b)
  return loss, {"contrastive_accuracy": accuracy, "contrastive_entropy": entropy}


IMPLS = {"global": info_nce_pair, "shard_map": info_nce_pair_sharded}
