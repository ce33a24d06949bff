"""CVRL (Qian et al., 2021): two temporally distant clips of a video are positives.

The two clips of every video go through the encoder and the projection head in ONE call
(2B clips, video-major: clip 2i and 2i+1 are video i), so BatchNorm normalises both views
with the same statistics; the InfoNCE then takes its negatives from the global batch.
`loss_impl` picks the loss implementation: 'global' (global-batch math,
XLA partitions it) or 'shard_map' (explicit all_gather, local x global logits per device).
"""
from __future__ import annotations

from cvrl.models.heads import MLP, EncoderHead
from cvrl.objectives import contrastive
from cvrl.objectives.base import Objective


class CVRL(Objective):
  """temperature: the InfoNCE's; the projection head: head_layers hidden layers of
  head_hidden (BN, ReLU), then head_out; loss_impl: 'global' or 'shard_map'."""

  def __init__(self, encoder, run, *, temperature: float = 0.1, head_hidden: int = 2048,
               head_layers: int = 3, head_out: int = 128, loss_impl: str = "global",
               **base_fields):
    super().__init__(encoder, run, **base_fields)
    if loss_impl not in contrastive.IMPLS:
      raise ValueError(f"config.objective.loss_impl must be one of {sorted(contrastive.IMPLS)}, "
                       f"got {loss_impl!r}")
    self._info_nce = contrastive.IMPLS[loss_impl]
    self.temperature = temperature
    self.head_hidden, self.head_layers, self.head_out = head_hidden, head_layers, head_out

  def sampler(self):
    """Two clips per video; T + 1 frames each for an encoder on frame differences
    (config.model.input='dif', as 3DRotNet's DIF input), which then never sees a static
    background."""
    extra = self.encoder_spec.extra_frames
    return {"name": "cvrl", "extra_frames": extra} if extra else {"name": "cvrl"}

  def build(self, rngs):
    encoder = self.encoder_spec.build(rngs)
    head = MLP(encoder.num_features, self.head_hidden, self.head_out,
               num_hidden=self.head_layers, bn=True, **self.encoder_spec.bn, rngs=rngs)
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
    return self._info_nce(z[:, 0], z[:, 1], self.temperature)


make = CVRL  # the method's entry point (cvrl.core.discovery)
