"""The in-memory source of the tests: deterministic in-memory batches (no files, no
TensorFlow). Batch `s` is a pure function of (seed, s), and each host takes its rows of it.
It is found by its module path (`config.data.source = NAME`, cvrl.core.discovery); it
gives the trainer numpy batches itself (`batches`), so only pretraining reads it."""
from typing import Iterator, Mapping

import numpy as np

NAME = __name__  # a dotted name, outside cvrl: this module ("outside_cvrl.memory")


def _memory_videos(num_videos: int, num_frames: int, size: int, seed: int) -> np.ndarray:
  """Smooth random colour patterns drifting over time: [videos, frames, size, size, 3]."""
  rng = np.random.default_rng([seed, 0xC1])
  coarse = rng.uniform(size=(num_videos, 4, 4, 3)).astype(np.float32)
  # Bilinear upsampling of the 4x4 pattern to size x size.
  pos = np.linspace(0, 3, size, dtype=np.float32)
  lo = np.minimum(np.floor(pos).astype(int), 2)
  w = (pos - lo)[None, :, None]
  rows = coarse[:, lo] * (1 - w[..., None]) + coarse[:, lo + 1] * w[..., None]
  image = rows[:, :, lo] * (1 - w[:, None]) + rows[:, :, lo + 1] * w[:, None]
  velocity = rng.integers(-2, 3, size=(num_videos, 2))
  out = np.empty((num_videos, num_frames, size, size, 3), np.float32)
  for v in range(num_videos):
    for t in range(num_frames):
      out[v, t] = np.roll(image[v], (t * velocity[v, 0], t * velocity[v, 1]), axis=(0, 1))
  return out


def memory_batches(data_config: Mapping, *, num_views: int, batch_size: int, seed: int,
                   start_step: int = 0, process_index: int = 0, process_count: int = 1
                   ) -> Iterator[dict]:
  """This host's rows of global batch s = f(seed, s), for s = start_step, start_step + 1, ...

  Views of a video: different start frames, spatial shifts and brightness of one clip.
  `batch_size` is per host; the global batch is batch_size * process_count videos.
  """
  frames = int(data_config["num_frames"])
  size = int(data_config["crop_size"])
  num_videos = int(data_config.get("num_train_examples") or 64)
  pool = _memory_videos(num_videos, 2 * frames, size, seed)
  global_batch = batch_size * process_count
  rows = slice(process_index * batch_size, (process_index + 1) * batch_size)
  step = start_step
  while True:
    rng = np.random.default_rng([seed, step])
    ids = rng.integers(0, num_videos, size=global_batch)
    starts = rng.integers(0, frames + 1, size=(global_batch, num_views))
    shifts = rng.integers(-size // 8, size // 8 + 1, size=(global_batch, num_views, 2))
    gains = rng.uniform(0.7, 1.3, size=(global_batch, num_views)).astype(np.float32)
    video = np.empty((batch_size, num_views, frames, size, size, 3), np.float32)
    for i, g in enumerate(range(global_batch)[rows]):
      for v in range(num_views):
        clip = pool[ids[g], starts[g, v]:starts[g, v] + frames]
        clip = np.roll(clip, tuple(shifts[g, v]), axis=(1, 2))
        video[i, v] = np.clip(clip * gains[g, v], 0.0, 1.0)
    yield {"video": video, "label": (ids[rows] % 8).astype(np.int32),
           "index": ids[rows].astype(np.int64)}
    step += 1


def batches(data, sampler: Mapping, *, seed: int, batch_size: int, start_step: int,
            process_index: int, process_count: int) -> Iterator[dict]:
  num_views = int(sampler.get("num_clips", 2)) if sampler.get("name") != "cvrl" else 2
  return memory_batches(data, num_views=num_views, batch_size=batch_size,
                        seed=int(seed), start_step=start_step,
                        process_index=process_index, process_count=process_count)


def make(data, split, seed, process_index, process_count):
  """The source's entry point: it has no tf.data reader."""
  raise ValueError(f"data.source {data.source!r} gives batches to the trainer only (no "
                   "tf.data reader)")
