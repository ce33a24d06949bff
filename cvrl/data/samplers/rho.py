"""The 'rho' sampler (its options: `make`; cvrl.data.sampling.make_sampler)."""
from __future__ import annotations

from cvrl.data.sampling import Sampler, clip_footprint, random_clip_indices


def make(spec: dict, t: int, s: int, train: bool) -> Sampler:
  """'num_clips' clips with independent uniform starts; 'strides': a stride per clip
  drawn from these."""
  del train
  rho = int(spec.pop('num_clips', 2))
  strides = tuple(spec.pop('strides', ()))
  return Sampler('rho', rho, t, clip_footprint(t, s, strides),
                 lambda length, seed: random_clip_indices(length, rho, t, s, seed, strides), True)
