import jax
import numpy as np
import pytest
from flax import nnx

import cvrl  # noqa: F401  (rbg PRNG)

from cvrl import config_lib
from cvrl.objectives import base, rotation
from objective_checks import load_config, numeric_grad, random_embeddings, random_video


def test_rotate_clips_rotates_every_frame_and_labels_by_angle():
  clips = random_video(0, 2, 3, 5, 5, 3)
  rotated, labels = rotation.rotate_clips(clips)
  assert rotated.shape == (8, 3, 5, 5, 3)
  np.testing.assert_array_equal(labels, [0, 1, 2, 3, 0, 1, 2, 3])
  for k in range(4):
    for n in range(2):
      for t in range(3):
        np.testing.assert_array_equal(rotated[4 * n + k, t], np.rot90(clips[n, t], k))
  with pytest.raises(ValueError, match="square"):
    rotation.rotate_clips(random_video(0, 1, 2, 4, 6, 3))


def numpy_ce(logits, labels):
  z = logits - logits.max(axis=1, keepdims=True)
  logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
  return -np.mean(logp[np.arange(len(labels)), labels])


def test_loss_and_gradient_match_numpy():
  logits = random_embeddings(1, 8, 4)
  labels = np.array([0, 1, 2, 3, 0, 1, 2, 3])
  f = lambda x: rotation.rotation_loss(x, labels)[0]
  np.testing.assert_allclose(f(logits), numpy_ce(logits, labels), rtol=1e-5)
  np.testing.assert_allclose(jax.grad(f)(logits),
                             numeric_grad(lambda x: numpy_ce(x, labels), logits),
                             rtol=1e-3, atol=1e-6)
  acc = rotation.rotation_loss(logits, labels)[1]["rotation_accuracy"]
  assert float(acc) == np.mean(np.argmax(logits, 1) == labels)


def test_fusion_averages_the_two_models_softmax_scores():
  rgb, dif = random_embeddings(3, 5, 7), random_embeddings(4, 5, 7)
  softmax = lambda x: np.exp(x) / np.exp(x).sum(axis=1, keepdims=True)
  fused = np.asarray(rotation.fuse_scores(rgb, dif))
  np.testing.assert_allclose(fused, (softmax(rgb) + softmax(dif)) / 2, rtol=1e-5)
  np.testing.assert_allclose(fused.sum(axis=1), 1.0, rtol=1e-5)
  np.testing.assert_allclose(rotation.fuse_probabilities(softmax(rgb), softmax(dif)), fused,
                             rtol=1e-5)


def test_dif_objective_builds_its_encoder_from_a_dif_model_config():
  config = load_config("rotation_tiny", "input=dif")
  objective = base.method(**config_lib.method_args(config))
  assert objective.encoder_config().input == "dif" and config.model.input == "rgb"
  assert objective.sampler() == {"name": "single", "extra_frames": 1}
  model = nnx.eval_shape(lambda: objective.build(nnx.Rngs(0)))
  assert model.encoder.input_mode == "dif"
  rgb = base.method(**config_lib.method_args(load_config("rotation_tiny")))
  assert rgb.encoder_config().input == "rgb" and rgb.sampler() == {"name": "single"}
  simclr = load_config("simclr_tiny")
  assert base.method(**config_lib.method_args(simclr)).encoder_config().to_dict() == simclr.model.to_dict()
  with pytest.raises(ValueError, match="rgb"):
    base.method(**config_lib.method_args(load_config("rotation_tiny", "input=flow")))
  contradicting = load_config("rotation_tiny")
  with contradicting.unlocked():
    contradicting.model.input = "dif"
  with pytest.raises(ValueError, match="contradicts"):
    base.method(**config_lib.method_args(contradicting))
  with simclr.unlocked():  # its sampler gives no T + 1 frames
    simclr.model.input = "dif"
  with pytest.raises(ValueError, match="T \\+ 1 frames"):
    base.method(**config_lib.method_args(simclr))


@pytest.mark.slow
def test_dif_loss_is_the_rgb_network_on_numpy_rotated_frame_differences():
  """The DIF objective's loss on T + 1 frames == cross-entropy (numpy) of the same
  parameters in RGB mode on the numpy frame differences, rotated in numpy."""
  from _downstream_toys import numpy_filled  # pylint: disable=import-outside-toplevel
  objective = base.method(**config_lib.method_args(load_config("rotation_tiny", "input=dif")))
  model = numpy_filled(lambda: objective.build(nnx.Rngs(0)), seed=4)
  twin = nnx.eval_shape(lambda: base.method(**config_lib.method_args(load_config("rotation_tiny"))).build(nnx.Rngs(1)))
  nnx.update(twin, nnx.state(model))  # the same parameters, an RGB encoder
  video = random_video(7, 2, 1, 5, 16, 16, 3)
  dif = video[:, 0, 1:] - video[:, 0, :-1]
  rotated = np.stack([np.stack([np.rot90(dif[n], k, axes=(1, 2)) for k in range(4)])
                      for n in range(2)]).reshape(8, 4, 16, 16, 3)
  labels = np.tile(np.arange(4), 2)
  loss, logits = nnx.jit(lambda m, t: (
      objective.loss(m, {"video": video}, step=0, rng=jax.random.key(0))[0],
      t.head(t.encoder(rotated))))(model, twin)
  np.testing.assert_allclose(loss, numpy_ce(np.asarray(logits, np.float64), labels), rtol=1e-5)
  assert abs(float(loss) - np.log(4)) > 1e-4  # not a degenerate uniform prediction
