"""Local (per-device) BatchNorm: per-chunk statistics equal to numpy, 1 group == nnx.BatchNorm."""
import jax
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from cvrl.core import parallel
from cvrl.models.heads import MLP
from cvrl.engine import local_bn


def make_bn(groups, features=3):
  bn = nnx.BatchNorm(features, momentum=0.9, epsilon=1e-5, rngs=nnx.Rngs(0))
  bn.scale[...] = np.array([1.0, 2.0, 0.5][:features], np.float32)
  bn.bias[...] = np.array([0.0, -1.0, 3.0][:features], np.float32)
  holder = MLP(2, 4, 2, num_hidden=1, rngs=nnx.Rngs(0))
  holder.extra = bn
  local_bn.use_local_batch_norm(holder, groups)
  assert isinstance(holder.hidden_norms[0], local_bn.GroupedBatchNorm)
  return holder.extra


def numpy_bn(x, groups, scale, bias, eps=1e-5):
  chunks = np.split(x.astype(np.float64), groups)
  axes = tuple(range(x.ndim - 1))
  ys, means, variances = [], [], []
  for c in chunks:
    m, v = c.mean(axes), c.var(axes)
    ys.append((c - m) / np.sqrt(v + eps) * scale + bias)
    means.append(m)
    variances.append(v)
  return np.concatenate(ys), np.mean(means, 0), np.mean(variances, 0)


@pytest.mark.parametrize("groups", [1, 2, 4])
def test_statistics_per_chunk(groups):
  x = np.random.default_rng(groups).normal(size=(8, 5, 3)).astype(np.float32) * [1, 3, 0.2] + 2
  bn = make_bn(groups)
  y = bn(x)
  want_y, want_mean, want_var = numpy_bn(x, groups, bn.scale[...], bn.bias[...])
  np.testing.assert_allclose(y, want_y, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(bn.mean[...], 0.1 * want_mean, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(bn.var[...], 0.9 + 0.1 * want_var, rtol=1e-5)
  # Eval mode ignores the groups.
  bn.use_running_average = True
  np.testing.assert_allclose(bn(x), (x - bn.mean[...]) / np.sqrt(bn.var[...] + 1e-5)
                             * bn.scale[...] + bn.bias[...], rtol=1e-4, atol=1e-4)


def test_one_group_is_plain_batch_norm_and_bad_split_fails():
  x = np.random.default_rng(0).normal(size=(6, 3)).astype(np.float32)
  plain = nnx.BatchNorm(3, momentum=0.9, rngs=nnx.Rngs(0))
  grouped = make_bn(1)
  grouped.scale[...] = plain.scale[...]
  grouped.bias[...] = plain.bias[...]
  np.testing.assert_array_equal(grouped(x), plain(x))
  np.testing.assert_array_equal(grouped.var[...], plain.var[...])
  with pytest.raises(ValueError, match="device groups"):
    make_bn(4)(x)


def test_groups_are_devices_under_a_sharded_jit():
  x = np.random.default_rng(1).normal(size=(8, 4, 3)).astype(np.float32)
  bn = make_bn(4)
  graphdef, state = nnx.split(bn)
  mesh = parallel.make_mesh(jax.devices()[:4])
  xs = jax.device_put(x, NamedSharding(mesh, P("data")))

  @jax.jit
  def f(state, x):
    m = nnx.merge(graphdef, state, copy=True)
    return m(x)

  y = f(state, xs)
  want_y, _, _ = numpy_bn(x, 4, bn.scale[...], bn.bias[...])
  np.testing.assert_allclose(y, want_y, rtol=1e-4, atol=1e-4)
  # Device g holds chunk g and normalises it with its own statistics: no all-gather of x.
  hlo = f.lower(state, xs).compile().as_text()
  assert "all-gather" not in hlo
