"""The 'cvrl' sampler (its options: `make`; cvrl.data.sampling.make_sampler)."""
from __future__ import annotations

from cvrl.data.sampling import Sampler, clip_footprint, cvrl_indices


def make(spec: dict, t: int, s: int, train: bool) -> Sampler:
  """CVRL's two clips, power-law start gap; 'extra_frames' k gives T + k frames each
  (as 'single': T + 1 for a DIF encoder); 'strides': a stride per clip drawn from these."""
  del train
  total = t + int(spec.pop('extra_frames', 0))
  strides = tuple(spec.pop('strides', ()))
  return Sampler('cvrl', 2, total, clip_footprint(total, s, strides),
                 lambda length, seed: cvrl_indices(length, total, s, seed, strides), True)
