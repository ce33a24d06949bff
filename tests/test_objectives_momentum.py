import math

import jax
import numpy as np
import pytest
from flax import nnx

import cvrl  # noqa: F401  (rbg PRNG)
from cvrl.objectives.momentum import copy_params, cosine_momentum, ema_update, momentum_at


@pytest.mark.parametrize("base", [0.994, 0.996])
@pytest.mark.parametrize("step", [0, 1, 250, 500, 999, 1000, 1500])
def test_cosine_momentum_matches_the_formula(base, step):
  total = 1000
  t = min(step, total)
  expected = 1 - (1 - base) * (math.cos(math.pi * t / total) + 1) / 2
  np.testing.assert_allclose(float(cosine_momentum(step, total, base)), expected, rtol=1e-6)


def test_momentum_endpoints_and_constant_schedule():
  assert float(momentum_at(0, base=0.996, total_steps=10)) == pytest.approx(0.996)
  assert float(momentum_at(10, base=0.996, total_steps=10)) == pytest.approx(1.0)
  assert float(momentum_at(5, base=0.9, total_steps=10, schedule="constant")) == pytest.approx(0.9)
  with pytest.raises(ValueError, match="cosine"):
    momentum_at(0, base=0.9, total_steps=10, schedule="linear")


def test_ema_update_averages_parameters_only():
  online = nnx.Sequential(nnx.Linear(3, 4, rngs=nnx.Rngs(0)), nnx.BatchNorm(4, rngs=nnx.Rngs(0)))
  target = nnx.Sequential(nnx.Linear(3, 4, rngs=nnx.Rngs(1)), nnx.BatchNorm(4, rngs=nnx.Rngs(1)))
  target.layers[1].mean[...] = target.layers[1].mean[...] + 5.0
  before_t = jax.tree.map(np.array, nnx.state(target, nnx.Param))
  before_o = jax.tree.map(np.array, nnx.state(online, nnx.Param))
  ema_update([(target, online)], 0.9)
  after = nnx.state(target, nnx.Param)
  jax.tree.map(lambda a, t, o: np.testing.assert_allclose(a, 0.9 * t + 0.1 * o, rtol=1e-6),
               after, before_t, before_o)
  # BatchNorm statistics are the target's own.
  np.testing.assert_allclose(target.layers[1].mean[...], 5.0)
  copy_params(target, online)
  jax.tree.map(np.testing.assert_array_equal, nnx.state(target, nnx.Param),
               nnx.state(online, nnx.Param))
