import jax
import numpy as np
import pytest

import cvrl  # noqa: F401  (rbg PRNG)
from cvrl.objectives import rotation
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


def test_frame_difference_and_input_modes():
  clips = random_video(2, 2, 5, 4, 4, 3)
  dif = rotation.model_input(clips, "dif")
  assert dif.shape == (2, 4, 4, 4, 3)
  np.testing.assert_allclose(dif[:, 2], clips[:, 3] - clips[:, 2], rtol=1e-6)
  np.testing.assert_array_equal(rotation.model_input(clips, "rgb"), clips)
  with pytest.raises(ValueError, match="rgb"):
    rotation.model_input(clips, "flow")


def test_fusion_averages_the_two_models_softmax_scores():
  rgb, dif = random_embeddings(3, 5, 7), random_embeddings(4, 5, 7)
  softmax = lambda x: np.exp(x) / np.exp(x).sum(axis=1, keepdims=True)
  fused = np.asarray(rotation.fuse_scores(rgb, dif))
  np.testing.assert_allclose(fused, (softmax(rgb) + softmax(dif)) / 2, rtol=1e-5)
  np.testing.assert_allclose(fused.sum(axis=1), 1.0, rtol=1e-5)
  np.testing.assert_allclose(rotation.fuse_probabilities(softmax(rgb), softmax(dif)), fused,
                             rtol=1e-5)


def test_encoder_input_for_downstream_jobs():
  clips = random_video(6, 2, 5, 4, 4, 3)
  extra, transform = rotation.encoder_input(load_config("rotation_tiny", "input=dif"))
  assert extra == 1
  np.testing.assert_allclose(transform(clips), rotation.frame_difference(clips))
  extra, transform = rotation.encoder_input(load_config("rotation_tiny"))
  assert extra == 0 and transform(clips) is clips
  assert rotation.encoder_input(load_config("simclr_tiny"))[0] == 0
  from cvrl.objectives import base  # pylint: disable=import-outside-toplevel
  assert base.get(load_config("rotation_tiny", "input=dif")).sampler() == {
      "name": "single", "extra_frames": 1}
  assert base.get(load_config("rotation_tiny")).sampler() == {"name": "single"}
  with pytest.raises(ValueError, match="rgb"):
    base.get(load_config("rotation_tiny", "input=flow"))
