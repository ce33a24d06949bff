import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from cvrl.models.heads import MLP, LinearClassifier, RotationClassifier, l2_normalize


def count(m):
  return sum(x.size for x in jax.tree.leaves(nnx.state(m, nnx.Param)))


def test_cvrl_projection_head_layout():
  head = MLP(2048, 2048, 128, num_hidden=3, bn=True, rngs=nnx.Rngs(0))
  assert count(head) == 3 * (2048 * 2048 + 2 * 2048) + 2048 * 128 + 128


def test_mlp_with_bn_normalises_hidden_units_in_train_mode():
  head = MLP(6, 5, 3, num_hidden=1, bn=True, rngs=nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(0), (64, 6)) * 3 + 1
  hidden = head.hidden_norms[0](head.hidden_layers[0](x))
  np.testing.assert_allclose(hidden.mean(0), 0, atol=1e-5)
  np.testing.assert_allclose(hidden.std(0), 1, atol=1e-3)
  assert head(x).shape == (64, 3)


def test_mlp_without_bn_is_plain_relu_mlp():
  head = MLP(4, 8, 2, num_hidden=2, bn=False, rngs=nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(1), (3, 4))
  h = x
  for layer in head.hidden_layers:
    h = jnp.maximum(h @ layer.kernel[...] + layer.bias[...], 0)
  np.testing.assert_allclose(head(x), h @ head.out.kernel[...] + head.out.bias[...], rtol=1e-5)


def test_byol_predictor_and_tclr_head_shapes():
  pred = MLP(256, 4096, 256, num_hidden=1, bn=True, rngs=nnx.Rngs(0))
  assert pred(jnp.ones((4, 256))).shape == (4, 256)
  tclr = MLP(512, 512, 128, num_hidden=1, bn=True, bn_last=True, rngs=nnx.Rngs(0))
  out = tclr(jax.random.normal(jax.random.key(0), (8, 512)))
  np.testing.assert_allclose(out.mean(0), 0, atol=1e-5)  # BN on the output too


def test_linear_classifier_on_normalised_features_is_scale_invariant():
  clf = LinearClassifier(16, 5, normalize=True, rngs=nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(2), (3, 16))
  np.testing.assert_allclose(clf(x), clf(7.0 * x), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(jnp.linalg.norm(l2_normalize(x), axis=-1), 1.0, rtol=1e-6)
  raw = LinearClassifier(16, 5, normalize=False, rngs=nnx.Rngs(0))
  assert not np.allclose(raw(x), raw(7.0 * x))


def test_rotation_classifier():
  head = RotationClassifier(512, rngs=nnx.Rngs(0))
  assert head(jnp.ones((2, 512))).shape == (2, 4)
  assert count(head) == 512 * 64 + 64 + 64 * 4 + 4
