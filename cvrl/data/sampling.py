"""Temporal sampling: which stored frames each clip takes (the papers the README cites).

Every function maps a video length L (and a stateless seed) to frame indices, so clips
are chosen on the encoded JPEG strings and only the chosen frames are decoded. Indices
come back unwrapped (they may exceed L - 1 for short videos); `fit_indices` applies the
short-video policy. A `Sampler` bundles one method with its clip count and footprint.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Mapping


class _LazyTensorFlow:
  """`tf`, imported on first use. What a sampler is (views, frames, footprint) is read
  where TensorFlow may be absent (the train step, experiments.bench_step); its index
  functions run inside tf.data pipelines, which load TensorFlow anyway."""

  def __getattr__(self, name):
    import tensorflow  # pylint: disable=import-outside-toplevel
    globals()['tf'] = tensorflow  # later look-ups go straight to the module
    return getattr(tensorflow, name)


tf = _LazyTensorFlow()

SHORT_POLICIES = ('wrap', 'repeat_last', 'skip')


def _uniform_int(seed, maxval) -> tf.Tensor:
  """One integer uniform in [0, maxval) (maxval >= 1)."""
  return tf.random.stateless_uniform([], seed, minval=0, maxval=tf.cast(maxval, tf.int32),
                                     dtype=tf.int32)


def _fold(seed, data: int) -> tf.Tensor:
  return tf.random.experimental.stateless_fold_in(seed, data)


def _clip(start, num_frames: int, stride: int) -> tf.Tensor:
  return start + tf.range(num_frames, dtype=tf.int32) * stride


def random_max_offset(length, num_frames: int, stride: int) -> tf.Tensor:
  """Number of admissible random starts: L - (T-1)*stride, or L for short videos."""
  length = tf.cast(length, tf.int32)
  footprint = (num_frames - 1) * stride
  return tf.where(length > footprint, length - footprint, length)


def cvrl_gap(max_offset, u) -> tf.Tensor:
  """Start gap D with linearly decreasing density on [0, M]: floor(F^-1(u)), F(k) = 2k/M - k^2/M^2.

  Closed form of the reference's bisection; always an integer in [0, M - 1].
  """
  m = tf.cast(max_offset, tf.float32)
  k = m * (1.0 - tf.sqrt(1.0 - tf.cast(u, tf.float32)))
  return tf.clip_by_value(tf.cast(tf.floor(k), tf.int32), 0, tf.cast(max_offset, tf.int32) - 1)


def cvrl_indices(length, num_frames: int, stride: int, seed) -> tf.Tensor:
  """CVRL's two clips, [2, T]: decreasing-density gap, random order.

  M = L - (T-1)*stride. start1 ~ U{0..M-D-1}, start2 = start1 + D, swapped with p 0.5.
  If L <= (T-1)*stride (M = L) both starts are uniform on [0, L) and indices wrap.
  """
  length = tf.cast(length, tf.int32)
  m = random_max_offset(length, num_frames, stride)
  draws = tf.random.stateless_uniform([2], seed)
  gap = cvrl_gap(m, draws[0])
  start1 = _uniform_int(_fold(seed, 1), m - gap)
  start2 = start1 + gap
  short = tf.equal(m, length)
  start1 = tf.where(short, _uniform_int(_fold(seed, 2), length), start1)
  start2 = tf.where(short, _uniform_int(_fold(seed, 3), length), start2)
  swap = draws[1] < 0.5
  first, second = tf.where(swap, start2, start1), tf.where(swap, start1, start2)
  return tf.stack([_clip(first, num_frames, stride), _clip(second, num_frames, stride)])


def random_clip_indices(length, num_clips: int, num_frames: int, stride: int, seed) -> tf.Tensor:
  """`num_clips` clips with independent uniform starts on [0, max_offset) (rho methods), [V, T]."""
  m = random_max_offset(length, num_frames, stride)
  starts = tf.random.stateless_uniform([num_clips], seed, minval=0, maxval=m, dtype=tf.int32)
  return starts[:, None] + tf.range(num_frames, dtype=tf.int32)[None, :] * stride


def tclr_indices(length, num_frames: int, seed, sparse_stride: int = 4, num_dense: int = 4,
                 dense_stride: int = 1) -> tf.Tensor:
  """TCLR: one sparse clip and the dense clips that tile it, [1 + num_dense, T].

  The sparse clip takes T frames at `sparse_stride` from start s (uniform, the whole
  T * sparse_stride footprint inside the video when it fits); dense clip j takes T frames
  at `dense_stride` from sparse frame j * T / num_dense, i.e. s + j * (T / num_dense) * sparse_stride.
  With the defaults (16 frames, stride 4, 4 dense clips of 16 consecutive frames) the dense
  clips start at s, s+16, s+32, s+48 and tile the 64-frame span without overlap.
  """
  length = tf.cast(length, tf.int32)
  span = num_frames * sparse_stride
  m = tf.where(length >= span, length - span + 1, length)
  start = _uniform_int(seed, m)
  rows = [_clip(start, num_frames, sparse_stride)]
  hop = (num_frames // num_dense) * sparse_stride
  for j in range(num_dense):
    rows.append(_clip(start + j * hop, num_frames, dense_stride))
  return tf.stack(rows)


def linspace_indices(length, num_clips: int, num_frames: int, stride: int) -> tf.Tensor:
  """Evaluation clips, [num_clips, T], no randomness (the reference's test sampler).

  num_clips > 1: starts floor(linspace(0, max(0, L - T*stride), num_clips)).
  num_clips == 1: the middle clip, start max(0, (L - T*stride) // 2).
  """
  length = tf.cast(length, tf.int32)
  if num_clips == 1:
    starts = tf.maximum(0, (length - num_frames * stride) // 2)[None]
  else:
    max_offset = tf.maximum(0, length - num_frames * stride)
    starts = tf.cast(tf.linspace(0.0, tf.cast(max_offset, tf.float32), num_clips), tf.int32)
  return starts[:, None] + tf.range(num_frames, dtype=tf.int32)[None, :] * stride


def fit_indices(indices, length, policy: str) -> tf.Tensor:
  """Map indices into [0, L): 'wrap' (modulo, also for 'skip') or 'repeat_last' (clamp)."""
  length = tf.maximum(tf.cast(length, tf.int32), 1)
  if policy == 'repeat_last':
    return tf.minimum(indices, length - 1)
  return tf.math.floormod(indices, length)


@dataclasses.dataclass(frozen=True)
class Sampler:
  """One temporal sampling method, as the pipeline needs it.

  `indices(length, seed)` gives [num_views, frames] unwrapped indices; `footprint` is the
  number of stored frames a video needs to avoid the short-video policy. `indices` has
  num_views // num_crops rows: `num_crops` > 1 only for evaluation views, where view
  v = clip * num_crops + crop.
  """
  name: str
  num_views: int
  frames: int
  footprint: int
  indices: Callable
  random: bool
  num_crops: int = 1


# name -> builder(options, num_frames, stride, train) -> Sampler. A builder pops the options
# it takes from `options` (a dict); any left over are an error.
SAMPLERS: dict[str, Callable] = {}


def register(name: str):
  """Decorator: register a sampler builder under `name` (the sampler dict's 'name')."""
  def add(builder):
    SAMPLERS[name] = builder
    return builder
  return add


def make_sampler(spec: Mapping, *, num_frames: int, stride: int, train: bool) -> Sampler:
  """Build a Sampler from a sampler dict (see cvrl.data.pipeline.build_dataset): its 'name'
  looked up in SAMPLERS; 'num_frames' and 'stride' default to the data config's."""
  spec = dict(spec)
  name = spec.pop('name')
  if name not in SAMPLERS:
    raise ValueError(f'unknown sampler {name!r}; the samplers are: {", ".join(sorted(SAMPLERS))}')
  t = int(spec.pop('num_frames', num_frames))
  s = int(spec.pop('stride', stride))
  sampler = SAMPLERS[name](spec, t, s, train)
  if spec:
    raise ValueError(f'sampler {name!r}: unknown options {sorted(spec)}')
  return sampler


@register('cvrl')
def _cvrl(spec: dict, t: int, s: int, train: bool) -> Sampler:
  """CVRL's two clips, power-law start gap; 'extra_frames' k gives T + k frames each
  (as 'single': T + 1 for a DIF encoder)."""
  del train
  total = t + int(spec.pop('extra_frames', 0))
  return Sampler('cvrl', 2, total, (total - 1) * s + 1,
                 lambda length, seed: cvrl_indices(length, total, s, seed), True)


@register('rho')
def _rho(spec: dict, t: int, s: int, train: bool) -> Sampler:
  """'num_clips' clips with independent uniform starts."""
  del train
  rho = int(spec.pop('num_clips', 2))
  return Sampler('rho', rho, t, (t - 1) * s + 1,
                 lambda length, seed: random_clip_indices(length, rho, t, s, seed), True)


@register('tclr')
def _tclr(spec: dict, t: int, s: int, train: bool) -> Sampler:
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


@register('single')
def _single(spec: dict, t: int, s: int, train: bool) -> Sampler:
  """One clip: random (train) or the middle one; 'extra_frames' k gives T + k frames."""
  total = t + int(spec.pop('extra_frames', 0))
  if train:
    fn = lambda length, seed: random_clip_indices(length, 1, total, s, seed)
  else:
    fn = lambda length, seed: linspace_indices(length, 1, total, s)
  return Sampler('single', 1, total, (total - 1) * s + 1, fn, train)


@register('multiview')
def _multiview(spec: dict, t: int, s: int, train: bool) -> Sampler:
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
