"""Temporal sampling: which stored frames each clip takes (the papers the README cites).

Every function maps a video length L (and a stateless seed) to frame indices, so clips
are chosen on the encoded JPEG strings and only the chosen frames are decoded. Indices
come back unwrapped (they may exceed L - 1 for short videos); `fit_indices` applies the
short-video policy. A `Sampler` bundles one method with its clip count and footprint.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Mapping

from cvrl.core import discovery, lazy
from cvrl.core.errors import ConfigError


# `tf` on first use (cvrl.core.lazy): what a sampler is (views, frames, footprint) is read
# where TensorFlow may be absent; its index functions run inside tf.data pipelines.
tf = lazy.Module("tensorflow")

SHORT_POLICIES = ('wrap', 'repeat_last', 'skip')


def _uniform_int(seed, maxval) -> tf.Tensor:
  """One integer uniform in [0, maxval) (maxval >= 1)."""
  return tf.random.stateless_uniform([], seed, minval=0, maxval=tf.cast(maxval, tf.int32),
                                     dtype=tf.int32)


def _fold(seed, data: int) -> tf.Tensor:
  return tf.random.experimental.stateless_fold_in(seed, data)


def _clip(start, num_frames: int, stride) -> tf.Tensor:
  return start + tf.range(num_frames, dtype=tf.int32) * stride


def clip_strides(seed, num_clips: int, strides: tuple) -> tf.Tensor:
  """[num_clips] int32: each clip's stride, uniform over `strides`, one draw a clip (a
  playback speed per clip, as BraVe's views of different temporal extents, Recasens et
  al., ICCV 2021)."""
  pick = tf.random.stateless_uniform([num_clips], _fold(seed, 4), minval=0,
                                     maxval=len(strides), dtype=tf.int32)
  return tf.gather(tf.constant(strides, tf.int32), pick)


def largest_stride(stride: int, strides: tuple = ()) -> int:
  """The stride that places a sampler's clips: the largest of `strides`, else `stride`."""
  return max(strides or (stride,))


def clip_footprint(num_frames: int, stride: int, strides: tuple = ()) -> int:
  """Stored frames a clip of `num_frames` spans at its largest stride."""
  return (num_frames - 1) * largest_stride(stride, strides) + 1


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


def cvrl_indices(length, num_frames: int, stride: int, seed, strides: tuple = ()) -> tf.Tensor:
  """CVRL's two clips, [2, T]: decreasing-density gap, random order.

  M = L - (T-1)*stride. start1 ~ U{0..M-D-1}, start2 = start1 + D, swapped with p 0.5.
  If L <= (T-1)*stride (M = L) both starts are uniform on [0, L) and indices wrap.
  `strides` non-empty: each clip draws its own stride from it (`clip_strides`), M from
  the largest; (stride,) draws what `stride` alone does.
  """
  length = tf.cast(length, tf.int32)
  m = random_max_offset(length, num_frames, largest_stride(stride, strides))
  draws = tf.random.stateless_uniform([2], seed)
  gap = cvrl_gap(m, draws[0])
  start1 = _uniform_int(_fold(seed, 1), m - gap)
  start2 = start1 + gap
  short = tf.equal(m, length)
  start1 = tf.where(short, _uniform_int(_fold(seed, 2), length), start1)
  start2 = tf.where(short, _uniform_int(_fold(seed, 3), length), start2)
  swap = draws[1] < 0.5
  first, second = tf.where(swap, start2, start1), tf.where(swap, start1, start2)
  s = clip_strides(seed, 2, strides) if strides else (stride, stride)
  return tf.stack([_clip(first, num_frames, s[0]), _clip(second, num_frames, s[1])])


def random_clip_indices(length, num_clips: int, num_frames: int, stride: int, seed,
                        strides: tuple = ()) -> tf.Tensor:
  """`num_clips` clips with independent uniform starts on [0, max_offset) (rho methods),
  [V, T]; `strides` non-empty: a stride per clip as in `cvrl_indices`."""
  m = random_max_offset(length, num_frames, largest_stride(stride, strides))
  starts = tf.random.stateless_uniform([num_clips], seed, minval=0, maxval=m, dtype=tf.int32)
  s = clip_strides(seed, num_clips, strides)[:, None] if strides else stride
  return starts[:, None] + tf.range(num_frames, dtype=tf.int32)[None, :] * s


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


def make_sampler(spec: Mapping, *, num_frames: int, stride: int, train: bool,
                 strides: tuple = ()) -> Sampler:
  """Build a Sampler from a sampler dict (see cvrl.data.pipeline.build_dataset): its 'name'
  is a module of cvrl/data/samplers/ (cvrl.core.discovery) whose `make(options, num_frames,
  stride, train)` pops the options it takes from `options` (a dict; any left over are an
  error); 'num_frames' and 'stride' default to the data config's. `strides`
  (data.augmentation.clip_strides): a training clip's stride drawn from these, option
  'strides' of the samplers whose clips take one."""
  spec = dict(spec)
  name = spec.pop('name')
  build = discovery.find('cvrl.data.samplers', name, 'the sampler')
  t = int(spec.pop('num_frames', num_frames))
  s = int(spec.pop('stride', stride))
  if train and strides:
    spec['strides'] = tuple(int(k) for k in strides)
  sampler = build(spec, t, s, train)
  if 'strides' in spec:
    raise ConfigError(f'data.augmentation.clip_strides: the {name!r} sampler places its '
                      'clips with strides of its own; set it to ()')
  if spec:
    raise ValueError(f'sampler {name!r}: unknown options {sorted(spec)}')
  return sampler
