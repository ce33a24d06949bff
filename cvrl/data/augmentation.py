"""Spatial augmentation of clips with ONE random draw per clip (Qian et al., CVPR 2021).

A clip arrives as its sampled JPEG strings [T] (or decoded uint8 frames [T, H, W, 3]).
All of its random parameters come from one stateless draw: a uniform vector for flip,
colour jitter, grayscale, blur, solarization and TCLR's extras, plus the crop box from
`stateless_sample_distorted_bounding_box` on the same clip seed. The crop box is drawn
on the stored frame size and only that window is decoded (`decode_and_crop_jpeg`), then
bilinearly resized to the output size (the same pixels as decoding the whole frame,
cropping and resizing, as the reference does), one frame at a time so the resize's
float32 output never leaves the cache (`crop_resize_frames`).

The photometric choices become a small parameter vector (`draw_photometric`, layout in
`photometric.py`). By default (data.photometric='device') the host stops here: the clip
is rounded to uint8 and the accelerator applies the parameters (`device.finish_batch`).
With 'host' the colour/blur stage runs here in float32 (`Photometric`), as one XLA-fused
function per op (blur as separable shift-and-add with zero padding, the reference's
'SAME' depthwise convolution). Both follow the reference CVRL code: brightness
multiplicative, contrast around the clip's per-channel mean (the reference jitters the
clip as one tall image), saturation and hue as tf.image.adjust_*, the four in random
order with a clip to [0, 1] after each. Grayscale is applied after the blur rather than
before: both are linear and act the same on every pixel/channel, so the order does not
change the result.

TCLR's extra augmentations (Dave et al., CVIU 2022; `augmentation` in the reference's
tclr_pretraining/dl_tclr.py), all off by default and per clip like everything else:
- one draw r picks at most one of two arms, right after the colour jitter as in the
  reference: r < gray_gamma_prob: grayscale (3 channels), then with probability
  gamma_prob x -> x ** gamma, gamma ~ U(gamma_range) (gain 1); gray_gamma_prob <= r <
  gray_gamma_prob + channel_drop_prob: one colour channel, uniform over {0, 1, 2}, set to
  0. The reference's values: 0.175 (of which 0.75 with gamma in U(0.75, 1.25)) and 0.125.
  Not to be confused with grayscale_prob, the independent grayscale after the blur.
- random erasing with probability erase_prob, the very last op (after blur, grayscale and
  solarization), as the reference erases the [0, 1] tensor: a rectangle set to 0, top
  row uniform in [0, S), left column uniform in [0, S) (clipped where it runs past the
  edge), height and width each uniform over the integers [m // 2, m) with m =
  round(erase_size * S) for output side S. The reference's m = 19 at 112 px is
  erase_size = 19 / 112 (so the box scales with the crop).

Background erasing (Wang et al., "Removing the Background by Adding the Background", CVPR
2021), off by default, after everything else (the authors' code mixes the network's input):
one frame k of the augmented clip, uniform over its T frames, is the static frame, and every
frame becomes x_t' = (1 - lambda) x_t + lambda x_k with lambda ~ U(0, background_erase_max)
drawn per clip (0.3, the authors' code; it draws lambda per batch). The clip keeps its motion
and carries a still copy of its own scene; with the paper's background_erase_probs = (1, 0)
only the first view (the query) is mixed, so matching it to the second view rewards what
moves. The per-frame ablation mixes with the draw of the clip's first frame.

Per-clip symmetries and a camera pan, all off by default (`symmetries`, `pan_windows`):
flags of the same draw turn the clip upside down, swap its rows and columns, reverse its
frames, invert it (or each colour channel on its own), and move the crop box in a straight
line over the clip; each changes a cue both clips of a video share (the direction of
motion, the sign of the edges, the motion relative to the camera) and keeps the rest.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import tensorflow as tf

from cvrl.core.errors import ConfigError
from cvrl.data import photometric as P

# Positions in the per-clip uniform draw.
_FLIP, _JITTER, _BRIGHT, _CONTRAST, _SAT, _HUE = 0, 1, 2, 3, 4, 5
_ORDER = slice(6, 10)
_GRAY, _BLUR, _SIGMA, _SOLAR = 10, 11, 12, 13
# TCLR's extras, appended so that the draws above keep their places and values (a longer
# stateless_uniform vector starts with the shorter one's numbers).
_GRAY_OR_DROP, _GAMMA_ON, _GAMMA = 14, 15, 16
_CHANNEL = 17
_ERASE = 18
_ERASE_BOX = slice(19, 23)  # top, left, height, width
_BG_ERASE, _BG_WEIGHT, _BG_FRAME = 23, 24, 25  # background erasing
_VFLIP, _TRANSPOSE, _REVERSE, _INVERT = 26, 27, 28, 29  # per-clip symmetries (`symmetries`)
_PAN, _PAN_END = 30, slice(31, 33)  # the crop's pan (`pan_windows`): flag, end row, column
_CHANNEL_INVERT = slice(33, 36)  # one flag a colour channel (`symmetries`)
_FAME = 36  # foreground-background merging (`fame.py`, on device only)
NUM_DRAWS = 37

# Random erasing's default size: TCLR's 19 pixels at 112.
TCLR_ERASE_SIZE = 19 / 112
# Background erasing's largest mixing weight (Wang et al. 2021, their code's alpha).
BE_MAX_WEIGHT = 0.3


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
  # TCLR's extras (module docstring): gray_gamma_prob and channel_drop_prob are the two
  # arms of one draw (their sum at most 1).
  gray_gamma_prob: float = 0.0
  gamma_prob: float = 0.75
  gamma_range: tuple = (0.75, 1.25)
  channel_drop_prob: float = 0.0
  erase_prob: float = 0.0
  erase_size: float = TCLR_ERASE_SIZE
  # Background erasing (module docstring): probability per view, the largest weight.
  background_erase_probs: tuple = (0.0,)
  background_erase_max: float = BE_MAX_WEIGHT
  # FAME (cvrl.data.fame): probability per view, the foreground's share of the frame.
  fame_probs: tuple = (0.0,)
  fame_beta: float = P.FAME_BETA
  # The foreground's model: 'colour' (the paper's) or 'median' (the clip's temporal median,
  # cvrl.data.fame), and the median's threshold on a channel in [0, 1].
  fame_foreground: str = 'colour'
  fame_threshold: float = 0.1
  # Per-clip symmetries of the motion and the levels (`symmetries`), each one flag a clip.
  vflip_prob: float = 0.0
  transpose_prob: float = 0.0
  reverse_prob: float = 0.0
  invert_prob: float = 0.0
  channel_invert_prob: float = 0.0
  # A camera pan per clip (`pan_windows`): probability that the crop box moves.
  pan_prob: float = 0.0
  # A stride per training clip (cvrl.data.sampling.clip_strides); (): data.stride.
  clip_strides: tuple = ()
  consistent: bool = True

  def __post_init__(self):
    if self.gray_gamma_prob + self.channel_drop_prob > 1.0 + 1e-9:
      raise ValueError('augmentation.gray_gamma_prob + channel_drop_prob must be at most 1 '
                       f'(two arms of one draw), got {self.gray_gamma_prob} + '
                       f'{self.channel_drop_prob}')
    if not 0.0 <= self.background_erase_max <= 1.0:
      raise ConfigError('data.augmentation.background_erase_max must be in [0, 1] (the largest '
                        f'weight of the static frame), got {self.background_erase_max}')
    if not all(isinstance(k, int) and k >= 1 for k in self.clip_strides):
      raise ConfigError('data.augmentation.clip_strides must hold strides >= 1 (a training '
                        f'clip\'s stride is drawn from them), got {self.clip_strides}')
    if self.fame_foreground not in P.FAME_FOREGROUNDS:
      raise ConfigError(f'data.augmentation.fame_foreground must be one of {P.FAME_FOREGROUNDS} '
                        f"(the paper's colour prior, the temporal median), got {self.fame_foreground!r}")
    if not 0.0 < self.fame_threshold < 1.0:
      raise ConfigError('data.augmentation.fame_threshold must be in (0, 1) (a channel\'s '
                        f'distance from the median frame), got {self.fame_threshold}')
    if not 0.0 < self.fame_beta < 1.0:
      raise ConfigError('data.augmentation.fame_beta must be in (0, 1) (the foreground\'s share '
                        f'of the frame), got {self.fame_beta}')

  @classmethod
  def from_config(cls, aug) -> 'AugmentSpec':
    fields = {f.name for f in dataclasses.fields(cls)}
    values = {k: aug[k] for k in fields if k in aug}
    for k, v in values.items():
      if isinstance(v, list):
        values[k] = tuple(v)
    return cls(**values)

  def blur_prob(self, view: int) -> float:
    return P.per_view(self.blur_probs, view)

  def solarize_prob(self, view: int) -> float:
    return P.per_view(self.solarize_probs, view)

  def background_erase_prob(self, view: int) -> float:
    return P.per_view(self.background_erase_probs, view)

  def fame_prob(self, view: int) -> float:
    return P.per_view(self.fame_probs, view)

  @property
  def has_background_erase(self) -> bool:
    return max(self.background_erase_probs or (0.0,)) > 0

  def has_photometric(self, num_views: int, blur_radius: int) -> bool:
    """Whether any colour/grayscale/blur/solarize/erase op can fire on one of the views."""
    return P.can_fire(self, num_views, blur_radius)


def fold_seed(seed, *data: int | tf.Tensor) -> tf.Tensor:
  """Derive a stateless seed [2] from a seed and integers (example id, view, epoch ...)."""
  seed = tf.cast(seed, tf.int64)
  for d in data:
    seed = tf.random.experimental.stateless_fold_in(seed, tf.cast(d, tf.int64))
  return seed


def scalar_seed(seed) -> tf.Tensor:
  """One int64 in [0, 2^31 - 1) from a stateless seed pair, for ops that take a scalar seed.

  Not seed[0]: stateless_fold_in returns [random(seed), data], so the first entry does not
  depend on the last value folded in (e.g. the epoch).
  """
  return tf.random.stateless_uniform([], seed, minval=0, maxval=2 ** 31 - 1, dtype=tf.int64)


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


def draw_photometric(u, spec: AugmentSpec, view: int, radius: int,
                     out_size: int = 0) -> tf.Tensor:
  """The clip's photometric parameters [photometric.SIZE] from its uniform draw `u`.

  The single place both paths take their colour/blur/solarize choices from: brightness
  U[max(0, 1-b), 1+b], contrast U[1-c, 1+c], saturation U[1-s, 1+s], hue U[-h, h], the
  random order as the argsort of four uniforms, and Bernoulli flags per view; then TCLR's
  extras and background erasing (module docstring). out_size: the output side S, which the erase box needs (in
  pixels, integers, so both paths erase the same pixels); required when erase_prob > 0.
  """
  between = lambda v, lo, hi: lo + (hi - lo) * v
  flag = lambda v, p: tf.cast(v < p, tf.float32)
  # Uniform integer in [0, n) (the min guards float32 rounding of u * n up to n).
  integer = lambda v, n: tf.minimum(tf.floor(v * n), n - 1.0)
  if spec.color_random_order:
    order = tf.cast(tf.argsort(u[_ORDER]), tf.float32)
  else:
    order = tf.range(4, dtype=tf.float32)
  lo, hi = spec.blur_sigma_range
  return tf.concat([
      tf.stack([flag(u[_JITTER], spec.color_jitter_prob),
                between(u[_BRIGHT], max(0.0, 1.0 - spec.brightness), 1.0 + spec.brightness),
                between(u[_CONTRAST], 1.0 - spec.contrast, 1.0 + spec.contrast),
                between(u[_SAT], 1.0 - spec.saturation, 1.0 + spec.saturation),
                between(u[_HUE], -spec.hue, spec.hue)]),
      order,
      tf.stack([flag(u[_GRAY], spec.grayscale_prob),
                flag(u[_BLUR], spec.blur_prob(view) if radius > 0 else 0.0),
                between(u[_SIGMA], lo, hi),
                flag(u[_SOLAR], spec.solarize_prob(view))]),
      _draw_tclr(u, spec, out_size, between, flag, integer),
      tf.stack([flag(u[_BG_ERASE], spec.background_erase_prob(view)),
                between(u[_BG_WEIGHT], 0.0, spec.background_erase_max), u[_BG_FRAME],
                flag(u[_FAME], spec.fame_prob(view))])],
      axis=0)


def _draw_tclr(u, spec: AugmentSpec, out_size: int, between, flag, integer) -> tf.Tensor:
  """Entries GRAY_GAMMA .. ERASE_BOX: the gray-gamma / channel-drop arms and the erase box."""
  r = u[_GRAY_OR_DROP]
  gray = flag(r, spec.gray_gamma_prob)
  drop = (1.0 - gray) * flag(r, spec.gray_gamma_prob + spec.channel_drop_prob)
  lo, hi = spec.gamma_range
  erase = flag(u[_ERASE], spec.erase_prob)
  if spec.erase_prob > 0:
    if out_size <= 0:
      raise ValueError('random erasing (augmentation.erase_prob > 0) needs the output size')
    extent = P.erase_extent(spec.erase_size, out_size)
    box = u[_ERASE_BOX]
    low = float(extent // 2)
    span = float(max(extent - extent // 2, 1))
    box = tf.stack([integer(box[0], float(out_size)), integer(box[1], float(out_size)),
                    low + integer(box[2], span), low + integer(box[3], span)])
  else:
    box = tf.zeros([4], tf.float32)
  return tf.concat([
      tf.stack([gray, gray * flag(u[_GAMMA_ON], spec.gamma_prob),
                between(u[_GAMMA], lo, hi), drop, integer(u[_CHANNEL], 3.0), erase]),
      box], axis=0)


class Photometric:
  """Host path: colour jitter, TCLR's gray-gamma / channel drop, blur, grayscale,
  solarization and TCLR's random erasing of a resized clip, in that order.

  Applies the clip's parameter vector (`draw_photometric`). Random choices are graph-level
  conditionals (free when not taken); each operation is one XLA-fused kernel over the
  clip (`jit=True`), so a taken branch costs one float32 pass.
  """

  def __init__(self, spec: AugmentSpec, kernel_size: int, jit: bool = True):
    self.spec = spec
    self.radius = int(kernel_size) // 2
    compile_ = lambda fn: tf.function(fn, jit_compile=jit, reduce_retracing=True,
                                      autograph=False)
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
    self._gray_gamma = compile_(gray_gamma)
    self._drop_channel = compile_(drop_channel)
    self._erase = compile_(erase_box)

  def __call__(self, x, params) -> tf.Tensor:
    """x: [T, S, S, 3] float32 in [0, 255], params [photometric.SIZE] -> [0, 1]."""
    spec = self.spec
    on = lambda i: params[i] > 0.5
    x = self._scale(x)
    if spec.color_jitter_prob > 0:
      x = tf.cond(on(P.JITTER), lambda: self._jitter(x, params), lambda: x)
    if spec.gray_gamma_prob > 0:
      x = tf.cond(on(P.GRAY_GAMMA),
                  lambda: self._gray_gamma(x, on(P.GAMMA), params[P.GAMMA_EXP]), lambda: x)
    if spec.channel_drop_prob > 0:
      x = tf.cond(on(P.CHANNEL_DROP), lambda: self._drop_channel(x, params[P.CHANNEL]),
                  lambda: x)
    if max(spec.blur_probs or (0.0,)) > 0 and self.radius > 0:
      x = tf.cond(on(P.BLUR), lambda: self._blur(x, params[P.SIGMA]), lambda: x)
    x = self._finish(x, on(P.GRAYSCALE), on(P.SOLARIZE))
    if spec.erase_prob > 0:
      x = tf.cond(on(P.ERASE), lambda: self._erase(x, params[P.ERASE_BOX]), lambda: x)
    return x

  def _jitter(self, x, params):
    spec = self.spec
    factors = [params[P.BRIGHTNESS], params[P.CONTRAST], params[P.SATURATION], params[P.HUE]]
    strengths = [spec.brightness, spec.contrast, spec.saturation, spec.hue]
    branches = [(lambda op=op, f=f: (lambda y: op(y, f))) if strength else
                (lambda: (lambda y: y)) for op, f, strength in zip(self._ops, factors, strengths)]
    branches = [make() for make in branches]
    order = tf.cast(params[P.ORDER], tf.int32)
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


def gray_gamma(x, gamma_on, gamma) -> tf.Tensor:
  """TCLR's first arm: grayscale (3 channels), then x ** gamma where `gamma_on`."""
  g = to_grayscale(x)
  return tf.where(gamma_on, tf.pow(g, gamma), g)


def drop_channel(x, channel) -> tf.Tensor:
  """TCLR's second arm: colour channel `channel` (0, 1 or 2, as a float) set to 0."""
  keep = tf.not_equal(tf.range(3, dtype=tf.float32), channel)
  return tf.where(keep, x, 0.0)


def erase_box(x, box) -> tf.Tensor:
  """Pixels of the rectangle box = (top, left, height, width) of x [..., H, W, C] set to 0.

  Rows top .. top + height - 1 and columns left .. left + width - 1, clipped at the
  frame's edge (as slicing clips them in the reference's torchvision erase).
  """
  shape = tf.shape(x)
  rows = tf.range(shape[-3], dtype=tf.float32)[:, None]
  cols = tf.range(shape[-2], dtype=tf.float32)[None, :]
  top, left, height, width = box[0], box[1], box[2], box[3]
  inside = ((rows >= top) & (rows < top + height)) & ((cols >= left) & (cols < left + width))
  return tf.where(inside[..., None], 0.0, x)


def background_erase(x, params) -> tf.Tensor:
  """x [T, H, W, C] with the clip's static frame mixed in: (1 - lambda) x_t + lambda x_k,
  lambda = BG_WEIGHT where BG_ERASE is set (else 0), k = min(floor(BG_FRAME * T), T - 1)."""
  num = tf.shape(x)[0]
  k = tf.cast(tf.floor(params[P.BG_FRAME] * tf.cast(num, tf.float32)), tf.int32)
  weight = params[P.BG_ERASE] * params[P.BG_WEIGHT]
  return (1.0 - weight) * x + weight * x[tf.minimum(k, num - 1)]


def to_uint8(x) -> tf.Tensor:
  """Round float pixels in [0, 255] to uint8 (half up; inputs are never negative)."""
  return tf.cast(x + 0.5, tf.uint8)


class ClipAugmenter:
  """Train-time augmentation of one clip (or each frame, for the ablation).

  photometric='device': the host does the spatial part only and returns the clip as
  uint8 plus its photometric parameters; `device.finish_batch` applies them on the
  accelerator. 'host': the clip comes back float32 in [0, 1] with everything applied.
  """

  def __init__(self, spec: AugmentSpec, out_size: int, jit: bool = True, dct_method: str = '',
               photometric: str = 'device'):
    if photometric not in ('device', 'host'):
      raise ValueError(f"data.photometric must be 'device' or 'host', got {photometric!r}")
    if photometric == 'host' and max(spec.fame_probs or (0.0,)) > 0:
      raise ConfigError("data.augmentation.fame_probs needs data.photometric='device' (FAME "
                        'merges clips of one batch, on the accelerator)')
    self.spec = spec
    self.out_size = out_size
    self.dct_method = dct_method
    self.on_device = photometric == 'device'
    self.radius = P.blur_radius(out_size)
    self.photometric = None if self.on_device else Photometric(spec, out_size // 10, jit)

  @property
  def dtype(self):
    return tf.uint8 if self.on_device else tf.float32

  def __call__(self, frames, seed, view: int) -> tuple[tf.Tensor, tf.Tensor]:
    """(clip [T, S, S, 3], params) from frames [T] (JPEG) or [T, H, W, 3] uint8.

    The clip is uint8 (device) or float32 in [0, 1] (host); params are
    [photometric.SIZE] for a consistent clip, [T, photometric.SIZE] per frame.
    """
    if self.spec.consistent:
      clip, params = self._clip(frames, seed, view)
    else:
      clip, params = self._per_frame(frames, seed, view)
    if self.on_device or not self.spec.has_background_erase:
      return clip, params
    return background_erase(clip, params if self.spec.consistent else params[0]), params

  def _per_frame(self, frames, seed, view: int):
    def one(t):
      clip, params = self._clip(frames[t:t + 1], fold_seed(seed, t), view)
      return clip[0], params
    return tf.map_fn(one, tf.range(tf.shape(frames)[0]), fn_output_signature=(
        tf.TensorSpec([self.out_size, self.out_size, 3], self.dtype),
        tf.TensorSpec([P.SIZE], tf.float32)))

  def _clip(self, frames, seed, view: int):
    u = tf.random.stateless_uniform([NUM_DRAWS], seed)
    window = crop_window(fold_seed(seed, 1), frame_shape(frames), self.spec)
    flip = u[_FLIP] < self.spec.flip_prob if self.spec.flip_prob > 0 else None
    params = draw_photometric(u, self.spec, view, self.radius, self.out_size)
    if self.spec.pan_prob > 0:
      window = pan_windows(window, u, self.spec.pan_prob, frame_shape(frames), tf.shape(frames)[0])
    x = crop_resize_frames(frames, window, self.out_size, flip, self.dtype, self.dct_method)
    x = symmetries(x, u, self.spec)
    if self.on_device:
      return x, params
    return self.photometric(x, params), params


def symmetries(x, u, spec: AugmentSpec) -> tf.Tensor:
  """The clip x [T, S, S, 3] (uint8 or float in [0, 255]) under its per-clip symmetries,
  each a flag of the clip's draw u: upside down (vflip_prob), rows and columns swapped
  (transpose_prob; with the horizontal flip, the three give the 8 symmetries of the square,
  each turning the direction of motion), its frames in reverse order (reverse_prob: the
  motion played backwards, as reversing the clip's frame indices) and its levels inverted,
  x -> 255 - x (invert_prob: the sign of every edge and frame difference turned), then
  each colour channel inverted on its own (channel_invert_prob, one flag a channel: the
  sign of each channel's edges), before the colour ops. A flag whose probability is 0
  costs nothing."""
  ops = ((_VFLIP, spec.vflip_prob, lambda y: tf.reverse(y, axis=[1])),
         (_TRANSPOSE, spec.transpose_prob, lambda y: tf.transpose(y, [0, 2, 1, 3])),
         (_REVERSE, spec.reverse_prob, lambda y: tf.reverse(y, axis=[0])),
         (_INVERT, spec.invert_prob, lambda y: tf.cast(255, y.dtype) - y))
  for index, prob, op in ops:
    if prob > 0:
      x = tf.cond(u[index] < prob, lambda op=op, y=x: op(y), lambda y=x: y)
  if spec.channel_invert_prob > 0:
    x = tf.where(u[_CHANNEL_INVERT] < spec.channel_invert_prob, tf.cast(255, x.dtype) - x, x)
  return x


def pan_windows(window, u, prob: float, shape, num_frames) -> tf.Tensor:
  """[T, 4] crop boxes of a camera pan (with probability `prob`, the flag u[_PAN]): the
  box keeps its size and moves in a straight line from `window` [y, x, h, w] in frame 0
  to a position drawn uniformly in the frame (u[_PAN_END]) in frame T - 1, rounded to
  whole pixels. Without the pan every frame has `window`. The clip's frame differences
  then carry the object's motion relative to the camera's, drawn per clip."""
  start = tf.cast(window[:2], tf.float32)
  room = tf.cast(shape[:2] - window[2:], tf.float32)
  end = tf.where(u[_PAN] < prob, tf.floor(u[_PAN_END] * (room + 1.0)), start)
  end = tf.minimum(end, room)
  steps = tf.cast(tf.maximum(num_frames - 1, 1), tf.float32)
  along = tf.cast(tf.range(num_frames), tf.float32)[:, None] / steps
  corners = tf.cast(tf.round(start + along * (end - start)), tf.int32)
  return tf.concat([corners, tf.tile(window[None, 2:], [num_frames, 1])], axis=1)


def crop_resize_frames(frames, window, size: int, flip=None, dtype=tf.uint8,
                       dct_method: str = '') -> tf.Tensor:
  """[T, size, size, 3]: each frame's crop `window` decoded, flipped, resized (bilinear);
  `window` is one box [y, x, h, w] for every frame or one a frame, [T, 4].

  One frame at a time, from its JPEG to its output pixels, so the float32 resize output
  (0.6 MB at 224) stays in cache instead of streaming a whole clip's 9.6 MB through memory
  for every pass. uint8 output is the bilinear result rounded; float32 stays in [0, 255].
  Flipping the small uint8 crop before the resize equals flipping the resized frame.
  """
  if window.shape.rank == 1:
    window = tf.tile(window[None], [tf.shape(frames)[0], 1])

  def one(pair):
    frame, box = pair
    if frame.dtype == tf.string:
      crop = tf.io.decode_and_crop_jpeg(frame, box, channels=3, dct_method=dct_method)
    else:
      crop = frame[box[0]:box[0] + box[2], box[1]:box[1] + box[3]]
    if flip is not None:
      crop = tf.cond(flip, lambda: tf.reverse(crop, axis=[1]), lambda: crop)
    x = tf.image.resize(crop, [size, size], method='bilinear')
    return to_uint8(x) if dtype == tf.uint8 else x
  return tf.map_fn(one, (frames, window),
                   fn_output_signature=tf.TensorSpec([size, size, 3], dtype))


def resize_shorter_side(frames, size: int, dtype=tf.float32) -> tf.Tensor:
  """Resize so min(H, W) == size (no-op when it already is), as the reference eval.

  float32 output stays in [0, 255]; uint8 output is the bilinear result rounded.
  """
  shape = tf.shape(frames)
  h, w = shape[1], shape[2]
  out_h = tf.maximum(size, (h * size) // w)
  out_w = tf.maximum(size, (w * size) // h)
  same = tf.logical_and(tf.equal(h, out_h), tf.equal(w, out_w))

  def resize():
    x = tf.image.resize(frames, tf.stack([out_h, out_w]), method='bilinear')
    return to_uint8(x) if dtype == tf.uint8 else x
  return tf.cond(same, lambda: tf.cast(frames, dtype), resize)


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


def eval_views(frames, resize: int, crop: int, num_crops: int, dct_method: str = '',
               dtype=tf.float32) -> tf.Tensor:
  """Deterministic eval preprocessing of one clip: [num_crops, T, crop, crop, 3].

  float32 in [0, 1], or uint8 (the device path: `device.finish_batch` scales it).
  """
  x = resize_shorter_side(decode_frames(frames, None, dct_method), resize, dtype)
  x = eval_crops(x, crop, num_crops)
  x = tf.ensure_shape(x, [num_crops, None, crop, crop, 3])
  return x if dtype == tf.uint8 else x * (1.0 / 255.0)


def view_probabilities(spec: AugmentSpec, num_views: int) -> Sequence[tuple]:
  """(blur, solarize) probability of each view, for logging and tests."""
  return [(spec.blur_prob(v), spec.solarize_prob(v)) for v in range(num_views)]
