"""Pieces the rho-methods share (Feichtenhofer et al., CVPR 2021).

rho clips per video, started independently and uniformly (the data pipeline's 'rho'
sampler), each through the same network; every other clip of the same video is a
positive. Heads: SimCLR / MoCo 3 linear layers (2048 hidden, 128 out), SwAV the same
with BN, BYOL 2 layers (4096 hidden, 256 out, BN) plus a predictor.
"""
from __future__ import annotations

import jax
import ml_collections
from flax import nnx

from cvrl.models import build_encoder
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


def num_clips(config: ml_collections.ConfigDict) -> int:
  rho = int(config.objective.num_clips)
  if rho < 2:
    raise ValueError(f"config.objective.num_clips (rho) must be >= 2, got {rho}")
  return rho


def sampler(config: ml_collections.ConfigDict) -> dict:
  return {"name": "rho", "num_clips": num_clips(config)}


class RhoObjective(Objective):
  """What the rho-methods share: rho clips per video, config checked when made."""

  def __init__(self, config):
    super().__init__(config)
    num_clips(config)  # rho >= 2
    self.validate()

  def sampler(self):
    return sampler(self.config)

  def validate(self) -> None:
    """The method's own config checks: one-line ValueErrors, raised when it is made."""


def projection_head(config: ml_collections.ConfigDict, in_features: int, rngs: nnx.Rngs) -> MLP:
  """config.objective.head_layers hidden [Dense -> BN? -> ReLU] layers, then Dense(head_out).

  head_layers counts hidden layers (as CVRL's config does): the papers' "3-layer MLP" is
  head_layers = 2, BYOL's "2-layer" projector head_layers = 1.
  """
  cfg = config.objective
  return MLP(in_features, int(cfg.head_hidden), int(cfg.head_out), num_hidden=int(cfg.head_layers),
             bn=bool(cfg.head_bn), bn_momentum=config.model.bn_momentum,
             bn_eps=config.model.bn_eps, rngs=rngs)


def build_network(config: ml_collections.ConfigDict, rngs: nnx.Rngs) -> Network:
  encoder = build_encoder(config.model, rngs)
  return Network(encoder, projection_head(config, encoder.num_features, rngs))


def clips_of(batch, rho: int) -> jax.Array:
  """batch['video'] [B, rho, T, H, W, 3], checked against the configured rho."""
  video = batch["video"]
  if video.ndim != 6 or video.shape[1] != rho:
    raise ValueError(f"expected video [B, {rho}, T, H, W, 3] (rho = {rho} clips per video), "
                     f"got shape {video.shape}")
  return video
