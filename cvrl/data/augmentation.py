"""Spatial augmentation of clips with ONE random draw per clip (methods.md section 1).

A clip arrives as its sampled JPEG strings [T] (or decoded uint8 frames [T, H, W, 3]).
All of its random parameters come from one stateless draw: a uniform vector for flip,
colour jitter, grayscale, blur and solarization, plus the crop box from
`stateless_sample_distorted_bounding_box` on the same clip seed. The crop box is drawn
on the stored frame size and only that window is decoded (`decode_and_crop_jpeg`), then
bilinearly resized to the output size. The colour/blur stage runs at output resolution
as one XLA-fused function (blur as separable shift-and-add with zero padding, the
reference's 'SAME' depthwise convolution). Parameters match the reference CVRL code:
brightness multiplicative, contrast around the clip's per-channel mean, saturation and
hue as tf.image.adjust_*, the four in random order with a clip to [0, 1] after each.
Grayscale is applied after the blur rather than before: both are linear and act the
same on every pixel/channel, so the order does not change the result.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import tensorflow as tf

# Positions in the per-clip uniform draw.
_FLIP, _JITTER, _BRIGHT, _CONTRAST, _SAT, _HUE = 0, 1, 2, 3, 4, 5
_ORDER = slice(6, 10)
_GRAY, _BLUR, _SIGMA, _SOLAR = 10, 11, 12, 13
NUM_DRAWS = 14


@dataclasses.dataclass(frozen=True)
class AugmentSpec:
  """Static augmentation settings for one pipeline (from config.augmentation)."""
  area_range: tuple = (0.3, 1.0)
  aspect_ratio_range: tuple = (0.5, 2.0)
  min_object_covered: float = 0.1
  max_attempts: int = 100
  flip_prob: float = 0.5
  color_jitter_prob: float = 0.8
  brightness: float = 0.8
  contrast: float = 0.8
  saturation: float = 0.8
  hue: float = 0.2
  color_random_order: bool = True
  grayscale_prob: float = 0.2
  blur_probs: tuple = (1.0, 0.1)
  blur_sigma_range: tuple = (0.1, 2.0)
  blur_truncate_sigmas: float = 4.0
  solarize_probs: tuple = (0.0, 0.2)
  consistent: bool = True

  @classmethod
  def from_config(cls, aug) -> 'AugmentSpec':
    fields = {f.name for f in dataclasses.fields(cls)}
    values = {k: aug[k] for k in fields if k in aug}
    for k, v in values.items():
      if isinstance(v, list):
        values[k] = tuple(v)
    return cls(**values)

  def blur_prob(self, view: int) -> float:
    return float(self.blur_probs[min(view, len(self.blur_probs) - 1)]) if self.blur_probs else 0.0

  def solarize_prob(self, view: int) -> float:
    return (float(self.solarize_probs[min(view, len(self.solarize_probs) - 1)])
            if self.solarize_probs else 0.0)


def fold_seed(seed, *data: int | tf.Tensor) -> tf.Tensor:
  """Derive a stateless seed [2] from a seed and integers (example id, view, epoch ...)."""
  seed = tf.cast(seed, tf.int64)
  for d in data:
    seed = tf.random.experimental.stateless_fold_in(seed, tf.cast(d, tf.int64))
  return seed


# ----------------------------------------------------------------------------- decoding

def frame_shape(frames) -> tf.Tensor:
  """[H, W, 3] of the stored frames, read from the first JPEG header (no decode)."""
  if frames.dtype == tf.string:
    return tf.io.extract_jpeg_shape(frames[0], output_type=tf.int32)
  return tf.shape(frames)[1:]


def decode_frames(frames, window=None, dct_method: str = '') -> tf.Tensor:
  """uint8 [T, h, w, 3]: only the crop `window` [y, x, h, w] of each frame, or all of it."""
  if frames.dtype != tf.string:
    if window is None:
      return frames
    return frames[:, window[0]:window[0] + window[2], window[1]:window[1] + window[3]]
  if window is None:
    fn = lambda s: tf.io.decode_jpeg(s, channels=3, dct_method=dct_method)
  else:
    fn = lambda s: tf.io.decode_and_crop_jpeg(s, window, channels=3, dct_method=dct_method)
  return tf.map_fn(fn, frames, fn_output_signature=tf.TensorSpec([None, None, 3], tf.uint8))


def crop_window(seed, shape, spec: AugmentSpec) -> tf.Tensor:
  """Random resized crop box [y, x, h, w] on a frame of `shape` [H, W, 3] (one per clip)."""
  begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
      image_size=shape,
      bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]),
      seed=seed,
      min_object_covered=spec.min_object_covered,
      aspect_ratio_range=spec.aspect_ratio_range,
      area_range=spec.area_range,
      max_attempts=spec.max_attempts,
      use_image_if_no_bounding_boxes=True)
  return tf.stack([begin[0], begin[1], size[0], size[1]])


# ------------------------------------------------------------------------ photometric ops

def gaussian_weights(sigma, radius: int) -> tf.Tensor:
  """Normalised 1-D Gaussian of 2 * radius + 1 taps (the reference kernel)."""
  x = tf.range(-radius, radius + 1, dtype=tf.float32)
  w = tf.exp(-tf.square(x) / (2.0 * tf.square(sigma)))
  return w / tf.reduce_sum(w)


def _shift_add(x, w, radius: int, used: int, axis: int) -> tf.Tensor:
  """Zero-padded 1-D correlation along `axis` with the centre +- `used` taps of w."""
  n = x.shape[axis]
  pad = [[0, 0]] * x.shape.rank
  pad[axis] = [used, used]
  xp = tf.pad(x, pad)

  def window(offset):
    begin = [0] * x.shape.rank
    size = [-1] * x.shape.rank
    begin[axis], size[axis] = used + offset, n
    return tf.slice(xp, begin, size)

  y = w[radius] * x
  for d in range(1, used + 1):
    y += w[radius + d] * (window(d) + window(-d))
  return y


def gaussian_blur(x, sigma, kernel_size: int, truncate_sigmas: float = 0.0,
                  max_sigma: float = 2.0) -> tf.Tensor:
  """Separable Gaussian blur of [T, H, W, C] with zero padding (reference 'SAME').

  kernel_size follows the reference: radius = kernel_size // 2, 2 * radius + 1 taps.
  With truncate_sigmas > 0 only taps within truncate_sigmas * sigma (rounded up to an
  even radius bucket) are applied; the weights stay those of the full kernel, so the
  result differs from the full kernel by at most the dropped weight (< 7e-5 at 4 sigma).
  """
  radius = int(kernel_size) // 2
  if radius == 0:
    return x
  w = gaussian_weights(sigma, radius)
  if truncate_sigmas <= 0:
    buckets = [radius]
  else:
    top = min(radius, int(math.ceil(truncate_sigmas * max_sigma)))
    buckets = sorted({min(r, top) for r in range(2, top + 2, 2)})
  blur = lambda used: _shift_add(_shift_add(x, w, radius, used, 1), w, radius, used, 2)
  if len(buckets) == 1:
    return blur(buckets[0])
  need = tf.cast(tf.math.ceil(truncate_sigmas * sigma), tf.int32)
  branch = tf.reduce_sum(tf.cast(tf.constant(buckets[:-1]) < need, tf.int32))
  return tf.switch_case(branch, [lambda u=u: blur(u) for u in buckets])


def adjust_contrast_clip(x, factor) -> tf.Tensor:
  """Contrast around the per-channel mean of the whole clip (the reference's big image)."""
  mean = tf.reduce_mean(x, axis=[0, 1, 2], keepdims=True)
  return (x - mean) * factor + mean


def to_grayscale(x) -> tf.Tensor:
  return tf.tile(tf.image.rgb_to_grayscale(x), [1, 1, 1, 3])


def solarize(x) -> tf.Tensor:
  return tf.where(x < 0.5, x, 1.0 - x)


class Photometric:
  """Colour jitter, grayscale, blur and solarization of a resized clip, from its draw `u`.

  Random choices are graph-level conditionals (free when not taken); each operation is
  one XLA-fused kernel over the clip (`jit=True`), so a taken branch costs one pass.
  """

  def __init__(self, spec: AugmentSpec, kernel_size: int, jit: bool = True):
    self.spec = spec
    self.radius = int(kernel_size) // 2
    compile_ = lambda fn: tf.function(fn, jit_compile=jit, reduce_retracing=True)
    clip01 = lambda y: tf.clip_by_value(y, 0.0, 1.0)
    self._ops = [
        compile_(lambda y, b: clip01(y * b)),
        compile_(lambda y, c: clip01(adjust_contrast_clip(y, c))),
        compile_(lambda y, s: clip01(tf.image.adjust_saturation(y, s))),
        compile_(lambda y, h: clip01(tf.image.adjust_hue(y, h))),
    ]
    self._scale = compile_(lambda y: y * (1.0 / 255.0))
    if spec.blur_truncate_sigmas <= 0 or self.radius == 0:
      self._buckets = [self.radius]
    else:
      top = min(self.radius, int(math.ceil(spec.blur_truncate_sigmas * spec.blur_sigma_range[1])))
      self._buckets = sorted({min(r, top) for r in range(2, top + 2, 2)})
    self._blurs = [compile_(lambda y, sigma, used=used: _blur_taps(y, sigma, self.radius, used))
                   for used in self._buckets]
    self._finish = compile_(
        lambda y, gray, sol: tf.clip_by_value(
            solarize_where(tf.where(gray, to_grayscale(y), y), sol), 0.0, 1.0))

  def __call__(self, x, u, blur_prob: float, solarize_prob: float) -> tf.Tensor:
    """x: [T, S, S, 3] float32 in [0, 255] -> [0, 1]."""
    spec = self.spec
    x = self._scale(x)
    if spec.color_jitter_prob > 0:
      x = tf.cond(u[_JITTER] < spec.color_jitter_prob, lambda: self._jitter(x, u), lambda: x)
    if blur_prob > 0 and self.radius > 0:
      lo, hi = spec.blur_sigma_range
      sigma = lo + (hi - lo) * u[_SIGMA]
      x = tf.cond(u[_BLUR] < blur_prob, lambda: self._blur(x, sigma), lambda: x)
    return self._finish(x, u[_GRAY] < spec.grayscale_prob, u[_SOLAR] < solarize_prob)

  def _jitter(self, x, u):
    spec = self.spec
    between = lambda v, lo, hi: lo + (hi - lo) * v
    params = [between(u[_BRIGHT], max(0.0, 1.0 - spec.brightness), 1.0 + spec.brightness),
              between(u[_CONTRAST], 1.0 - spec.contrast, 1.0 + spec.contrast),
              between(u[_SAT], 1.0 - spec.saturation, 1.0 + spec.saturation),
              between(u[_HUE], -spec.hue, spec.hue)]
    strengths = [spec.brightness, spec.contrast, spec.saturation, spec.hue]
    branches = [(lambda op=op, p=p: (lambda y: op(y, p))) if strength else
                (lambda: (lambda y: y)) for op, p, strength in zip(self._ops, params, strengths)]
    branches = [make() for make in branches]
    if not spec.color_random_order:
      for fn in branches:
        x = fn(x)
      return x
    order = tf.argsort(u[_ORDER])
    for i in range(4):
      x = tf.switch_case(order[i], [lambda fn=fn, y=x: fn(y) for fn in branches])
    return x

  def _blur(self, x, sigma):
    if len(self._blurs) == 1:
      return self._blurs[0](x, sigma)
    need = tf.cast(tf.math.ceil(self.spec.blur_truncate_sigmas * sigma), tf.int32)
    branch = tf.reduce_sum(tf.cast(tf.constant(self._buckets[:-1]) < need, tf.int32))
    return tf.switch_case(branch, [lambda fn=fn: fn(x, sigma) for fn in self._blurs])


def _blur_taps(x, sigma, radius: int, used: int) -> tf.Tensor:
  w = gaussian_weights(sigma, radius)
  return _shift_add(_shift_add(x, w, radius, used, 1), w, radius, used, 2)


def solarize_where(x, apply) -> tf.Tensor:
  return tf.where(tf.logical_and(apply, x >= 0.5), 1.0 - x, x)


class ClipAugmenter:
  """Train-time augmentation of one clip (or each frame, for the ablation)."""

  def __init__(self, spec: AugmentSpec, out_size: int, jit: bool = True, dct_method: str = ''):
    self.spec = spec
    self.out_size = out_size
    self.dct_method = dct_method
    self.photometric = Photometric(spec, out_size // 10, jit)

  def __call__(self, frames, seed, view: int) -> tf.Tensor:
    """float32 [T, S, S, 3] in [0, 1] from frames [T] (JPEG) or [T, H, W, 3] uint8."""
    if self.spec.consistent:
      return self._clip(frames, seed, view)
    num = tf.shape(frames)[0]
    per_frame = lambda t: self._clip(frames[t:t + 1], fold_seed(seed, t), view)[0]
    return tf.map_fn(per_frame, tf.range(num), fn_output_signature=tf.TensorSpec(
        [self.out_size, self.out_size, 3], tf.float32))

  def _clip(self, frames, seed, view: int) -> tf.Tensor:
    u = tf.random.stateless_uniform([NUM_DRAWS], seed)
    window = crop_window(fold_seed(seed, 1), frame_shape(frames), self.spec)
    crop = decode_frames(frames, window, self.dct_method)
    if self.spec.flip_prob > 0:  # on the small uint8 crop: bilinear resize commutes with it
      crop = tf.cond(u[_FLIP] < self.spec.flip_prob, lambda: tf.reverse(crop, axis=[2]),
                     lambda: crop)
    x = tf.image.resize(crop, [self.out_size, self.out_size], method='bilinear')
    x = tf.ensure_shape(x, [None, self.out_size, self.out_size, 3])
    return self.photometric(x, u, self.spec.blur_prob(view), self.spec.solarize_prob(view))


def resize_shorter_side(frames, size: int) -> tf.Tensor:
  """Resize so min(H, W) == size (no-op when it already is), as the reference eval."""
  shape = tf.shape(frames)
  h, w = shape[1], shape[2]
  out_h = tf.maximum(size, (h * size) // w)
  out_w = tf.maximum(size, (w * size) // h)
  same = tf.logical_and(tf.equal(h, out_h), tf.equal(w, out_w))
  return tf.cond(same, lambda: tf.cast(frames, tf.float32),
                 lambda: tf.image.resize(frames, tf.stack([out_h, out_w]), method='bilinear'))


def eval_crops(frames, crop: int, num_crops: int) -> tf.Tensor:
  """[num_crops, T, crop, crop, 3]: centre crop, or 3 crops (start, centre, end) of the long side."""
  shape = tf.shape(frames)
  h, w = shape[1], shape[2]
  if num_crops == 1:
    offsets = [((h - crop) // 2, (w - crop) // 2)]
  else:
    long_h = h >= w
    mid_h = tf.cast(tf.round(tf.cast(h, tf.float32) / 2 - crop // 2), tf.int32)
    mid_w = tf.cast(tf.round(tf.cast(w, tf.float32) / 2 - crop // 2), tf.int32)
    offsets = [(0, 0),
               (tf.where(long_h, mid_h, 0), tf.where(long_h, 0, mid_w)),
               (tf.where(long_h, h - crop, 0), tf.where(long_h, 0, w - crop))]
  return tf.stack([frames[:, y:y + crop, x:x + crop] for y, x in offsets])


def eval_views(frames, resize: int, crop: int, num_crops: int, dct_method: str = '') -> tf.Tensor:
  """Deterministic eval preprocessing of one clip: float32 [num_crops, T, crop, crop, 3] in [0, 1]."""
  x = resize_shorter_side(decode_frames(frames, None, dct_method), resize)
  x = eval_crops(x, crop, num_crops)
  return tf.ensure_shape(x, [num_crops, None, crop, crop, 3]) * (1.0 / 255.0)


def view_probabilities(spec: AugmentSpec, num_views: int) -> Sequence[tuple]:
  """(blur, solarize) probability of each view, for logging and tests."""
  return [(spec.blur_prob(v), spec.solarize_prob(v)) for v in range(num_views)]
