"""The 'multiview' sampler (its options: `make`; cvrl.data.sampling.make_sampler)."""
from __future__ import annotations

from cvrl.data.sampling import Sampler, linspace_indices


def make(spec: dict, t: int, s: int, train: bool) -> Sampler:
  """Evaluation: 'num_clips' evenly spaced clips x 'num_crops' (1 or 3) crops."""
  del train
  clips = int(spec.pop('num_clips', 10))
  crops = int(spec.pop('num_crops', 3))
  total = t + int(spec.pop('extra_frames', 0))  # as 'single': T + 1 for a DIF encoder
  if crops not in (1, 3):
    raise ValueError(f'multiview: num_crops must be 1 or 3, got {crops}')
  return Sampler('multiview', clips * crops, total, total * s,
                 lambda length, seed: linspace_indices(length, clips, total, s), False,
                 num_crops=crops)
