"""3DRotNet (Jing & Tian, 2018): predict the rotation applied to every frame of a clip.

Each clip appears 4 times in the batch, all its frames rotated by 0, 90, 180 and 270
degrees (counter-clockwise, in the H x W plane); a 4-way classifier on the pooled encoder
features (cvrl.models.heads.RotationClassifier: fc 64 -> ReLU -> 4) predicts which one,
with softmax cross-entropy averaged over the 4B clips.

Input (the field `input`): 'rgb' frames, or 'dif' frame differences
x[t+1] - x[t] of T + 1 frames (sampler {'name': 'single', 'extra_frames': 1}), values in
[-1, 1]. The difference is the encoder's own first op: `encoder_config()` is config.model
with `input` set, the checkpoint stores that config, and every downstream job rebuilds
the encoder from it and samples T + `cvrl.models.extra_frames` frames, so a DIF model
sees differences at evaluation too. The paper's "Fusion" averages an RGB and a DIF
model's softmax scores: `fuse_scores` (or evaluate.fuse_with at test time).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from cvrl.models import input_mode
from cvrl.models.heads import EncoderHead, RotationClassifier
from cvrl.objectives.base import Objective, defaults

NUM_ROTATIONS = 4
INPUTS = ("rgb", "dif")


def rotate_clips(clips):
  """clips [N, T, H, W, C] (H == W) -> ([4N, T, H, W, C], labels [4N]).

  Video-major (row 4 n + k is clip n rotated by k * 90 degrees), so each device's rows
  stay its own videos' clips (what per-device BatchNorm assumes).
  """
  n, _, h, w, _ = clips.shape
  if h != w:
    raise ValueError(f"rotation needs square frames, got {h}x{w}")
  rotated = jnp.stack([jnp.rot90(clips, k, axes=(2, 3)) for k in range(NUM_ROTATIONS)], axis=1)
  labels = jnp.tile(jnp.arange(NUM_ROTATIONS), n)
  return rotated.reshape(n * NUM_ROTATIONS, *clips.shape[1:]), labels


def rotation_loss(logits, labels):
  """Mean softmax cross-entropy and accuracy."""
  loss = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32),
                                                                  labels))
  return loss, {"rotation_accuracy": jnp.mean(jnp.argmax(logits, axis=-1) == labels)}


def fuse_probabilities(*probabilities):
  """Fusion of softmax scores already computed ([videos, classes] per model): their mean.

  Fits downstream evaluation's fusion hook ('cvrl.objectives.rotation:fuse_probabilities').
  """
  return sum(jnp.asarray(p, jnp.float32) for p in probabilities) / len(probabilities)


def fuse_scores(rgb_logits, dif_logits):
  """3DRotNet's Fusion: the mean of the RGB and DIF models' softmax scores, [..., classes]."""
  return (jax.nn.softmax(rgb_logits.astype(jnp.float32), axis=-1)
          + jax.nn.softmax(dif_logits.astype(jnp.float32), axis=-1)) / 2.0


class Rotation(Objective):
  """input: 'rgb' or 'dif' (the encoder's, see the module docstring); head_hidden: the
  rotation classifier's hidden units."""

  # pylint: disable-next=redefined-builtin
  def __init__(self, encoder, run, *, input: str = "rgb", head_hidden: int = 64, **base_fields):
    super().__init__(encoder, run, **base_fields)
    if input not in INPUTS:
      raise ValueError(f"config.objective.input must be one of {INPUTS}, got {input!r}")
    model_input = input_mode(encoder.fields)
    if model_input not in ("rgb", input):
      raise ValueError(f"config.model.input {model_input!r} contradicts "
                       f"config.objective.input {input!r}: set only the objective's")
    self.encoder_spec, self.head_hidden = encoder.with_input(input), int(head_hidden)

  def sampler(self):
    extra = self.encoder_spec.extra_frames
    return {"name": "single", "extra_frames": extra} if extra else {"name": "single"}

  def build(self, rngs):
    encoder = self.encoder_spec.build(rngs)
    head = RotationClassifier(encoder.num_features, self.head_hidden, NUM_ROTATIONS, rngs=rngs)
    return EncoderHead(encoder, head)

  def shown_views(self, video):
    rotated, _ = rotate_clips(video[:, 0])
    names = [f"rotated {90 * k}°" for k in range(NUM_ROTATIONS)]
    return rotated.reshape(video.shape[0], NUM_ROTATIONS, *rotated.shape[1:]), names

  def loss(self, model, batch, *, step, rng):
    video = batch["video"]  # [B, 1, T (+1), H, W, 3]
    if video.ndim != 6 or video.shape[1] != 1:
      raise ValueError(f"3DRotNet expects one clip per video, got video shape {video.shape}")
    rotated, labels = rotate_clips(video[:, 0])  # a DIF encoder differences them itself
    return rotation_loss(model.head(model.encoder(rotated)), labels)


def objective_config() -> dict:
  """config.objective fields for 3DRotNet (Jing & Tian, 2018)."""
  return defaults(Rotation, "rotation")


make = Rotation  # the method's entry point (cvrl.core.discovery)
