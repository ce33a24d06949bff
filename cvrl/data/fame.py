"""Foreground-background merging (FAME; Ding et al., "Motion-aware Contrastive Video
Representation Learning via Foreground-background Merging", CVPR 2022), on device.

A clip's moving foreground is pasted over another video's clip, so the two views of a
video no longer share their scene and matching them rewards what moves (sec. 3.2):
1. motion map: the mean over time of sum_c |x_t - x_{t+1}|, Gaussian-blurred (kernel
   int(0.1 S) // 2 * 2 + 1 taps at crop side S, sigma taps / 3, reflected borders) and
   min-max normalised over the frame;
2. colour prior (the paper's refinement of that map): the clip's mean frame in HSV,
   quantised to 10 x 10 x 10 bins of (s cos 2 pi h, s sin 2 pi h, v); a histogram of the
   bins of the `FG_SAMPLE` most moving pixels, and one (plus one in every bin) of the
   `BG_SAMPLE` least moving; each pixel's p_fg / (p_fg + p_bg), blurred and normalised;
3. the foreground: the round(beta * H * W) pixels highest on the prior (beta = 0.5, the
   authors' code), one binary mask for all frames;
4. the merged clip: mask * x + (1 - mask) * y, y the clip of the previous video in the
   batch (the same view), all T frames of it.
Hue is read as a fraction of a turn; the authors' code multiplies kornia's hue, already in
radians, by 2 pi again. The partner is a fixed shift of the batch instead of a random
permutation: batches are shuffled, so the partner is another random video, never the clip
itself, and the op stays deterministic under any sharding.

`foreground='median'` (ours, not the paper's; off by default) replaces steps 1-3 by the
classic background model of a still camera, the clip's temporal median: a pixel of frame t
is foreground where some channel of it is more than `threshold` (in [0, 1]) from the
clip's median frame, one mask per frame, and the merge pastes it over the partner's median
frame (its still scene, without its own moving object). The paper's one mask for the clip
keeps beta of the frame, half of the scene on small objects; this one keeps what moves,
and where the whole frame moves (a moving camera) it keeps the whole clip.

Where it fires is a per-clip flag of the photometric vector (`photometric.FAME`), drawn on
the host with the view's probability; the merge runs on the uint8-scaled clips before the
colour ops, so a merged clip gets one colour draw over foreground and background alike.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from cvrl.core.ops import temporal_median
from cvrl.data import hsv
from cvrl.data.kernels import gaussian_weights
from cvrl.data.photometric import FAME_BETA, FAME_FOREGROUNDS

BINS = 10  # per axis of the colour histogram
FG_SAMPLE, BG_SAMPLE = 0.5, 0.1  # fractions of the frame that sample the two histograms
_EPS = 1e-8


def kernel_taps(size: int) -> int:
  """Taps of the Gaussian that smooths the maps: int(0.1 * size), made odd."""
  return int(0.1 * size) // 2 * 2 + 1


def blur(m: jnp.ndarray) -> jnp.ndarray:
  """Separable Gaussian of maps [N, H, W] with reflected borders, sigma = taps / 3."""
  taps = kernel_taps(m.shape[-1])
  r = taps // 2
  if r == 0:
    return m
  w = gaussian_weights(jnp.float32(taps / 3), r)
  for axis in (1, 2):
    pad = [(0, 0)] * 3
    pad[axis] = (r, r)
    p = jnp.pad(m, pad, mode='reflect')
    n = m.shape[axis]
    m = sum(w[i] * jax.lax.slice_in_dim(p, i, i + n, axis=axis) for i in range(taps))
  return m


def min_max(m: jnp.ndarray) -> jnp.ndarray:
  """Each map [N, H, W] scaled to [0, 1] by its own minimum and maximum."""
  lo = jnp.min(m, axis=(1, 2), keepdims=True)
  return (m - lo) / (jnp.max(m, axis=(1, 2), keepdims=True) - lo + _EPS)


def motion_map(x: jnp.ndarray) -> jnp.ndarray:
  """[N, H, W] in [0, 1] from clips x [N, T, H, W, 3]: where the clip changes."""
  diff = jnp.sum(jnp.abs(x[:, :-1] - x[:, 1:]), axis=-1).mean(axis=1)
  return min_max(blur(diff))


def colour_bins(frame: jnp.ndarray) -> jnp.ndarray:
  """int [N, H * W] in [0, BINS ** 3): each pixel's bin of (s cos 2 pi h, s sin 2 pi h, v)."""
  h, s, v = hsv.rgb_to_hsv(frame)
  q = lambda a: jnp.round(a * (BINS - 1)).astype(jnp.int32)
  hx = q((s * jnp.cos(2 * jnp.pi * h) + 1) / 2)
  hy = q((s * jnp.sin(2 * jnp.pi * h) + 1) / 2)
  return (hx + BINS * hy + BINS * BINS * q(v)).reshape(frame.shape[0], -1)


def _histogram(bins: jnp.ndarray, scores: jnp.ndarray, count: int, prior: float):
  """Normalised histograms [N, BINS ** 3] of the bins of the `count` pixels highest on
  `scores` [N, P], each bin starting at `prior`."""
  _, idx = jax.lax.top_k(scores, count)
  picked = jnp.take_along_axis(bins, idx, axis=1)
  hist = jax.vmap(lambda b: jnp.full(BINS ** 3, prior).at[b].add(1.0))(picked)
  return hist / (jnp.sum(hist, axis=1, keepdims=True) + _EPS)


def colour_prior(x: jnp.ndarray) -> jnp.ndarray:
  """[N, H, W] in [0, 1]: how likely each pixel of clips x [N, T, H, W, 3] is foreground,
  by the colours of its mean frame among its most and least moving pixels."""
  n, _, height, width, _ = x.shape
  pixels = height * width
  motion = motion_map(x).reshape(n, pixels)
  bins = colour_bins(jnp.mean(x, axis=1))
  p_fg = _histogram(bins, motion, int(FG_SAMPLE * pixels), 0.0)
  p_bg = _histogram(bins, -motion, int(BG_SAMPLE * pixels), 1.0)
  at = lambda p: jnp.take_along_axis(p, bins, axis=1)
  prior = at(p_fg) / (at(p_bg) + at(p_fg))
  return min_max(blur(prior.reshape(n, height, width)))


def foreground(x: jnp.ndarray, beta: float = FAME_BETA) -> jnp.ndarray:
  """float [N, H, W] of 0 / 1: the round(beta * H * W) pixels of each clip x [N, T, H, W, 3]
  highest on its colour prior."""
  n, _, height, width, _ = x.shape
  pixels = height * width
  _, idx = jax.lax.top_k(colour_prior(x).reshape(n, pixels), int(round(beta * pixels)))
  mask = jax.vmap(lambda i: jnp.zeros(pixels).at[i].set(1.0))(idx)
  return mask.reshape(n, height, width)


def median_merge(x: jnp.ndarray, threshold: float) -> jnp.ndarray:
  """Clips x [B, ..., T, H, W, C] (time on axis -4) with what moves in each frame (a channel
  more than `threshold` from the clip's median frame) pasted over the previous video's
  median frame, the same view."""
  still = temporal_median(x)
  mask = (jnp.max(jnp.abs(x - still), axis=-1, keepdims=True) > threshold).astype(x.dtype)
  return mask * x + (1.0 - mask) * jnp.roll(still, 1, axis=0)


def merge(x: jnp.ndarray, flags: jnp.ndarray, beta: float = FAME_BETA,
          views: tuple[int, ...] | None = None, foreground_kind: str = 'colour',
          threshold: float = 0.1) -> jnp.ndarray:
  """x [B, V, T, H, W, 3] with each flagged clip's foreground (flags [B, V], 0 / 1) pasted
  over the same view of the previous video in the batch (foreground_kind 'colour', the
  paper's) or over its median frame ('median', module docstring). `views`: the views that
  can be flagged (None: all); the others are passed through without computing their masks."""
  b, v, t, height, width, c = x.shape
  if t < 2:
    raise ValueError(f'FAME needs clips of at least 2 frames for its motion map, got {t}')
  if foreground_kind not in FAME_FOREGROUNDS:
    raise ValueError(f'FAME foreground {foreground_kind!r}: choose from {FAME_FOREGROUNDS}')
  views = tuple(range(v)) if views is None else tuple(views)
  x = jnp.asarray(x)
  sub = x[:, views]
  if foreground_kind == 'median':
    merged = median_merge(sub, threshold)
  else:
    mask = foreground(sub.reshape(b * len(views), t, height, width, c), beta).reshape(
        b, len(views), 1, height, width, 1)
    merged = mask * sub + (1.0 - mask) * jnp.roll(sub, 1, axis=0)
  merged = jnp.where(flags[:, views, None, None, None, None] > 0.5, merged, sub)
  return x.at[:, views].set(merged)
