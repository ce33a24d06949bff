"""Pieces the rho-methods share (Feichtenhofer et al., CVPR 2021).

rho clips per video, started independently and uniformly (the data pipeline's 'rho'
sampler), each through the same network; every other clip of the same video is a
positive. Heads: SimCLR / MoCo 3 linear layers (2048 hidden, 128 out), SwAV the same
with BN, BYOL 2 layers (4096 hidden, 256 out, BN) plus a predictor.
"""
from __future__ import annotations

import jax
from flax import nnx

from cvrl.models.heads import MLP, l2_normalize
from cvrl.objectives.base import Objective


class Buffer(nnx.Variable):
  """Non-trained state a loss updates in place: MoCo's queue and its counters."""


# Momentum targets live under the attribute `target`; this keeps them out of training.
TARGET = "target"
ONLINE_PARAMS = nnx.All(nnx.Param, nnx.Not(nnx.PathContains(TARGET)))


class Network(nnx.Module):
  """encoder -> projection head (-> predictor): one branch of a rho-method."""

  def __init__(self, encoder, head, predictor=None):
    self.encoder = encoder
    self.head = head
    self.predictor = predictor

  def project(self, clips):
    """L2-normalised projections of clips [N, T, H, W, 3]."""
    return l2_normalize(self.head(self.encoder(clips)))


class RhoObjective(Objective):
  """What the rho-methods share: rho clips per video, one network of encoder and
  projection head, fields checked when made.

  head_layers counts the head's hidden [Dense -> BN? -> ReLU] layers (as CVRL's config
  does), then Dense(head_out): the papers' "3-layer MLP" is head_layers = 2, BYOL's
  "2-layer" projector head_layers = 1. bn_per_view: one network pass (one BatchNorm
  batch) per clip, as the reference.
  """

  def __init__(self, encoder, run, *, num_clips: int = 2, head_hidden: int = 2048,
               head_layers: int = 2, head_out: int = 128, head_bn: bool = False,
               bn_per_view: bool = True, **base_fields):
    super().__init__(encoder, run, **base_fields)
    if int(num_clips) < 2:
      raise ValueError(f"config.objective.num_clips (rho) must be >= 2, got {num_clips}")
    self.num_clips, self.bn_per_view = int(num_clips), bool(bn_per_view)
    self.head_hidden, self.head_layers = int(head_hidden), int(head_layers)
    self.head_out, self.head_bn = int(head_out), bool(head_bn)

  def sampler(self):
    return {"name": "rho", "num_clips": self.num_clips}

  def build_network(self, rngs: nnx.Rngs) -> Network:
    """The encoder and its projection head."""
    encoder = self.encoder_spec.build(rngs)
    head = MLP(encoder.num_features, self.head_hidden, self.head_out,
               num_hidden=self.head_layers, bn=self.head_bn, **self.encoder_spec.bn, rngs=rngs)
    return Network(encoder, head)

  def clips(self, batch) -> jax.Array:
    """batch['video'] [B, rho, T, H, W, 3], checked against the configured rho."""
    return clips_of(batch, self.num_clips)


def clips_of(batch, rho: int) -> jax.Array:
  """batch['video'] [B, rho, T, H, W, 3], checked against the configured rho."""
  video = batch["video"]
  if video.ndim != 6 or video.shape[1] != rho:
    raise ValueError(f"expected video [B, {rho}, T, H, W, 3] (rho = {rho} clips per video), "
                     f"got shape {video.shape}")
  return video
