"""Accelerator side of the input pipeline: uint8 clips + parameters -> float32 views.

The host pipeline (data.photometric='device', the default) ships `video` as uint8
[B, V, T, H, W, 3] and, for training views, `photometric` [B, V, P] (one vector per
clip) or [B, V, T, P] (per frame, the inconsistent ablation), laid out as in
`photometric.py`. `finish_batch` turns that into the float32 [0, 1] video every model
expects, applying the colour jitter (brightness, contrast, saturation, hue in the drawn
order, clip to [0, 1] after each), TCLR's gray-gamma / colour-channel drop, the Gaussian
blur, grayscale, solarization, TCLR's random erasing and background erasing with the same
math as the host path (`augmentation.Photometric`, i.e. the reference CVRL and TCLR ops). It is pure
per-example math, so it runs inside a jitted step on a batch sharded over any mesh. Random choices are selects, not branches: every op is computed for every
clip and kept where its flag is set (cheap next to the encoder on an accelerator).

Call it first in every job's step. It is safe on any batch: eval batches (uint8, no
parameters) are just scaled by 1/255, float32 video without parameters (the host path)
passes through unchanged.
"""
from __future__ import annotations

import math
from typing import Callable

import jax.numpy as jnp

from cvrl.data import fame
from cvrl.data import hsv
from cvrl.data import photometric as P
from cvrl.data.kernels import gaussian_weights

PHOTOMETRIC_KEY = 'photometric'


def finish_batch(batch: dict, data_config=None) -> dict:
  """The batch with `video` float32 in [0, 1] and its photometric parameters applied.

  data_config: `config.data` (optional); its augmentation.blur_truncate_sigmas and
  blur_sigma_range bound the blur taps as on the host, and TCLR's extras are computed only
  where their probabilities are > 0. Without it the full kernel is used and every op is
  computed. The `photometric` entry is consumed (absent from the result).
  """
  params = batch.get(PHOTOMETRIC_KEY)
  video = batch['video']
  if params is None and video.dtype != jnp.uint8:
    return batch
  out = {k: v for k, v in batch.items() if k != PHOTOMETRIC_KEY}
  x = to_unit(video)
  if params is not None and merging(data_config):
    aug = data_config.augmentation
    x = fame.merge(x, _clip_params(params, x.ndim)[..., P.FAME], float(aug.fame_beta),
                   merged_views(data_config, x.shape[1]), aug.fame_foreground,
                   float(aug.fame_threshold))
  if params is not None:
    x = apply_photometric(x, params, blur_taps(data_config, x.shape[-3]),
                          extra_ops(data_config), background_erasing(data_config))
  out['video'] = x
  return out


def make_finish(data_config) -> Callable[[dict], dict]:
  """finish_batch bound to a data config (for a jitted step's closure)."""
  return lambda batch: finish_batch(batch, data_config)


def to_unit(video) -> jnp.ndarray:
  """uint8 [0, 255] -> float32 [0, 1] (float input is returned as float32)."""
  if video.dtype == jnp.uint8:
    return video.astype(jnp.float32) * (1.0 / 255.0)
  return jnp.asarray(video, jnp.float32)


def blur_taps(data_config, crop_size: int) -> int:
  """Taps per side the blur applies: the kernel radius, or fewer when truncated as the host."""
  radius = P.blur_radius(crop_size)
  if data_config is None:
    return radius
  aug = data_config.augmentation
  truncate = float(aug.blur_truncate_sigmas)
  if truncate <= 0:
    return radius
  return min(radius, int(math.ceil(truncate * float(aug.blur_sigma_range[1]))))


def extra_ops(data_config) -> tuple[bool, bool]:
  """(gray-gamma / channel drop, erasing): whether TCLR's extras can fire under the config
  (both when there is none). Off, their selects are left out of the step (same pixels)."""
  if data_config is None:
    return True, True
  aug = data_config.augmentation
  colour = float(aug.gray_gamma_prob) > 0 or float(aug.channel_drop_prob) > 0
  return colour, float(aug.erase_prob) > 0


def background_erasing(data_config) -> bool:
  """Whether background erasing can fire under the config (True when there is none)."""
  if data_config is None:
    return True
  return max(tuple(data_config.augmentation.background_erase_probs) or (0.0,)) > 0


def merging(data_config) -> bool:
  """Whether FAME can fire under the config (False when there is none: it needs the batch)."""
  if data_config is None:
    return False
  return max(tuple(data_config.augmentation.fame_probs) or (0.0,)) > 0


def merged_views(data_config, num_views: int) -> tuple[int, ...]:
  """The views FAME can fire on: those whose entry of fame_probs (as blur_probs: view v
  uses entry min(v, len - 1)) is > 0."""
  probs = tuple(data_config.augmentation.fame_probs)
  return tuple(v for v in range(num_views) if probs[min(v, len(probs) - 1)] > 0)


def _clip_params(params, video_ndim: int):
  """Per-clip params [..., P] from params per clip or per frame ([..., T, P] for a video of
  `video_ndim` = params.ndim + 2 axes: a frame's draw, the first's)."""
  return params[..., 0, :] if params.ndim == video_ndim - 2 else params


def apply_photometric(x, params, taps: int | None = None,
                      extras: tuple[bool, bool] = (True, True),
                      background: bool = True) -> jnp.ndarray:
  """Photometric ops on x [B, V, T, H, W, 3] in [0, 1] from params [B, V, P] or [B, V, T, P].

  extras: (gray-gamma / channel drop, erasing) computed or left out (see `extra_ops`);
  background: background erasing computed or left out (`background_erasing`).
  """
  per_frame = params.ndim == x.ndim - 2
  if not per_frame and params.ndim != x.ndim - 3:
    raise ValueError(f'photometric params {params.shape} do not match video {x.shape}')
  params = jnp.asarray(params, jnp.float32)
  # One value per clip (or frame), broadcast over the pixels it applies to.
  if per_frame:
    get = lambda i: params[..., i][..., None, None, None]
    mean_axes = (-3, -2)
  else:
    get = lambda i: params[..., i][..., None, None, None, None]
    mean_axes = (-4, -3, -2)
  on = lambda i: get(i) > 0.5
  radius = P.blur_radius(x.shape[-3])
  taps = radius if taps is None else min(int(taps), radius)

  jittered = x
  for step in range(4):
    jittered = _jitter_step(jittered, get(P.ORDER.start + step), get, mean_axes)
  x = jnp.where(on(P.JITTER), jittered, x)
  colour_extras, erase = extras
  if colour_extras:
    # TCLR's two arms of one draw (at most one flag set): grayscale then gamma, or one
    # colour channel to 0.
    gray = grayscale(x)
    gray = jnp.where(on(P.GAMMA), jnp.power(gray, get(P.GAMMA_EXP)), gray)
    x = jnp.where(on(P.GRAY_GAMMA), gray, x)
    dropped = jnp.arange(3, dtype=jnp.float32) == get(P.CHANNEL)
    x = jnp.where(jnp.logical_and(on(P.CHANNEL_DROP), dropped), 0.0, x)
  if radius > 0 and taps > 0:
    x = gaussian_blur(x, get(P.SIGMA), on(P.BLUR), radius, taps)
  gray = grayscale(x)
  x = jnp.where(on(P.GRAYSCALE), gray, x)
  x = jnp.where(jnp.logical_and(on(P.SOLARIZE), x >= 0.5), 1.0 - x, x)
  x = jnp.clip(x, 0.0, 1.0)
  if erase:
    x = jnp.where(jnp.logical_and(on(P.ERASE), erase_mask(get, x.shape[-3], x.shape[-2])), 0.0, x)
  if background:
    x = background_erase(x, _clip_params(params, x.ndim))
  return x


def background_erase(x, params):
  """x [B, V, T, H, W, 3] with each clip's static frame mixed in (params [B, V, P]):
  (1 - lambda) x_t + lambda x_k, lambda = BG_WEIGHT where BG_ERASE is set (else 0),
  k = min(floor(BG_FRAME * T), T - 1), as `augmentation.background_erase`."""
  num = x.shape[-4]
  k = jnp.minimum(jnp.floor(params[..., P.BG_FRAME] * num).astype(jnp.int32), num - 1)
  static = jnp.take_along_axis(x, k[..., None, None, None, None], axis=-4)
  weight = (params[..., P.BG_ERASE] * params[..., P.BG_WEIGHT])[..., None, None, None, None]
  return (1.0 - weight) * x + weight * static


def erase_mask(get, height: int, width: int):
  """True inside each clip's (frame's) erase box, rows [top, top + h), columns [left, left + w)
  (clipped at the edge), broadcasting against the video; `get(i)` reads parameter i."""
  box = P.ERASE_BOX.start
  top, left, h, w = (get(box + i) for i in range(4))
  rows = jnp.arange(height, dtype=jnp.float32)[:, None, None]
  cols = jnp.arange(width, dtype=jnp.float32)[:, None]
  return ((rows >= top) & (rows < top + h)) & ((cols >= left) & (cols < left + w))


def _jitter_step(x, op, get, mean_axes):
  """One step of the random-order jitter: the op chosen per clip, then clip to [0, 1]."""
  # Brightness and contrast: (x - m) * k + m with m = 0 for brightness.
  mean = jnp.mean(x, axis=mean_axes, keepdims=True)
  is_contrast = op == P.OP_CONTRAST
  m = jnp.where(is_contrast, mean, 0.0)
  k = jnp.where(is_contrast, get(P.CONTRAST), get(P.BRIGHTNESS))
  linear = (x - m) * k + m
  # Saturation and hue: one HSV round trip, the chosen channel changed. h, s, v have no
  # channel axis, so the per-clip values drop their last singleton axis.
  h, s, v = hsv.rgb_to_hsv(x)
  plane = lambda y: y[..., 0]
  s = jnp.where(plane(op) == P.OP_SATURATION, jnp.clip(s * plane(get(P.SATURATION)), 0.0, 1.0), s)
  shifted = jnp.fmod(h + plane(get(P.HUE)), 1.0)
  shifted = jnp.where(shifted < 0, shifted + 1.0, shifted)
  h = jnp.where(plane(op) == P.OP_HUE, shifted, h)
  rgb = hsv.hsv_to_rgb(h, s, v)
  return jnp.clip(jnp.where(op < P.OP_SATURATION, linear, rgb), 0.0, 1.0)


def grayscale(x):
  """tf.image.rgb_to_grayscale, repeated over the 3 channels."""
  wr, wg, wb = P.GRAY_WEIGHTS
  g = x[..., 0] * wr + x[..., 1] * wg + x[..., 2] * wb
  return jnp.broadcast_to(g[..., None], x.shape)


def gaussian_blur(x, sigma, apply, radius: int, taps: int):
  """Separable blur of x [..., H, W, 3] with zero padding (the reference's 'SAME' conv).

  sigma and apply broadcast against x with singleton pixel axes; where `apply` is off the
  kernel is a unit impulse, so the pixels come back exactly. Only the centre +- `taps`
  weights of the (2 * radius + 1)-tap kernel are used (all of them when taps == radius).
  """
  w = gaussian_weights(jnp.where(apply, sigma, 1.0), radius)
  impulse = (jnp.arange(-radius, radius + 1) == 0).astype(jnp.float32)
  w = jnp.where(apply[..., None], w, impulse)
  tap = lambda d: w[..., radius + d]
  return _shift_add(_shift_add(x, tap, taps, axis=x.ndim - 3), tap, taps, axis=x.ndim - 2)


def _shift_add(x, tap, taps: int, axis: int):
  """Zero-padded symmetric 1-D correlation along `axis`: sum_d w_d (x[i+d] + x[i-d])."""
  n = x.shape[axis]
  pad = [(0, 0)] * x.ndim
  pad[axis] = (taps, taps)
  xp = jnp.pad(x, pad)
  window = lambda offset: _slice(xp, taps + offset, n, axis)
  y = tap(0) * x
  for d in range(1, taps + 1):
    y = y + tap(d) * (window(d) + window(-d))
  return y


def _slice(x, start: int, size: int, axis: int):
  index = [slice(None)] * x.ndim
  index[axis] = slice(start, start + size)
  return x[tuple(index)]
