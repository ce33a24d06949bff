import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import cvrl  # noqa: F401  (rbg PRNG)
from cvrl import config_lib
from cvrl import objectives
from cvrl.models.heads import EncoderHead
from cvrl.objectives import tclr
from objective_checks import (l2n, logsumexp, numeric_grad, random_embeddings,
                              sharded_equals_single)

T = 0.1


def numpy_nt_xent(a, b, temperature):
  """SimCLR NT-Xent (the reference's NTXentLoss): mean over 2N anchors of the CE of the
  other view against every other item."""
  z = l2n(np.concatenate([a, b]))
  n = len(a)
  s = z @ z.T / temperature
  terms = [logsumexp(np.delete(s[i], i)) - s[i, (i + n) % (2 * n)] for i in range(2 * n)]
  return np.mean(terms)


def numpy_local_local(gdr, temperature, reduction):
  per_video = [numpy_nt_xent(gdr[0, v], gdr[1, v], temperature) for v in range(gdr.shape[1])]
  return np.sum(per_video) if reduction == "sum" else np.mean(per_video)


def numpy_global_local(lsr, gdr, temperature):
  b = lsr.shape[1]
  lsr, gdr = l2n(lsr), l2n(gdr)
  total = 0.0
  for a in range(2):
    for d in range(2):
      ce = 0.0
      for v in range(b):
        sim = lsr[a, v] @ gdr[d, v].T / temperature
        for t in range(4):
          ce += logsumexp(sim[t]) - sim[t, t]  # timestep t -> dense clip t
          ce += logsumexp(sim[:, t]) - sim[t, t]  # dense clip t -> timestep t
      total += ce / (2 * b)
  return total


def numpy_dense_instance(gdr, temperature):
  reps = [gdr[a, :, c] for a in range(2) for c in range(4)]
  return sum(numpy_nt_xent(reps[i], reps[j], temperature)
             for i in range(8) for j in range(8) if i != j) / 4


def test_instance_loss_matches_numpy():
  a, b = random_embeddings(0, 5, 4), random_embeddings(1, 5, 4)
  np.testing.assert_allclose(tclr.nt_xent(a, b, T), numpy_nt_xent(a, b, T), rtol=1e-5)


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_local_local_loss_and_gradient_match_numpy(reduction):
  gdr = random_embeddings(2, 2, 2, 4, 3)
  f = lambda x: tclr.local_local_loss(x, T, reduction=reduction)
  np.testing.assert_allclose(jax.jit(f)(gdr), numpy_local_local(gdr, T, reduction), rtol=1e-5)
  expected = numeric_grad(lambda x: numpy_local_local(x, T, reduction), gdr)
  np.testing.assert_allclose(jax.jit(jax.grad(f))(gdr), expected, rtol=2e-3, atol=1e-4)


def test_global_local_loss_and_gradient_match_numpy():
  lsr = random_embeddings(3, 2, 2, 4, 3)
  gdr = random_embeddings(4, 2, 2, 4, 3)
  f = lambda x, y: tclr.global_local_loss(x, y, T)
  np.testing.assert_allclose(jax.jit(f)(lsr, gdr), numpy_global_local(lsr, gdr, T), rtol=1e-5)
  g_lsr, g_gdr = jax.jit(jax.grad(f, argnums=(0, 1)))(lsr, gdr)
  np.testing.assert_allclose(g_lsr, numeric_grad(lambda x: numpy_global_local(x, gdr, T), lsr),
                             rtol=2e-3, atol=1e-4)
  np.testing.assert_allclose(g_gdr, numeric_grad(lambda y: numpy_global_local(lsr, y, T), gdr),
                             rtol=2e-3, atol=1e-4)


def test_dense_instance_loss_matches_numpy():
  gdr = random_embeddings(5, 2, 3, 4, 4)
  np.testing.assert_allclose(tclr.dense_instance_loss(gdr, T), numpy_dense_instance(gdr, T),
                             rtol=1e-5)


@pytest.mark.slow
def test_losses_on_eight_devices_equal_one_device():
  lsr = random_embeddings(6, 2, 16, 4, 8)
  gdr = random_embeddings(7, 2, 16, 4, 8)
  gsr = random_embeddings(8, 2, 16, 8)

  def total(gsr, lsr, gdr):
    return (tclr.nt_xent(gsr[0], gsr[1], T) + tclr.local_local_loss(gdr, T)
            + tclr.global_local_loss(lsr, gdr, T))

  # Arrays are [2, B, ...]: shard B by moving it first and back inside.
  f = lambda g, l, d: jax.value_and_grad(total, argnums=(0, 1, 2))(
      jnp.swapaxes(g, 0, 1), jnp.swapaxes(l, 0, 1), jnp.swapaxes(d, 0, 1))
  sharded_equals_single(f, np.swapaxes(gsr, 0, 1), np.swapaxes(lsr, 0, 1),
                        np.swapaxes(gdr, 0, 1), sharded_argnums=(0, 1, 2), rtol=1e-4)


class FakeEncoder(nnx.Module):
  """Timestep t of the map = mean of frames 4t .. 4t + 3; 1x1 space; channels = input's."""

  def __call__(self, x, return_map=False):
    n, t, h, w, c = x.shape
    return jnp.mean(x.reshape(n, 4, t // 4, h, w, c), axis=(2, 3, 4))[:, :, None, None, :]


class Identity(nnx.Module):

  def __call__(self, x):
    return x


def test_encode_routes_views_and_timesteps():
  # Frame f of view v of video b is the constant vector (b, v, f + 1) + small: after the
  # identity head and L2 normalisation each representation names its source.
  b, v, frames = 2, 10, 16
  grid = np.stack(np.meshgrid(np.arange(b), np.arange(v), np.arange(frames) + 1.0,
                              indexing="ij"), axis=-1).astype(np.float32)
  video = np.broadcast_to(grid[:, :, :, None, None, :], (b, v, frames, 2, 2, 3))
  model = EncoderHead(FakeEncoder(), Identity())
  gsr, lsr, gdr = tclr.encode(model, jnp.asarray(video), per_view=True)

  def expected(view, first, count):
    f = np.arange(first, first + count) + 1.0
    return l2n(np.stack([np.arange(b), np.full(b, view), np.full(b, f.mean())], axis=1))

  for aug, sparse in ((0, 0), (1, 5)):
    np.testing.assert_allclose(gsr[aug], expected(sparse, 0, 16), rtol=1e-5)
    for t in range(4):
      np.testing.assert_allclose(lsr[aug, :, t], expected(sparse, 4 * t, 4), rtol=1e-5)
      np.testing.assert_allclose(gdr[aug, :, t], expected(sparse + 1 + t, 0, 16), rtol=1e-5)



def test_total_loss_on_a_fixed_batch_is_the_references_sum():
  """The reference's total: instance + local-local + global-local + dense instance, weight
  1 each, from the paper config's defaults."""
  from objective_checks import load_config  # pylint: disable=import-outside-toplevel
  objective = objectives.method(**config_lib.method_args(load_config("tclr_ucf101_r3d18")))
  assert objective.weights == dict.fromkeys(
      ("instance", "local_local", "global_local", "dense_instance"), 1.0)
  gsr = random_embeddings(10, 2, 3, 4)
  lsr = random_embeddings(11, 2, 3, 4, 4)
  gdr = random_embeddings(12, 2, 3, 4, 4)
  loss, metrics = tclr.total_loss(gsr, lsr, gdr, objective.temperature, objective.weights,
                                  reduction=objective.local_local_reduction)
  want = (numpy_nt_xent(gsr[0], gsr[1], T) + numpy_local_local(gdr, T, "sum")
          + numpy_global_local(lsr, gdr, T) + numpy_dense_instance(gdr, T))
  np.testing.assert_allclose(float(loss), want, rtol=1e-5)
  assert set(metrics) == {"loss_instance", "loss_local_local", "loss_global_local",
                          "loss_dense_instance"}


def test_paper_config_has_the_references_extra_augmentations():
  """configs/tclr_ucf101_r3d18.py: gray (p 0.175) then gamma U(0.75, 1.25) on 0.75 of those,
  else a channel to 0 (p 0.125), erasing p 0.5 of a 19 px bound at 112; no other grayscale.
  The tiny config stays crop + flip."""
  from objective_checks import load_config  # pylint: disable=import-outside-toplevel
  from cvrl.data import augmentation as A  # pylint: disable=import-outside-toplevel
  from cvrl.data import photometric as P  # pylint: disable=import-outside-toplevel
  cfg = load_config("tclr_ucf101_r3d18").data
  aug = cfg.augmentation
  assert (aug.gray_gamma_prob, aug.gamma_prob, tuple(aug.gamma_range)) == (0.175, 0.75, (0.75, 1.25))
  assert (aug.channel_drop_prob, aug.erase_prob) == (0.125, 0.5)
  assert aug.grayscale_prob == 0.0 and aug.color_jitter_prob == 0.3
  assert cfg.crop_size == 112 and P.erase_extent(aug.erase_size, cfg.crop_size) == 19
  spec = A.AugmentSpec.from_config(aug)
  assert (spec.gray_gamma_prob, spec.channel_drop_prob, spec.erase_prob) == (0.175, 0.125, 0.5)
  assert spec.gamma_range == (0.75, 1.25) and spec.erase_size == 19 / 112
  tiny = A.AugmentSpec.from_config(load_config("tclr_tiny").data.augmentation)
  assert not tiny.has_photometric(10, 0)
