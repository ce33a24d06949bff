"""Sinkhorn-Knopp equipartition of a batch over prototypes, as SwAV's reference computes it.

The sums run over the whole (global) batch: under jit with the scores sharded over the
batch, XLA reduces across devices, which is the reference's `distributed_sinkhorn`
(all-reduced total and row sums) without writing the collectives by hand.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def sinkhorn(scores, *, epsilon: float = 0.05, iterations: int = 3):
  """scores [B, K] (prototype similarities) -> codes [B, K], each row summing to 1.

  Q = exp(scores / eps)^T normalised to total 1; then `iterations` times: rows scaled to
  sum 1/K, columns to 1/B; finally each column (sample) normalised to sum 1. No gradient.
  """
  scores = jax.lax.stop_gradient(scores.astype(jnp.float32))
  b, k = scores.shape
  q = jnp.exp(scores / epsilon).T  # [K, B]
  q = q / jnp.sum(q)
  for _ in range(iterations):
    q = q * ((1.0 / k) / jnp.sum(q, axis=1))[:, None]
    q = q * ((1.0 / b) / jnp.sum(q, axis=0))[None, :]
  return (q / jnp.sum(q, axis=0, keepdims=True)).T
