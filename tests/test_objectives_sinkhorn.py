import jax
import jax.numpy as jnp
import numpy as np
import pytest

import cvrl  # noqa: F401  (rbg PRNG)
from cvrl.objectives.sinkhorn import sinkhorn
from objective_checks import random_embeddings, sharded_equals_single


def numpy_sinkhorn(scores, epsilon, iterations):
  """SwAV's distributed_sinkhorn on one process, in float64."""
  q = np.exp(np.asarray(scores, np.float64) / epsilon).T  # [K, B]
  k, b = q.shape
  q /= q.sum()
  for _ in range(iterations):
    q *= (1.0 / k / q.sum(axis=1))[:, None]
    q *= (1.0 / b / q.sum(axis=0))[None, :]
  return (q / q.sum(axis=0, keepdims=True)).T


def cosine_scores(seed, b, k, d=6):
  z = random_embeddings(seed, b, d)
  c = random_embeddings(seed + 1, k, d)
  z /= np.linalg.norm(z, axis=1, keepdims=True)
  c /= np.linalg.norm(c, axis=1, keepdims=True)
  return z @ c.T


@pytest.mark.parametrize("iterations", [1, 3])
def test_matches_numpy(iterations):
  scores = cosine_scores(0, 12, 5)
  np.testing.assert_allclose(sinkhorn(scores, epsilon=0.05, iterations=iterations),
                             numpy_sinkhorn(scores, 0.05, iterations), rtol=1e-4, atol=1e-7)


def test_codes_are_distributions_that_spread_over_prototypes():
  scores = cosine_scores(1, 64, 4)
  codes = np.asarray(sinkhorn(scores, epsilon=0.05, iterations=50))
  np.testing.assert_allclose(codes.sum(axis=1), 1.0, rtol=1e-5)
  # Equipartition: every prototype gets about B / K of the mass.
  np.testing.assert_allclose(codes.sum(axis=0), 64 / 4, rtol=1e-2)


def test_no_gradient_flows_through_the_codes():
  scores = jnp.asarray(cosine_scores(2, 8, 3))
  grad = jax.grad(lambda s: jnp.sum(sinkhorn(s) * jnp.arange(3.0)))(scores)
  np.testing.assert_array_equal(grad, 0.0)


def test_eight_devices_equal_one_device_on_the_concatenated_batch():
  scores = cosine_scores(3, 32, 10)  # 4 rows per device
  codes = sharded_equals_single(lambda s: sinkhorn(s, epsilon=0.05, iterations=3), scores,
                                rtol=1e-5, atol=1e-7)
  # The sums really are global: Sinkhorn on each device's rows alone gives other codes.
  local = np.concatenate([numpy_sinkhorn(part, 0.05, 3) for part in np.split(scores, 8)])
  assert np.max(np.abs(local - np.asarray(codes))) > 1e-2
