"""What a training run reports: DIR/metrics.jsonl, TensorBoard events, a progress line.

Only process 0 writes (`enabled`); the others keep the same calls as no-ops, so the loop
does not branch on the process.
"""
from __future__ import annotations

import json
import math
import os
from typing import Mapping

from absl import logging

METRICS_FILE = "metrics.jsonl"


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
    os.makedirs(workdir, exist_ok=True)
    self._jsonl = open(os.path.join(workdir, METRICS_FILE), "a", encoding="utf-8")
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
    logging.info(
        "step %d/%d (%.1f%%) loss %.4f acc %.3f lr %.4g | %.1f clips/s, data wait %.0f%% | ETA %s",
        step, total, 100.0 * step / max(total, 1), scalars.get("loss", float("nan")),
        scalars.get("contrastive_accuracy", float("nan")),
        scalars.get("learning_rate", float("nan")), scalars.get("clips_per_sec", 0.0),
        100.0 * scalars.get("data_wait_fraction", 0.0), format_duration(eta_seconds))

  def close(self) -> None:
    if self._jsonl is not None:
      self._jsonl.close()
      self._jsonl = None
    if self._tb is not None:
      self._tb.close()
      self._tb = None
