"""The clips of a batch as training sees them, laid out as one picture.

`views` finishes a host batch exactly as the train step does (`cvrl.data.device`: the
photometric ops on the uint8 clips, as on the accelerator) and hands it to the objective's
`shown_views` (the clips its loss feeds the network: e.g. 3DRotNet's four rotations).
`mosaic` lays them out: a row per video, its views side by side, each view's frames left
to right. `python -m cvrl.tools.show_clips` draws the first batch of a config's pipeline;
pretraining writes the same picture of its first batch to TensorBoard
(`config.log.first_batch_picture`, on by default with `config.log.tensorboard`).
"""
from __future__ import annotations

from typing import Iterable, Iterator

import jax
import numpy as np

from cvrl.data import device
from cvrl.engine import input as input_lib
from cvrl.engine import metrics

TAG = "input/first_batch"
FRAME_GAP, VIEW_GAP, ROW_GAP = 1, 6, 4  # pixels between frames, views, videos
# The gaps' colour: a pale blue, so that a clip the jitter turned white or black still shows
# its edges.
BACKGROUND = (214, 224, 240)


def views(batch: dict, data_config, objective, videos: int) -> tuple[np.ndarray, list[str]]:
  """(clips [N, V, T, H, W, 3] float in [0, 1], a name per view) of the batch's first
  `videos` videos, finished as in the train step."""
  part = {k: np.asarray(batch[k])[:videos] for k in ("video", device.PHOTOMETRIC_KEY)
          if k in batch}
  finished = jax.jit(device.make_finish(data_config))(part)["video"]  # as in the train step
  shown, names = objective.shown_views(finished)
  return np.asarray(shown, np.float32), names


def first_batch(data, objective, videos: int, *, seed: int, batch_size: int
                ) -> tuple[np.ndarray, list[str]]:
  """`views` of the first batch the job's own pipeline gives a fresh run (one process) of
  `data` (config.data) at `seed` in global batches of `batch_size`."""
  batches, _ = input_lib.host_batches(data, objective.sampler(), seed=seed,
                                      batch_size=batch_size, start_step=0,
                                      process_index=0, process_count=1)
  return views(next(iter(batches)), data, objective, videos)


def mosaic(clips: np.ndarray) -> np.ndarray:
  """uint8 [rows, columns, 3]: a row per video, views side by side, frames across, on
  BACKGROUND."""
  n, v, t, h, w, _ = clips.shape
  view_w = t * w + (t - 1) * FRAME_GAP
  out = np.empty((n * h + (n - 1) * ROW_GAP, v * view_w + (v - 1) * VIEW_GAP, 3), np.uint8)
  out[:] = BACKGROUND
  pixels = np.round(np.clip(clips, 0.0, 1.0) * 255).astype(np.uint8)
  for i in range(n):
    for j in range(v):
      for k in range(t):
        y, x = i * (h + ROW_GAP), j * (view_w + VIEW_GAP) + k * (w + FRAME_GAP)
        out[y:y + h, x:x + w] = pixels[i, j, k]
  return out


def view_centres(clips_shape) -> list[float]:
  """The column at the middle of each view of `mosaic` (for labels)."""
  _, v, t, _, w, _ = clips_shape
  view_w = t * w + (t - 1) * FRAME_GAP
  return [j * (view_w + VIEW_GAP) + view_w / 2 for j in range(v)]


def with_tensorboard_picture(batches: Iterable[dict], data, objective, workdir: str,
                             videos: int = 4) -> Iterator[dict]:
  """`batches` unchanged; before the first is handed on, its `mosaic` (finished by `data`,
  config.data) goes to TensorBoard (tag TAG, step 0) in `workdir`."""
  it = iter(batches)
  for batch in it:
    clips, _ = views(batch, data, objective, videos)
    metrics.write_image(workdir, TAG, mosaic(clips))
    yield batch
    break
  yield from it
