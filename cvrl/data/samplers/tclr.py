"""The 'tclr' sampler (its options: `make`; cvrl.data.sampling.make_sampler)."""
from __future__ import annotations

from cvrl.data.sampling import Sampler, tclr_indices, tf


def make(spec: dict, t: int, s: int, train: bool) -> Sampler:
  """TCLR's sparse clip and its dense clips, each under two augmentations."""
  del s, train
  sparse = int(spec.pop('sparse_stride', 4))
  dense = int(spec.pop('num_dense', 4))
  dense_stride = int(spec.pop('dense_stride', 1))
  if t % dense or (t // dense) * sparse != t * dense_stride:
    raise ValueError(f'tclr: {dense} dense clips of {t} frames at stride {dense_stride} '
                     f'do not tile a sparse clip at stride {sparse}')

  def tclr(length, seed):
    clips = tclr_indices(length, t, seed, sparse, dense, dense_stride)
    return tf.concat([clips, clips], axis=0)  # two augmentations of each clip
  return Sampler('tclr', 2 * (1 + dense), t, t * sparse, tclr, True)
