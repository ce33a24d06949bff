"""CVRL (Qian et al., 2021): two temporally distant clips of a video are positives."""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from cvrl.models import build_encoder
from cvrl.models.heads import MLP
from cvrl.objectives import contrastive
from cvrl.objectives.base import Objective, register


class EncoderWithHead(nnx.Module):
  def __init__(self, encoder, head):
    self.encoder = encoder
    self.head = head


@register("cvrl")
class CVRL(Objective):

  def sampler(self):
    return {"name": "cvrl"}

  def build(self, rngs):
    cfg = self.config.objective
    encoder = build_encoder(self.config.model, rngs)
    head = MLP(encoder.num_features, cfg.head_hidden, cfg.head_out, num_hidden=cfg.head_layers,
               bn=True, bn_momentum=self.config.model.bn_momentum,
               bn_eps=self.config.model.bn_eps, rngs=rngs)
    return EncoderWithHead(encoder, head)

  def loss(self, model, batch, *, step, rng):
    video = batch["video"]  # [B, 2, T, H, W, 3]
    b, v = video.shape[:2]
    if v != 2:
      raise ValueError(f"CVRL needs 2 clips per video, got {v}")
    # Both views through the encoder in one call: BN sees all 2B clips.
    z = model.head(model.encoder(video.reshape(b * v, *video.shape[2:])))
    z = z.reshape(b, v, -1)
    return contrastive.info_nce_pair(z[:, 0], z[:, 1], self.config.objective.temperature)
