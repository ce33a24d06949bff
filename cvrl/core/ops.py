"""Array ops shared by the encoder's input maps (cvrl.models.r3d) and the on-device
augmentations (cvrl.data.fame): one implementation, whichever layer calls it."""
from __future__ import annotations

import jax.numpy as jnp


def median_network(n: int) -> list[tuple[int, int]]:
  """The compare-exchanges (i, j), i < j, that put the middle values of n in place: Batcher's
  odd-even merge sort on the next power of two (the pads +inf, so what touches them goes),
  less what feeds no middle output (Knuth, TAOCP vol. 3, sec. 5.3.4)."""
  size, network = 1 << max(0, (n - 1).bit_length()), []
  p = 1
  while p < size:
    k = p
    while k >= 1:
      for j in range(k % p, size - k, 2 * k):
        for i in range(min(k, size - j - k)):
          if (i + j) // (2 * p) == (i + j + k) // (2 * p) and i + j + k < n:
            network.append((i + j, i + j + k))
      k //= 2
    p *= 2
  needed, kept = {(n - 1) // 2, n // 2}, []
  for a, b in reversed(network):
    if a in needed or b in needed:
      kept.append((a, b))
      needed |= {a, b}
  return kept[::-1]


def temporal_median(x):
  """The median over axis -4 of x [..., T, H, W, C] (the mean of the two middle values when
  T is even, as np.median): elementwise min and max over the T frames (median_network),
  which XLA runs several times faster on CPU than jnp.median's sort."""
  frames = [x[..., t, :, :, :] for t in range(x.shape[-4])]
  for a, b in median_network(len(frames)):
    frames[a], frames[b] = jnp.minimum(frames[a], frames[b]), jnp.maximum(frames[a], frames[b])
  t = len(frames)
  return ((frames[(t - 1) // 2] + frames[t // 2]) / 2)[..., None, :, :, :]
