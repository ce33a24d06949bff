import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import cvrl  # noqa: F401  (rbg PRNG)
from cvrl import config_lib
from cvrl.objectives.swav import swav_loss
from objective_checks import (build, load_config, numeric_grad, random_video,
                              sharded_equals_single)
from test_objectives_sinkhorn import cosine_scores, numpy_sinkhorn

T, EPS = 0.1, 0.05


def log_softmax(x):
  x = x - x.max(axis=-1, keepdims=True)
  return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def numpy_swav(scores, codes_from, temperature, num_assign):
  """Clips 0 .. num_assign-1 get Sinkhorn codes (computed from `codes_from`, no gradient);
  every other clip predicts them; mean over assigned clips of the mean over predictors."""
  b, v, k = scores.shape
  total = 0.0
  for i in range(num_assign):
    q = numpy_sinkhorn(codes_from[:, i], EPS, 3)
    sub = [-np.mean(np.sum(q * log_softmax(scores[:, j] / temperature), axis=1))
           for j in range(v) if j != i]
    total += np.mean(sub)
  return total / num_assign


def clip_scores(seed, b, v, k):
  return np.stack([cosine_scores(seed + 10 * i, b, k) for i in range(v)], axis=1)


@pytest.mark.parametrize("rho,num_assign", [(2, 2), (4, 2), (3, 1)])
def test_loss_and_gradient_match_numpy(rho, num_assign):
  scores = clip_scores(0, 6, rho, 5).astype(np.float32)
  f = lambda s: swav_loss(s, T, epsilon=EPS, iterations=3, num_assign=num_assign)[0]
  np.testing.assert_allclose(jax.jit(f)(scores), numpy_swav(scores, scores, T, num_assign),
                             rtol=1e-4)
  # The codes carry no gradient: differentiate the prediction side only.
  expected = numeric_grad(lambda s: numpy_swav(s, scores, T, num_assign), scores)
  np.testing.assert_allclose(jax.jit(jax.grad(f))(scores), expected, rtol=2e-3, atol=1e-5)


def test_eight_devices_equal_one_device():
  scores = clip_scores(1, 16, 2, 12).astype(np.float32)
  f = lambda s: jax.value_and_grad(lambda x: swav_loss(x, T)[0])(s)
  sharded_equals_single(f, scores, rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_model_prototypes_frozen_then_trained_and_renormalised():
  config = load_config("swav_tiny")  # prototypes frozen for 2 steps
  objective, model = build(config)
  w = np.asarray(model.prototypes.kernel[...])
  assert w.shape == (8, 16)
  np.testing.assert_allclose(np.linalg.norm(w, axis=1), 1.0, rtol=1e-5)

  @nnx.jit
  def grads_at(model, video, t):
    f = lambda m: objective.loss(m, {"video": video}, step=t, rng=None)
    return nnx.value_and_grad(f, has_aux=True, argnums=nnx.DiffState(0, objective.trainable))(model)

  video = random_video(0, 4, 2, 4, 16, 16, 3)
  (loss, _), frozen = grads_at(model, video, 1)
  assert np.isfinite(float(loss))
  np.testing.assert_array_equal(frozen["prototypes"]["kernel"][...], 0.0)
  assert np.any(np.asarray(frozen["encoder"]["stem"]["conv"]["kernel"][...]) != 0)
  (_, _), trained = grads_at(model, video, 2)
  assert np.any(np.asarray(trained["prototypes"]["kernel"][...]) != 0)

  model.prototypes.kernel[...] = model.prototypes.kernel[...] * 3.0
  nnx.jit(lambda m: objective.after_update(m, step=jnp.int32(2)))(model)
  w2 = np.asarray(model.prototypes.kernel[...])
  np.testing.assert_allclose(np.linalg.norm(w2, axis=1), 1.0, rtol=1e-5)
  np.testing.assert_allclose(w2, w, rtol=1e-5, atol=1e-6)


def test_rho_4_pairs_consecutive_clips_as_the_reference():
  from cvrl.objectives.simclr import consecutive_pairs  # pylint: disable=import-outside-toplevel
  scores = clip_scores(3, 6, 4, 5).astype(np.float32)
  got = consecutive_pairs(lambda s: swav_loss(s, T, epsilon=EPS, num_assign=2), scores)[0]
  want = sum(numpy_swav(scores[:, k:k + 2], scores[:, k:k + 2], T, 2) for k in range(3))
  np.testing.assert_allclose(float(got), want, rtol=1e-4)
  assert abs(float(swav_loss(scores, T, epsilon=EPS, num_assign=2)[0]) - want) > 1e-2


def test_lars_updates_the_prototypes_with_trust_ratio_and_weight_decay():
  """The reference's LARS treats the prototypes (a 2-D weight) as any kernel: the update
  is lr * trust * ||w|| / ||g + wd w|| * (g + wd w), times 1 + m on the first Nesterov step."""
  from cvrl.engine import optim  # pylint: disable=import-outside-toplevel
  config = load_config("swav_k400_slowr50")
  from cvrl.objectives import base  # pylint: disable=import-outside-toplevel
  objective = base.method(**config_lib.method_args(config))
  model = nnx.eval_shape(lambda: objective.build(nnx.Rngs(0)))
  params = nnx.state(model, objective.trainable)
  mask = optim.decay_mask(params)
  assert all(jax.tree.leaves(mask["prototypes"]))  # decayed and trust-scaled
  rng = np.random.default_rng(0)
  w = l2n_rows(rng.normal(size=(10, 4)).astype(np.float32))
  g = rng.normal(size=(10, 4)).astype(np.float32)
  toy = {"prototypes": {"kernel": w}}
  tx = optim.build(config.optim, lambda t: 0.5)
  updates, _ = tx.update({"prototypes": {"kernel": g}}, tx.init(toy), toy)
  u = g + 1e-6 * w
  assert config.optim.nesterov and config.optim.momentum == 0.9
  want = -(1 + 0.9) * 0.5 * 0.001 * np.linalg.norm(w) / np.linalg.norm(u) * u
  np.testing.assert_allclose(np.asarray(updates["prototypes"]["kernel"]), want, rtol=1e-4)


def l2n_rows(x):
  return x / np.linalg.norm(x, axis=1, keepdims=True)
