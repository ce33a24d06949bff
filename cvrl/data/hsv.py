"""RGB <-> HSV in JAX, as tf.image.rgb_to_hsv / hsv_to_rgb (the colour jitter on device,
FAME's colour prior)."""
from __future__ import annotations

import jax.numpy as jnp


def rgb_to_hsv(x):
  """(h, s, v) in [0, 1] of x [..., 3], as tf.image.rgb_to_hsv."""
  r, g, b = x[..., 0], x[..., 1], x[..., 2]
  value = jnp.maximum(jnp.maximum(r, g), b)
  span = value - jnp.minimum(jnp.minimum(r, g), b)
  sat = jnp.where(value > 0, span / jnp.where(value > 0, value, 1.0), 0.0)
  norm = (1.0 / 6.0) / jnp.where(span > 0, span, 1.0)
  hue = jnp.where(g == value, norm * (b - r) + 2.0 / 6.0, norm * (r - g) + 4.0 / 6.0)
  hue = jnp.where(r == value, norm * (g - b), hue)
  hue = jnp.where(span > 0, hue, 0.0)
  hue = jnp.where(hue < 0, hue + 1.0, hue)
  return hue, sat, value


def hsv_to_rgb(h, s, v):
  """x [..., 3] from (h, s, v), as tf.image.hsv_to_rgb."""
  dh = h * 6.0
  dr = jnp.clip(jnp.abs(dh - 3.0) - 1.0, 0.0, 1.0)
  dg = jnp.clip(2.0 - jnp.abs(dh - 2.0), 0.0, 1.0)
  db = jnp.clip(2.0 - jnp.abs(dh - 4.0), 0.0, 1.0)
  rest = 1.0 - s
  return jnp.stack([(rest + s * dr) * v, (rest + s * dg) * v, (rest + s * db) * v], axis=-1)
