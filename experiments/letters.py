"""A held-out video family for the quality benchmark: letters of a real font moving over
a background, the letter is the label.

Built the way a user's small dataset would be, and apart from the benchmark's own
generator (cvrl.data.procedural): each video shows one capital letter of DejaVu Sans (the
font matplotlib ships, rasterised here with numpy), 8 letters for 8 classes, at a random
size and start, moving in a straight line at a random speed and direction and bouncing
off the frame's edges, over a still background, with a little sensor noise on every
frame. What changes from video to video besides the letter is the variant's nuisance,
one draw per video:
  brightness  a grey background at a random level and a grey letter at another (at least
              0.25 apart, brighter or darker);
  background  a random scene: a few soft blobs of random colours, a light letter over it;
  colour      a background and a letter of random colours (at least 0.35 apart in RGB).
Videos are a pure function of (seed, video index, variant), written as SequenceExample
shards (the 'tfrecord' source's layout), so the bench trains on them as on users' data:

  python -m experiments.letters --variant=colour --out=/tmp/letters_colour
  python -m experiments.bench_quality --family=letters_colour --seeds=1

matplotlib is needed for the font (the `plots` extra).
"""
from __future__ import annotations

import functools
import json
import os

import numpy as np
from absl import app, flags

from cvrl.core import cli
from cvrl.core import paths
from cvrl.data.sources import tfrecord

LETTERS = "AEKMRSXZ"  # the 8 classes, label = index
VARIANTS = ("brightness", "background", "colour")
VERSION = 1  # bumped when the videos change: older shards are rewritten
NOISE = 0.02  # std of the per-pixel, per-frame noise (frames in [0, 1])
EVAL_SEED_OFFSET = 1_000_003


@functools.lru_cache(maxsize=None)
def glyph(letter: str, height: int) -> np.ndarray:
  """float [height, width] coverage in [0, 1] of `letter` in DejaVu Sans, its ink box
  scaled to `height` pixels (4 x 4 samples a pixel)."""
  from matplotlib.font_manager import FontProperties  # pylint: disable=import-outside-toplevel
  from matplotlib.textpath import TextPath  # pylint: disable=import-outside-toplevel
  path = TextPath((0, 0), letter, size=1.0, prop=FontProperties(family="DejaVu Sans"))
  (x0, y0), (x1, y1) = path.get_extents().get_points()
  scale = height / (y1 - y0)
  width = max(1, int(round((x1 - x0) * scale)))
  sub = (np.arange(4 * max(height, width)) + 0.5) / 4
  ys, xs = sub[:4 * height], sub[:4 * width]
  yy, xx = np.meshgrid(ys, xs, indexing="ij")  # image rows go down, the font's y goes up
  points = np.stack([x0 + xx.ravel() / scale, y1 - yy.ravel() / scale], axis=1)
  inside = path.contains_points(points).reshape(4 * height, 4 * width)
  return inside.reshape(height, 4, width, 4).mean(axis=(1, 3))


def _path(rng, num_frames: int, free: np.ndarray) -> np.ndarray:
  """int [num_frames, 2] top-left corners moving in a straight line, bouncing inside
  [0, free] per axis: random start, direction, and speed 0.6-1.5 pixels a frame."""
  angle, speed = rng.uniform(0, 2 * np.pi), rng.uniform(0.6, 1.5)
  pos = rng.uniform(0, 1, 2) * free + np.arange(num_frames)[:, None] * speed * np.array(
      [np.sin(angle), np.cos(angle)])
  span = np.maximum(free, 1e-6)
  folded = np.abs((pos / span + 1) % 2 - 1)  # reflect at 0 and at `free`
  return np.round(folded * free).astype(int)


def _blobs(rng, size: int, count: int = 5) -> np.ndarray:
  """A still scene [size, size, 3]: a random base colour with `count` soft blobs of
  random colours."""
  yy, xx = np.mgrid[0:size, 0:size] / size
  img = np.broadcast_to(rng.uniform(0.1, 0.9, 3), (size, size, 3)).copy()
  for _ in range(count):
    cy, cx, r = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.1, 0.35)
    w = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))[..., None]
    img = (1 - w) * img + w * rng.uniform(0, 1, 3)
  return img


def _apart(rng, first: np.ndarray, distance: float, dims: int) -> np.ndarray:
  """A uniform draw in [0, 1]^dims at least `distance` from `first` (rejection)."""
  while True:
    x = rng.uniform(0, 1, dims)
    if np.linalg.norm(x - first[:dims]) >= distance:
      return x


def appearance(rng, variant: str, size: int) -> tuple[np.ndarray, np.ndarray]:
  """(background [size, size, 3], letter colour [3]) of one video of `variant`."""
  if variant == "brightness":
    level = rng.uniform(0.1, 0.9, 1)
    return np.full((size, size, 3), level[0]), np.repeat(_apart(rng, level, 0.25, 1), 3)
  if variant == "background":
    return _blobs(rng, size), np.full(3, rng.uniform(0.85, 1.0))
  if variant == "colour":
    base = rng.uniform(0, 1, 3)
    return np.broadcast_to(base, (size, size, 3)).copy(), _apart(rng, base, 0.35, 3)
  raise ValueError(f"variant must be one of {list(VARIANTS)}, got {variant!r}")


def render_video(seed: int, index: int, label: int, variant: str, num_frames: int = 32,
                 size: int = 48) -> np.ndarray:
  """uint8 [num_frames, size, size, 3] of one video of letter LETTERS[label]."""
  rng = np.random.default_rng([seed, index, VARIANTS.index(variant)])
  background, colour = appearance(rng, variant, size)
  mask = glyph(LETTERS[label], int(rng.integers(size * 4 // 10, size * 6 // 10 + 1)))
  h, w = mask.shape
  corners = _path(rng, num_frames, np.array([size - h, size - w], np.float64))
  frames = np.empty((num_frames, size, size, 3), np.uint8)
  for t, (y, x) in enumerate(corners):
    cover = np.zeros((size, size, 1))
    cover[y:y + h, x:x + w, 0] = mask
    img = (1 - cover) * background + cover * colour + rng.normal(0, NOISE, background.shape)
    frames[t] = np.clip(img * 255 + 0.5, 0, 255).astype(np.uint8)
  return frames


def write_split(directory: str, variant: str, split: str, videos: int, seed: int = 0,
                num_frames: int = 32, size: int = 48, num_shards: int = 8) -> list[str]:
  """The shards of `split` ('train' or 'eval', whose videos draw from seed + an offset),
  video i of label i % 8 in shard i % num_shards; written once (a marker holds the
  parameters of a complete split), a split with other parameters is rewritten."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  params = dict(variant=variant, split=split, videos=videos, seed=seed, num_frames=num_frames,
                size=size, num_shards=num_shards, version=VERSION)
  shards = [paths.join(directory, f"{split}-{k:05d}-of-{num_shards:05d}.tfrecord")
            for k in range(num_shards)]
  marker = paths.as_path(paths.join(directory, f"{split}.complete.json"))
  if marker.exists() and json.loads(marker.read_text()) == params:
    return shards
  paths.makedirs(directory)
  first = seed + (EVAL_SEED_OFFSET if split == "eval" else 0)
  for k, path in enumerate(shards):
    with tf.io.TFRecordWriter(f"{path}.tmp-{os.getpid()}") as writer:
      for i in range(k, videos, num_shards):
        label = i % len(LETTERS)
        video = render_video(first, i, label, variant, num_frames, size)
        jpegs = [tf.io.encode_jpeg(f, quality=90).numpy() for f in video]
        writer.write(tfrecord.make_sequence_example(jpegs, label, LETTERS[label])
                     .SerializeToString())
    paths.as_path(f"{path}.tmp-{os.getpid()}").replace(path)
  marker.write_text(json.dumps(params))
  return shards


def use(data, variant: str, directory: str, videos: int, eval_videos: int = 256) -> None:
  """config.data reads the family's shards (written if missing) as the 'tfrecord' source."""
  data.source = "tfrecord"
  data.train_paths = ",".join(write_split(directory, variant, "train", videos))
  data.eval_paths = ",".join(write_split(directory, variant, "eval", eval_videos))
  data.num_train_examples = videos
  data.num_classes = len(LETTERS)


def check_font() -> None:
  """UsageError (one line) where matplotlib, whose font the letters are, is missing."""
  try:
    import matplotlib  # pylint: disable=import-outside-toplevel,unused-import
  except ImportError:
    raise app.UsageError("the letters need matplotlib's font: pip install -e "
                         "'.[plots]'") from None


def main(argv):
  del argv
  check_font()
  for split, videos in (("train", _VIDEOS.value), ("eval", 256)):
    print(",".join(write_split(_OUT.value, _VARIANT.value, split, videos)), flush=True)


if __name__ == "__main__":
  _VARIANT = flags.DEFINE_enum("variant", "colour", list(VARIANTS), "The per-video nuisance.")
  _OUT = flags.DEFINE_string("out", None, "The shards go here.", required=True)
  _VIDEOS = flags.DEFINE_integer("videos", 2048, "Training videos (256 held out).")
  cli.run(main)
