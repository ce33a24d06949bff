"""3DRotNet (Jing & Tian, 2018): predict the rotation applied to every frame of a clip.

Each clip appears 4 times in the batch, all its frames rotated by 0, 90, 180 and 270
degrees (counter-clockwise, in the H x W plane); a 4-way classifier on the pooled encoder
features (cvrl.models.heads.RotationClassifier: fc 64 -> ReLU -> 4) predicts which one,
with softmax cross-entropy averaged over the 4B clips.

Input (`config.objective.input`): 'rgb' frames, or 'dif' frame differences
x[t+1] - x[t] of T + 1 frames (sampler {'name': 'single', 'extra_frames': 1}), values in
[-1, 1]. The paper's "Fusion" averages an RGB and a DIF model's softmax scores:
`fuse_scores`. A downstream job feeding a DIF model uses `model_input` on its clips too.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from cvrl.models import build_encoder
from cvrl.models.heads import RotationClassifier
from cvrl.objectives.base import Objective, register

NUM_ROTATIONS = 4
INPUTS = ("rgb", "dif")



def objective_config() -> dict:
  """config.objective fields for 3DRotNet (methods.md section 4)."""
  return dict(name="rotation", input="rgb", head_hidden=64)

def frame_difference(clips):
  """clips [..., T + 1, H, W, C] -> [..., T, H, W, C]: x[t + 1] - x[t]."""
  return clips[..., 1:, :, :, :] - clips[..., :-1, :, :, :]


def model_input(clips, mode: str):
  """What a 3DRotNet encoder of input `mode` sees: the clips themselves or their differences."""
  if mode == "rgb":
    return clips
  if mode == "dif":
    return frame_difference(clips)
  raise ValueError(f"config.objective.input must be one of {INPUTS}, got {mode!r}")


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


def encoder_input(config):
  """(extra frames a clip needs, clips -> encoder input) for an encoder pretrained with
  `config`: (1, frame differences) for a DIF 3DRotNet, else (0, identity). Downstream jobs
  apply it to their clips so a DIF model sees differences at evaluation too."""
  if config.objective.name == "rotation" and config.objective.get("input", "rgb") == "dif":
    return 1, frame_difference
  return 0, lambda clips: clips


def fuse_scores(rgb_logits, dif_logits):
  """3DRotNet's Fusion: the mean of the RGB and DIF models' softmax scores, [..., classes]."""
  return (jax.nn.softmax(rgb_logits.astype(jnp.float32), axis=-1)
          + jax.nn.softmax(dif_logits.astype(jnp.float32), axis=-1)) / 2.0


class RotNetModel(nnx.Module):

  def __init__(self, encoder, head):
    self.encoder = encoder
    self.head = head


@register("rotation")
class Rotation(Objective):

  def __init__(self, config):
    super().__init__(config)
    self.validate()

  def validate(self) -> None:
    """Config errors as one-line ValueErrors, raised when the objective is made."""
    mode = self.config.objective.input
    if mode not in INPUTS:
      raise ValueError(f"config.objective.input must be one of {INPUTS}, got {mode!r}")

  def sampler(self):
    if self.config.objective.input == "dif":
      return {"name": "single", "extra_frames": 1}
    return {"name": "single"}

  def build(self, rngs):
    encoder = build_encoder(self.config.model, rngs)
    head = RotationClassifier(encoder.num_features, int(self.config.objective.head_hidden),
                              NUM_ROTATIONS, rngs=rngs)
    return RotNetModel(encoder, head)

  def loss(self, model, batch, *, step, rng):
    video = batch["video"]  # [B, 1, T (+1), H, W, 3]
    if video.ndim != 6 or video.shape[1] != 1:
      raise ValueError(f"3DRotNet expects one clip per video, got video shape {video.shape}")
    clips = model_input(video[:, 0], self.config.objective.input)
    rotated, labels = rotate_clips(clips)
    return rotation_loss(model.head(model.encoder(rotated)), labels)
