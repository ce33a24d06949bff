"""The 'single' sampler (its options: `make`; cvrl.data.sampling.make_sampler)."""
from __future__ import annotations

from cvrl.data.sampling import Sampler, clip_footprint, linspace_indices, random_clip_indices


def make(spec: dict, t: int, s: int, train: bool) -> Sampler:
  """One clip: random (train) or the middle one; 'extra_frames' k gives T + k frames;
  'strides' (train): its stride drawn from these."""
  total = t + int(spec.pop('extra_frames', 0))
  strides = tuple(spec.pop('strides', ()))
  if train:
    fn = lambda length, seed: random_clip_indices(length, 1, total, s, seed, strides)
  else:
    fn = lambda length, seed: linspace_indices(length, 1, total, s)
  return Sampler('single', 1, total, clip_footprint(total, s, strides), fn, train)
