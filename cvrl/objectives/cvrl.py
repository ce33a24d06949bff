"""CVRL (Qian et al., 2021): two temporally distant clips of a video are positives.

The two clips of every video go through the encoder and the projection head in ONE call
(2B clips, video-major: clip 2i and 2i+1 are video i), so BatchNorm normalises both views
with the same statistics; the InfoNCE then takes its negatives from the global batch.
`config.objective.loss_impl` picks the loss implementation: 'global' (global-batch math,
XLA partitions it) or 'shard_map' (explicit all_gather, local x global logits per device).
"""
from __future__ import annotations


from cvrl.models import build_encoder, extra_frames
from cvrl.models.heads import MLP, EncoderHead
from cvrl.objectives import contrastive
from cvrl.objectives.base import Objective


class CVRL(Objective):

  def __init__(self, config):
    super().__init__(config)
    impl = config.objective.get("loss_impl", "global")
    if impl not in contrastive.IMPLS:
      raise ValueError(f"config.objective.loss_impl must be one of {sorted(contrastive.IMPLS)}, "
                       f"got {impl!r}")
    self._info_nce = contrastive.IMPLS[impl]

  def sampler(self):
    """Two clips per video; T + 1 frames each for an encoder on frame differences
    (config.model.input='dif', as 3DRotNet's DIF input), which then never sees a static
    background."""
    extra = extra_frames(self.config.model)
    return {"name": "cvrl", "extra_frames": extra} if extra else {"name": "cvrl"}

  def build(self, rngs):
    cfg = self.config.objective
    encoder = build_encoder(self.config.model, rngs)
    head = MLP(encoder.num_features, cfg.head_hidden, cfg.head_out, num_hidden=cfg.head_layers,
               bn=True, bn_momentum=self.config.model.bn_momentum,
               bn_eps=self.config.model.bn_eps, rngs=rngs)
    return EncoderHead(encoder, head)

  def embed(self, model, video):
    """[B, V, T, H, W, 3] -> projections [B, V, D], all B*V clips in one encoder call."""
    b, v = video.shape[:2]
    z = model.head(model.encoder(video.reshape(b * v, *video.shape[2:])))
    return z.reshape(b, v, -1)

  def loss(self, model, batch, *, step, rng):
    video = batch["video"]  # [B, 2, T, H, W, 3]
    if video.shape[1] != 2:
      raise ValueError(f"CVRL needs 2 clips per video, got {video.shape[1]}")
    z = self.embed(model, video)
    return self._info_nce(z[:, 0], z[:, 1], self.config.objective.temperature)


make = CVRL  # the method's entry point (cvrl.core.discovery)
