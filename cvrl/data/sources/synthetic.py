"""The 'synthetic' source: procedural videos (the demo's data) written once as real
SequenceExample shards, then read as the 'tfrecord' source reads shards.

Two steps: `prepare(data, split)` renders and writes a split's shards (once; the jobs call
it through cvrl.data.sources.prepare before they build a pipeline), `make` opens them and
writes nothing (a split not prepared is one line naming `prepare`). Shards go to
data.synthetic.dir, or a folder under the system temp dir named by the data's parameters
(each process of a multi-host run prepares its own, or one shared folder).

Kinds (config.data.synthetic.kind): 'motion', this module's videos, and 'objects'
(`cvrl.data.procedural`).

Each video shows a textured shape sliding over a textured background. The label is the
motion: one of `num_classes` (direction, speed) pairs. Everything a single frame shows
(shape, textures, colours, start position) is drawn independently of the label and the
shape wraps around the frame edges, so only temporal features can tell classes apart.
Videos are a pure function of (seed, video index).
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import sys

import numpy as np

from cvrl.core import paths
from cvrl.data import procedural
from cvrl.data.sources import Reader, tfrecord

_EVAL_SEED_OFFSET = 1_000_003


def motion_classes(num_classes: int) -> list[tuple[float, float]]:
  """(angle in radians, speed in pixels per frame at 48 px) of each class."""
  speeds = (1.0, 2.5) if num_classes >= 4 and num_classes % 2 == 0 else (1.5,)
  dirs = num_classes // len(speeds)
  return [(2 * np.pi * (c % dirs) / dirs, speeds[c // dirs]) for c in range(num_classes)]


def _texture(rng, h, w, octaves=(2, 4, 8)) -> np.ndarray:
  """Smooth random colour texture in [0, 1], [h, w, 3] (sum of upsampled noise)."""
  out = np.zeros((h, w, 3))
  for o in octaves:
    coarse = rng.random((o + 1, o + 1, 3))
    ys = np.linspace(0, o, h)
    xs = np.linspace(0, o, w)
    y0, x0 = np.floor(ys).astype(int).clip(0, o - 1), np.floor(xs).astype(int).clip(0, o - 1)
    fy, fx = (ys - y0)[:, None, None], (xs - x0)[None, :, None]
    c = coarse
    out += (c[y0][:, x0] * (1 - fy) * (1 - fx) + c[y0 + 1][:, x0] * fy * (1 - fx)
            + c[y0][:, x0 + 1] * (1 - fy) * fx + c[y0 + 1][:, x0 + 1] * fy * fx) / o ** 0.5
  out -= out.min()
  return out / max(out.max(), 1e-6)


def render_video(seed: int, index: int, label: int, num_classes: int, num_frames: int,
                 size: int) -> np.ndarray:
  """uint8 [num_frames, size, size, 3] of one video of class `label`."""
  rng = np.random.default_rng([seed, index])
  angle, speed = motion_classes(num_classes)[label]
  speed *= size / 48.0
  velocity = speed * np.array([np.sin(angle), np.cos(angle)])
  background = _texture(rng, size, size) * rng.uniform(0.4, 1.0) + rng.uniform(0, 0.3)
  radius = rng.uniform(0.15, 0.25) * size
  patch = _texture(rng, size, size, octaves=(3, 6))
  tint = rng.uniform(0.3, 1.0, 3)
  square = rng.random() < 0.5
  start = rng.uniform(0, size, 2)
  yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
  frames = np.empty((num_frames, size, size, 3), np.uint8)
  for t in range(num_frames):
    cy, cx = start + velocity * t
    dy = (yy - cy + size / 2) % size - size / 2  # wrap-around distance
    dx = (xx - cx + size / 2) % size - size / 2
    inside = (np.maximum(abs(dy), abs(dx)) < radius) if square else (dy ** 2 + dx ** 2 < radius ** 2)
    tex = patch[(dy.astype(int) % size), (dx.astype(int) % size)] * tint
    img = np.where(inside[..., None], tex, background)
    frames[t] = np.clip(img * 255 + 0.5, 0, 255).astype(np.uint8)
  return frames


def _shard_name(directory: str, split: str, k: int, n: int) -> str:
  return paths.join(directory, f'{split}-{k:05d}-of-{n:05d}.tfrecord')


class NotPrepared(ValueError):
  """A split opened before `prepare` wrote it."""


@dataclasses.dataclass(frozen=True)
class _Split:
  """One split's shards and what they are written with (the marker's parameters)."""
  directory: str
  split: str
  shards: list
  params: dict
  render: object
  name: object

  @property
  def marker(self):
    return paths.as_path(paths.join(self.directory, f'{self.split}.complete.json'))

  def written(self) -> bool:
    """A completed split with these parameters is there (its marker and every shard)."""
    return (self.marker.exists() and all(paths.as_path(p).exists() for p in self.shards)
            and json.loads(self.marker.read_text()) == self.params)


def _split(directory: str, num_videos: int, num_classes: int, num_frames: int, size: int,
           num_shards: int, seed: int, split: str = 'train', jpeg_quality: int = 90,
           kind: str = 'motion', difficulty: dict | None = None) -> _Split:
  render, name = _renderer(kind, num_classes, difficulty)
  params = dict(num_videos=num_videos, num_classes=num_classes, num_frames=num_frames,
                size=size, num_shards=num_shards, seed=seed, jpeg_quality=jpeg_quality)
  if kind != 'motion':  # the motion data's markers stay as they were
    params['kind'] = kind
    params['version'] = getattr(sys.modules[render.func.__module__], 'VERSION', 1)
    params['difficulty'] = render.keywords['difficulty']
  shards = [_shard_name(directory, split, k, num_shards) for k in range(num_shards)]
  return _Split(directory, split, shards, params, render, name)


def write_synthetic_shards(directory: str, num_videos: int, num_classes: int, num_frames: int,
                           size: int, num_shards: int, seed: int, split: str = 'train',
                           jpeg_quality: int = 90, kind: str = 'motion',
                           difficulty: dict | None = None) -> list[str]:
  """Write (or find already written) shards of synthetic videos; returns their paths.

  kind: 'motion' (this module's videos, labelled by motion alone) or 'objects'
  (`cvrl.data.procedural`: labelled by what the object is and how it moves);
  difficulty: the 'objects' kind's settings (procedural.DIFFICULTY).

  Idempotent: a marker file records the parameters of a completed split; a call with the
  same parameters returns at once. Video i (label i % num_classes) goes to shard
  i % num_shards; shards are written to a temporary name and renamed when complete.
  """
  return _written(_split(directory, num_videos, num_classes, num_frames, size, num_shards,
                         seed, split, jpeg_quality, kind, difficulty))


def _written(plan: _Split) -> list[str]:
  """The shards of `plan`, written first unless a completed split with its parameters is
  there."""
  if not plan.written():
    _write(plan)
  return plan.shards


def _write(plan: _Split) -> None:
  """Every missing shard of `plan` (all of them when its parameters changed), then its
  marker."""
  paths.makedirs(plan.directory)
  if plan.marker.exists():
    plan.marker.unlink()
    for p in plan.shards:  # parameters changed: rewrite every shard
      if paths.as_path(p).exists():
        paths.as_path(p).unlink()
  for k, path in enumerate(plan.shards):
    if not paths.as_path(path).exists():
      _write_shard(plan, k, path)
  plan.marker.write_text(json.dumps(plan.params))


def _write_shard(plan: _Split, k: int, path: str) -> None:
  """Shard k: videos k, k + num_shards, ... (video i of class i % num_classes)."""
  import tensorflow as tf  # TF only needed to encode and write
  p = plan.params
  # Locally under a temporary name, renamed when whole; an object store's upload is whole.
  tmp = path if paths.is_url(path) else f'{path}.tmp-{os.getpid()}'
  with tf.io.TFRecordWriter(tmp) as writer:  # TensorFlow's client writes the shards
    for i in range(k, p['num_videos'], p['num_shards']):
      label = i % p['num_classes']
      video = plan.render(p['seed'], i, label, p['num_classes'], p['num_frames'], p['size'])
      jpegs = [tf.io.encode_jpeg(f, quality=p['jpeg_quality']).numpy() for f in video]
      ex = tfrecord.make_sequence_example(jpegs, label, text=plan.name(label))
      writer.write(ex.SerializeToString())
  if tmp != path:
    paths.as_path(tmp).replace(path)


KINDS = ('motion', 'objects')


def _renderer(kind: str, num_classes: int, difficulty: dict | None = None):
  """(render_video, label -> text) of a kind of synthetic data."""
  if kind == 'motion':
    if difficulty:
      raise ValueError("data.synthetic.difficulty applies to kind 'objects' only")
    return render_video, lambda label: f'motion_{label}'
  if kind == 'objects':
    procedural.class_factors(num_classes)  # fail early on a bad class count
    d = procedural.check_difficulty(difficulty)
    d['scale'] = list(d['scale'])  # as the JSON marker reads it back
    render = functools.partial(procedural.render_video, difficulty=d)
    return render, lambda label: procedural.class_name(label, num_classes)
  raise ValueError(f'data.synthetic.kind must be one of {list(KINDS)}, got {kind!r}')


def _default_dir(syn_config, kind: str, difficulty) -> str:
  """A folder under the system temp dir named by every parameter of the data: runs of
  different sizes or settings side by side never rewrite each other's shards."""
  import tempfile  # pylint: disable=import-outside-toplevel
  params = {k: syn_config[k] for k in ('num_train_videos', 'num_eval_videos', 'num_classes',
                                       'num_frames', 'size', 'num_shards', 'seed')}
  if kind != 'motion':
    params['difficulty'] = procedural.check_difficulty(difficulty)
  key = json.dumps(params, sort_keys=True, default=str)
  return os.path.join(tempfile.gettempdir(),
                      f'cvrl_synthetic_{kind}_{hashlib.sha1(key.encode()).hexdigest()[:10]}')


def _config_split(syn_config, split: str) -> _Split:
  """The 'train' or 'eval' split described by config.data.synthetic."""
  if split not in ('train', 'eval'):
    raise ValueError(f"synthetic data has splits 'train' and 'eval', not {split!r}")
  kind = str(syn_config.kind)
  difficulty = syn_config.difficulty
  difficulty = difficulty.to_dict() if hasattr(difficulty, 'to_dict') else difficulty
  if kind == 'motion':
    difficulty = None  # the motion data has no settings
  directory = syn_config.dir or _default_dir(syn_config, kind, difficulty)
  train = split == 'train'
  return _split(
      directory,
      num_videos=int(syn_config.num_train_videos if train else syn_config.num_eval_videos),
      num_classes=int(syn_config.num_classes), num_frames=int(syn_config.num_frames),
      size=int(syn_config.size), num_shards=int(syn_config.num_shards),
      seed=int(syn_config.seed) + (0 if train else _EVAL_SEED_OFFSET), split=split, kind=kind,
      difficulty=difficulty)


def prepare(data, split: str) -> list[str]:
  """Renders and writes the shards of config.data.synthetic's `split` (once: a marker
  records a completed split, and a later call with the same parameters writes nothing);
  returns their paths. The one step of this source that writes: the jobs call it
  (cvrl.data.sources.prepare) before they build a pipeline; `make` only reads."""
  return _written(_config_split(data.synthetic, split))


def make(data, split: str, seed: int, process_index: int, process_count: int) -> Reader:
  """The split's Reader; NotPrepared (one line) when `prepare` has not written it."""
  plan = _config_split(data.synthetic, split)
  if not plan.written():
    raise NotPrepared(
        f'the synthetic {split} split is not prepared in {plan.directory}: call '
        f"cvrl.data.sources.prepare(config.data, ['{split}']) before reading it (every job "
        'does, before it builds a pipeline)')
  reader = tfrecord.reader(data, plan.shards, seed, process_index, process_count)
  reader.num_classes = int(data.synthetic.num_classes)
  return reader


def num_classes(data) -> int:
  return int(data.synthetic.num_classes)


def num_examples(data, split: str) -> int:
  """The videos the split is written with (config.data.synthetic)."""
  syn = data.synthetic
  return int(syn.num_train_videos if split == 'train' else syn.num_eval_videos)

