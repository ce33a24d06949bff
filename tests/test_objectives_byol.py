import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import cvrl  # noqa: F401  (rbg PRNG)
from cvrl.objectives.byol import byol_loss
from objective_checks import (build, l2n, load_config, numeric_grad, paths, random_embeddings,
                              random_video, sharded_equals_single)


def numpy_byol(p, z, reduction):
  """2 - 2 cos(p_i, z_j) for every ordered pair of distinct clips of a video."""
  b, v, _ = p.shape
  p, z = l2n(p), l2n(z)
  per_query = np.zeros(v)
  for i in range(v):
    per_query[i] = np.mean([2 - 2 * p[n, i] @ z[n, j] for n in range(b) for j in range(v)
                            if j != i])
  return per_query.mean() if reduction == "mean" else per_query.sum()


@pytest.mark.parametrize("rho,reduction", [(2, "mean"), (4, "mean"), (4, "sum")])
def test_loss_and_gradient_match_numpy(rho, reduction):
  p = random_embeddings(0, 3, rho, 5)
  z = random_embeddings(1, 3, rho, 5)
  f = lambda x: byol_loss(x, z, reduction=reduction)[0]
  np.testing.assert_allclose(jax.jit(f)(p), numpy_byol(p, z, reduction), rtol=1e-5)
  expected = numeric_grad(lambda x: numpy_byol(x, z, reduction), p)
  np.testing.assert_allclose(jax.jit(jax.grad(f))(p), expected, rtol=1e-3, atol=1e-5)


def test_identical_directions_give_zero_loss():
  p = random_embeddings(2, 4, 1, 8)
  both = np.concatenate([p, 3 * p], axis=1)
  assert float(byol_loss(both, both)[0]) == pytest.approx(0.0, abs=1e-5)


def test_eight_devices_equal_one_device():
  p = random_embeddings(3, 16, 2, 8)
  z = random_embeddings(4, 16, 2, 8)
  f = lambda p, z: jax.value_and_grad(lambda x: byol_loss(x, z)[0])(p)
  sharded_equals_single(f, p, z, sharded_argnums=(0, 1))


@pytest.mark.slow
def test_model_target_gets_no_gradient_follows_the_ema_and_gives_the_projection():
  config = load_config("byol_tiny")
  objective, model = build(config)
  online = paths(nnx.state(model, objective.trainable))
  target = paths(nnx.state(model, nnx.Param)) - online
  assert target and all(p[0] == "target" for p in target)
  assert any(p[0] == "predictor" for p in online)
  assert not any(p[0] == "predictor" for p in target)

  @nnx.jit
  def step(model, video):
    def f(m):
      return objective.loss(m, {"video": video}, step=0, rng=None)
    return nnx.value_and_grad(f, has_aux=True)(model)  # gradients for every nnx.Param

  (loss, _), grads = step(model, random_video(0, 2, 2, 4, 16, 16, 3))
  assert 0.0 < float(loss) < 4.0 * 2  # 2 - 2 cos in [0, 4], summed over the 2 query clips
  flat = {tuple(str(k) for k in p): np.asarray(v) for p, v in nnx.to_flat_state(grads)}
  assert all(np.all(flat[p] == 0) for p in target)
  assert any(np.any(flat[p] != 0) for p in online if p[0] == "encoder")

  nnx.update(model, jax.tree.map(lambda x: x * 1.5, nnx.state(model, objective.trainable)))
  before = {part: (jax.tree.map(np.array, nnx.state(getattr(model.target, part), nnx.Param)),
                   jax.tree.map(np.array, nnx.state(getattr(model, part), nnx.Param)))
            for part in ("encoder", "head")}
  nnx.jit(lambda m: objective.after_update(m, step=jnp.int32(1)))(model)
  m = 1 - (1 - 0.996) * (np.cos(np.pi * 2 / config.total_steps) + 1) / 2
  for part, (t, o) in before.items():
    jax.tree.map(lambda a, t, o: np.testing.assert_allclose(a, m * t + (1 - m) * o, rtol=1e-5,
                                                            atol=1e-6),
                 nnx.state(getattr(model.target, part), nnx.Param), t, o)

  # The online network now moves away from the target (noise on its parameters: a scale
  # alone is undone by BatchNorm and the normalisation): the loss must take the target's
  # projection, recomputed here view by view (per-view BN, train mode).
  trainable = nnx.state(model, objective.trainable)
  noise = jax.tree.map(lambda x: 0.5 * jax.random.normal(jax.random.key(5), x.shape, x.dtype),
                       trainable)
  nnx.update(model, jax.tree.map(jnp.add, trainable, noise))
  video = random_video(1, 2, 2, 4, 16, 16, 3)
  (loss, _), _ = step(model, video)

  @nnx.jit
  def branches(m, x):
    online = m.head(m.encoder(x))
    return m.predictor(online), m.target.project(x), online

  p, z_target, z_online = (np.stack(y, axis=1)
                           for y in zip(*(branches(model, video[:, v]) for v in range(2))))
  np.testing.assert_allclose(float(loss), numpy_byol(p, z_target, "sum"), rtol=1e-4)
  assert abs(numpy_byol(p, z_online, "sum") - numpy_byol(p, z_target, "sum")) > 0.1
