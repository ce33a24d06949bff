"""Running a network over the V clips of a batch, with BatchNorm per clip or over all clips.

The rho-methods' and TCLR's reference code call the network once per clip (view), so each
BatchNorm sees the B clips of one view of the global batch; CVRL's reference concatenates
the views (BN over all B x V clips). `per_view=True` reproduces the former with one
`lax.scan` over views, so the network is traced once whatever V is; BN statistics update
once per view, in view order, as the reference's sequential calls do.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import nnx


def apply_views(model: nnx.Module, fn: Callable[[nnx.Module, jax.Array], Any], video: jax.Array,
                *, per_view: bool) -> Any:
  """fn(model, clips [N, ...]) -> pytree of [N, ...] arrays, over video [B, V, ...].

  Returns the pytree with leaves [B, V, ...]. Mutations `fn` makes to non-parameter
  state (BatchNorm statistics, buffers) are written back to `model`.
  """
  b, v = video.shape[:2]
  if not per_view:
    out = fn(model, video.reshape(b * v, *video.shape[2:]))
    return jax.tree.map(lambda y: y.reshape(b, v, *y.shape[1:]), out)
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)

  def body(rest, clips):
    m = nnx.merge(graphdef, params, rest, copy=True)
    y = fn(m, clips)
    return nnx.split(m, nnx.Param, ...)[2], y

  rest, ys = jax.lax.scan(body, rest, jnp.swapaxes(video, 0, 1))
  nnx.update(model, rest)
  return jax.tree.map(lambda y: jnp.swapaxes(y, 0, 1), ys)
