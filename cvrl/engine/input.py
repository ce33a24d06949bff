"""Batches for the trainer: the host pipeline (or a source's own batches) and device prefetch.

`host_batches` yields this host's numpy batches starting at `start_step`, so a resumed run
reads what a run that never stopped would read. `DevicePrefetcher` turns them into global
jax.Arrays in a background thread, a few steps ahead, and measures how long the training
loop waited for data.

A source that gives the trainer numpy batches itself (`Source.batches`, e.g. the tests'
in-memory source) bypasses tf.data; every other source goes through `cvrl.data.pipeline`.
"""
from __future__ import annotations

import queue
import threading
import time
from typing import Any, Iterator, Mapping

from cvrl.core import parallel
from cvrl.data import sources


# ---------------------------------------------------------------------- host batches

class NoStats:
  def as_dict(self) -> dict:
    return {}


def host_batches(config, sampler: Mapping, *, batch_size: int, start_step: int,
                 process_index: int, process_count: int) -> tuple[Iterator[dict], Any]:
  """(iterator of this host's numpy batches from `start_step`, pipeline stats object).

  The stats object has `as_dict()` (the pipeline's skipped/short counts; empty for a
  source that gives its own batches).
  """
  data = config.data
  source = sources.get(data.source)
  if source.batches is not None:
    return source.batches(config, sampler, batch_size=batch_size, start_step=start_step,
                          process_index=process_index, process_count=process_count), NoStats()
  from cvrl.data import pipeline  # pylint: disable=import-outside-toplevel
  # Pretraining is self-supervised: every video, whatever data.label_fraction says.
  ds = pipeline.build_dataset(data, sampler=sampler, train=True, batch_size=batch_size,
                              seed=int(config.seed), start_step=start_step,
                              process_index=process_index, process_count=process_count,
                              label_fraction=1.0)
  stats = pipeline.PipelineStats()
  return pipeline.iterate(ds, stats), stats


# ---------------------------------------------------------------------- device prefetch

class DevicePrefetcher:
  """Global device batches from host batches, assembled `size` steps ahead in a thread.

  `next()` returns (batch, seconds the caller waited). Errors in the producer re-raise in
  the caller.
  """

  def __init__(self, batches: Iterator[Mapping[str, Any]], mesh, size: int = 2,
               keys: tuple[str, ...] | None = None):
    self._batches = batches
    self._mesh = mesh
    self._keys = keys
    self._queue: queue.Queue = queue.Queue(maxsize=max(1, size))
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._produce, name="device_prefetch", daemon=True)
    self._thread.start()

  def _produce(self):
    try:
      for local in self._batches:
        if self._keys is not None:
          local = {k: v for k, v in local.items() if k in self._keys}
        item = parallel.global_batch(local, self._mesh)
        while not self._stop.is_set():
          try:
            self._queue.put(item, timeout=0.1)
            break
          except queue.Full:
            continue
        if self._stop.is_set():
          return
      self._queue.put(StopIteration())
    except BaseException as e:  # pylint: disable=broad-except
      self._queue.put(e)

  def next(self) -> tuple[dict, float]:
    start = time.perf_counter()
    item = self._queue.get()
    waited = time.perf_counter() - start
    if isinstance(item, StopIteration):
      raise StopIteration
    if isinstance(item, BaseException):
      raise item
    return item, waited

  def close(self):
    self._stop.set()
    try:
      while True:
        self._queue.get_nowait()
    except queue.Empty:
      pass
    self._thread.join(timeout=5)
