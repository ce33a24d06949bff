"""Contrastive losses as global-batch math: under jit with a batch-sharded input, XLA
gathers what it needs, so the value is that of the concatenated global batch."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from cvrl.models.heads import l2_normalize

LARGE_NUM = 1e9


def info_nce_pair(z_a, z_b, temperature: float):
  """CVRL / SimCLR InfoNCE for two views of N videos.

  Each anchor has one positive (the other view of its video) and 2N - 2 negatives (every
  other clip of the batch, both views); self-similarity is masked with -1e9. Returns
  (loss = mean CE over view a + mean CE over view b, metrics).
  """
  z_a = l2_normalize(z_a.astype(jnp.float32))
  z_b = l2_normalize(z_b.astype(jnp.float32))
  n = z_a.shape[0]
  mask = jnp.eye(n) * LARGE_NUM
  aa = z_a @ z_a.T / temperature - mask
  bb = z_b @ z_b.T / temperature - mask
  ab = z_a @ z_b.T / temperature
  ba = z_b @ z_a.T / temperature
  logits_a = jnp.concatenate([ab, aa], axis=1)
  logits_b = jnp.concatenate([ba, bb], axis=1)
  labels = jnp.arange(n)
  logp_a = jax.nn.log_softmax(logits_a)
  logp_b = jax.nn.log_softmax(logits_b)
  loss_a = -jnp.mean(logp_a[labels, labels])
  loss_b = -jnp.mean(logp_b[labels, labels])
  logits = jnp.concatenate([logits_a, logits_b], axis=0)
  logp = jnp.concatenate([logp_a, logp_b], axis=0)
  probs = jnp.exp(logp)
  entropy = -jnp.mean(jnp.sum(jnp.where(probs > 0, probs * logp, 0.0), axis=1))
  accuracy = jnp.mean(jnp.argmax(logits, axis=1) == jnp.concatenate([labels, labels]))
  return loss_a + loss_b, {"contrastive_accuracy": accuracy, "contrastive_entropy": entropy}
