import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import cvrl  # noqa: F401  (rbg PRNG)
from cvrl.objectives.views import apply_views


class Net(nnx.Module):

  def __init__(self):
    self.dense = nnx.Linear(3, 4, rngs=nnx.Rngs(0))
    self.bn = nnx.BatchNorm(4, momentum=0.5, rngs=nnx.Rngs(0))

  def __call__(self, x):
    return self.bn(self.dense(x))


def run(per_view, video):
  model = Net()

  def loss(m):
    y = apply_views(m, lambda mm, x: mm(x), video, per_view=per_view)
    return jnp.sum(jnp.sin(y)), y

  (_, y), grads = nnx.jit(lambda m: nnx.value_and_grad(loss, has_aux=True)(m))(model)
  return y, grads, model


def reference(video):
  """The reference's way: one call per view, in view order."""
  model = Net()

  def loss(m):
    ys = [m(video[:, v]) for v in range(video.shape[1])]
    return sum(jnp.sum(jnp.sin(y)) for y in ys), jnp.stack(ys, axis=1)

  (_, y), grads = nnx.value_and_grad(loss, has_aux=True)(model)
  return y, grads, model


def test_per_view_equals_one_call_per_view():
  video = jax.random.normal(jax.random.key(0), (5, 3, 3)) * 2 + 1
  y, grads, model = run(True, video)
  y_ref, grads_ref, model_ref = reference(video)
  np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
               nnx.state(grads), nnx.state(grads_ref))
  # BatchNorm statistics were updated once per view, in order.
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               nnx.state(model, nnx.BatchStat), nnx.state(model_ref, nnx.BatchStat))
  # Each view was normalised on its own.
  np.testing.assert_allclose(np.mean(y, axis=0), 0.0, atol=1e-5)


def test_all_views_in_one_call_normalise_over_every_clip():
  video = jax.random.normal(jax.random.key(1), (4, 2, 3)) + jnp.array([0.0, 5.0])[None, :, None]
  y, _, _ = run(False, video)
  assert y.shape == (4, 2, 4)
  np.testing.assert_allclose(np.mean(np.asarray(y).reshape(8, 4), axis=0), 0.0, atol=1e-5)
  # The two views sit at different means, so per view they are not centred.
  assert np.max(np.abs(np.mean(y, axis=0))) > 0.1
