"""What a training run reports: DIR/metrics.jsonl, TensorBoard events, a progress line.

Only process 0 writes (`enabled`); the others keep the same calls as no-ops, so the loop
does not branch on the process. cvrl's own lines go to stdout through `say` (process 0),
so they show at the default verbosity, where absl/orbax INFO chatter does not.
"""
from __future__ import annotations

import json
import math
from typing import Mapping

import jax

from cvrl.core import paths

METRICS_FILE = "metrics.jsonl"
# Besides the loss, the progress line shows the objective's headline metrics: any whose
# name ends in one of these (contrastive_accuracy, accuracy, ...), when finite.
HEADLINE_SUFFIXES = ("accuracy",)


def say(line: str) -> None:
  """One line of cvrl's log on stdout, from process 0 only."""
  if jax.process_index() == 0:
    print(line, flush=True)


def format_scalars(scalars: Mapping, keys=()) -> str:
  """'k=v ...' of `keys` (default: every float) in `scalars`, NaN left out."""
  keys = keys or [k for k, v in scalars.items() if isinstance(v, float)]
  parts = []
  for k in keys:
    v = scalars.get(k)
    if isinstance(v, float) and math.isfinite(v):
      parts.append(f"{k}={v:.4f}")
    elif isinstance(v, int) and not isinstance(v, bool):
      parts.append(f"{k}={v}")
  return " ".join(parts)


def headline_keys(scalars: Mapping) -> list[str]:
  """The metrics the progress line shows besides the loss (finite values only)."""
  return [k for k, v in scalars.items()
          if k.endswith(HEADLINE_SUFFIXES) and isinstance(v, float) and math.isfinite(v)]


def format_duration(seconds: float) -> str:
  if not math.isfinite(seconds) or seconds < 0:
    return "?"
  seconds = int(round(seconds))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


class MetricWriter:
  """Appends one JSON line per log step and the same scalars to TensorBoard."""

  def __init__(self, workdir: str, *, enabled: bool = True, tensorboard: bool = True):
    self.enabled = enabled
    self._jsonl = None
    self._tb = None
    if not enabled:
      return
    self._jsonl = paths.AppendFile(paths.join(workdir, METRICS_FILE))
    if tensorboard:
      # pylint: disable=import-outside-toplevel
      import tensorflow as tf
      from tensorflow.core.framework import summary_pb2
      self._tf = tf
      self._tb = tf.summary.create_file_writer(workdir)
      # What tensorboard's scalar summary writes, without needing the tensorboard package.
      meta = summary_pb2.SummaryMetadata(data_class=summary_pb2.DATA_CLASS_SCALAR)
      meta.plugin_data.plugin_name = "scalars"
      self._scalar_metadata = meta.SerializeToString()

  def write(self, step: int, scalars: Mapping[str, float]) -> None:
    if not self.enabled:
      return
    row = {"step": int(step)}
    row.update({k: (float(v) if isinstance(v, float) or hasattr(v, "dtype") else v)
                for k, v in scalars.items()})
    self._jsonl.write(json.dumps(row) + "\n")
    self._jsonl.flush()
    if self._tb is not None:
      with self._tb.as_default(step=int(step)):
        for k, v in row.items():
          if k != "step" and isinstance(v, (int, float)):
            self._tf.summary.write(k, self._tf.constant(float(v), self._tf.float32),
                                   metadata=self._scalar_metadata)
      self._tb.flush()

  def log_progress(self, step: int, total: int, scalars: Mapping[str, float],
                   eta_seconds: float) -> None:
    if not self.enabled:
      return
    extra = "".join(f" {k} {scalars[k]:.3f}" for k in headline_keys(scalars))
    say(f"step {step}/{total} ({100.0 * step / max(total, 1):.1f}%) "
        f"loss {scalars.get('loss', float('nan')):.4f}{extra} "
        f"lr {scalars.get('learning_rate', float('nan')):.4g} | "
        f"{scalars.get('clips_per_sec', 0.0):.1f} clips/s, data wait "
        f"{100.0 * scalars.get('data_wait_fraction', 0.0):.0f}% | ETA {format_duration(eta_seconds)}")

  def close(self) -> None:
    if self._jsonl is not None:
      self._jsonl.close()
      self._jsonl = None
    if self._tb is not None:
      self._tb.close()
      self._tb = None


def write_image(workdir: str, tag: str, image, step: int = 0) -> None:
  """An RGB uint8 image [H, W, 3] to TensorBoard's images tab in `workdir` (what
  tensorboard's image summary writes, without needing the tensorboard package)."""
  # pylint: disable=import-outside-toplevel
  import tensorflow as tf
  from tensorflow.core.framework import summary_pb2
  meta = summary_pb2.SummaryMetadata(data_class=summary_pb2.DATA_CLASS_BLOB_SEQUENCE)
  meta.plugin_data.plugin_name = "images"
  h, w = image.shape[:2]
  blob = tf.stack([tf.constant(str(w)), tf.constant(str(h)), tf.io.encode_png(image)])
  writer = tf.summary.create_file_writer(workdir)
  with writer.as_default(step=int(step)):
    tf.summary.write(tag, blob, metadata=meta.SerializeToString())
  writer.close()
