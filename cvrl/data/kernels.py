"""Filter kernels the on-device image ops share (device's blur, FAME's smoothing)."""
from __future__ import annotations

import jax.numpy as jnp


def gaussian_weights(sigma, radius: int):
  """Normalised Gaussian taps [..., 2 * radius + 1] for sigma [...] (the reference kernel)."""
  offsets = jnp.arange(-radius, radius + 1, dtype=jnp.float32)
  w = jnp.exp(-jnp.square(offsets) / (2.0 * jnp.square(jnp.asarray(sigma)[..., None])))
  return w / jnp.sum(w, axis=-1, keepdims=True)
