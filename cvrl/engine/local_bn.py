"""Per-device ("local") BatchNorm, the explicit alternative to synchronised BN.

Under jit with a batch-sharded global array, `nnx.BatchNorm` reduces over the whole global
batch: synchronised BN, the paper's setting. `config.parallel.batch_norm = 'local'`
instead normalises each device's slice of the batch with that slice's own statistics,
as un-synchronised BN on N replicas does.

How: every BatchNorm of the model becomes a `GroupedBatchNorm` that splits the leading
(batch) axis into `num_groups` contiguous chunks (= the data-parallel device count) and
computes mean and variance per chunk. Because chunk g is exactly the rows device g holds,
XLA normalises each chunk on its own device without gathering activations. The running
averages take the mean of the chunk statistics (replicas of an un-synced run would each
keep their own; the mean keeps one set for evaluation): that mean, C floats per layer, is
the only cross-device traffic. Variables and
checkpoints are those of a plain BatchNorm.

The chunks match devices when the objective keeps the batch axis video-major (all clips
of a video next to each other, as CVRL's [B, V] -> [B * V] reshape does).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from flax.nnx.nn import normalization as _norm

BATCH_NORM_MODES = ("sync", "local")


class GroupedBatchNorm(nnx.BatchNorm):
  """BatchNorm with statistics per contiguous chunk of the leading axis (train mode)."""
  num_groups: int = 1

  def __call__(self, x, use_running_average=None, *, mask=None):
    use_running_average = (self.use_running_average if use_running_average is None
                           else use_running_average)
    groups = int(self.num_groups)
    if use_running_average or groups == 1 or mask is not None:
      return super().__call__(x, use_running_average, mask=mask)
    if x.shape[0] % groups:
      raise ValueError(f"local BatchNorm: leading axis {x.shape[0]} does not split into "
                       f"{groups} device groups")
    feature_axes = _norm._canonicalize_axes(x.ndim, self.axis)  # pylint: disable=protected-access
    reduction_axes = tuple(i for i in range(x.ndim) if i not in feature_axes)
    scale = self.scale[...] if self.scale is not None else None
    bias = self.bias[...] if self.bias is not None else None
    x, _, _, scale, bias = self.promote_dtype(
        (x, self.mean[...], self.var[...], scale, bias), dtype=self.dtype)
    xg = x.reshape(groups, x.shape[0] // groups, *x.shape[1:])

    def one_group(xi):
      mean, var = _norm._compute_stats(  # pylint: disable=protected-access
          xi, reduction_axes, dtype=self.dtype, use_fast_variance=self.use_fast_variance)
      y = _norm._normalize(xi, mean, var, scale, bias, reduction_axes,  # pylint: disable=protected-access
                           feature_axes, self.dtype, self.epsilon)
      return y, mean, var

    y, means, variances = jax.vmap(one_group)(xg)
    stop = jax.lax.stop_gradient
    self.mean[...] = stop(self.momentum * self.mean[...]
                          + (1 - self.momentum) * jnp.mean(means, axis=0))
    self.var[...] = stop(self.momentum * self.var[...]
                         + (1 - self.momentum) * jnp.mean(variances, axis=0))
    return y.reshape(x.shape)


def use_local_batch_norm(model: nnx.Module, num_groups: int) -> nnx.Module:
  """Turns every nnx.BatchNorm of `model` into a GroupedBatchNorm over `num_groups`, in place.

  Only the class changes (same variables), so checkpoints load into the plain model.
  """
  for _, module in nnx.iter_modules(model):
    if isinstance(module, nnx.BatchNorm):
      module.__class__ = GroupedBatchNorm
      module.num_groups = int(num_groups)
  return model
