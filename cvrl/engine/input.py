"""Batches for the trainer: the host pipeline (or a source's own batches) and device prefetch.

`host_batches` yields this host's numpy batches starting at `start_step`, so a resumed run
reads what a run that never stopped would read. `DevicePrefetcher` turns them into global
jax.Arrays (`global_batch`) in a background thread, a few steps ahead, and measures how long the training
loop waited for data.

A source that gives the trainer numpy batches itself (its `batches`, e.g. the tests'
in-memory source) bypasses tf.data; every other source goes through `cvrl.data.pipeline`.
"""
from __future__ import annotations

import json
import queue
import threading
import time
from typing import Any, Iterator, Mapping

import jax
import numpy as np

from cvrl.core import parallel
from cvrl.core.errors import ConfigError
from cvrl.data import sources
from cvrl.engine import metrics as metrics_lib

# What defines the training stream (cvrl.data.order): which examples, in which order, in
# which global batches. A resume must read the stream it was reading.
STREAM_FIELDS = ('batch_size', 'seed', 'data.source', 'data.train_paths', 'data.tfds_name',
                 'data.tfds_data_dir', 'data.tfds_train_split', 'data.synthetic',
                 'data.label_fraction')
OVERRIDE = 'data.resume_new_stream'


# ---------------------------------------------------------------------- host batches

class NoStats:
  def as_dict(self) -> dict:
    return {}


def host_batches(data, sampler: Mapping, *, seed: int, batch_size: int, start_step: int,
                 process_index: int, process_count: int) -> tuple[Iterator[dict], Any]:
  """(iterator of this host's numpy batches of `data` (config.data) from `start_step`, the
  stream seeded by `seed`; pipeline stats object).

  The stats object has `as_dict()` (the pipeline's skipped/short counts; empty for a
  source that gives its own batches).
  """
  started = time.perf_counter()
  own_batches = getattr(sources.get(data.source), "batches", None)
  if own_batches is not None:
    return own_batches(data, sampler, seed=seed, batch_size=batch_size, start_step=start_step,
                       process_index=process_index, process_count=process_count), NoStats()
  from cvrl.data import pipeline  # pylint: disable=import-outside-toplevel
  # Pretraining is self-supervised: every video, whatever data.label_fraction says.
  ds = pipeline.build_dataset(data, sampler=sampler, train=True, batch_size=batch_size,
                              seed=int(seed), start_step=start_step,
                              process_index=process_index, process_count=process_count,
                              label_fraction=1.0)
  stats = pipeline.PipelineStats()
  batches = pipeline.iterate(ds, stats)
  return (_timed_resume(batches, start_step, started) if start_step else batches), stats


def _field(record, name: str):
  value = record
  for part in name.split('.'):
    value = value.get(part) if hasattr(value, 'get') else None
  return value


def _leaves(value, name: str) -> dict:
  """{dotted field: JSON value} of `value` (a sub-config or dict: each of its leaves)."""
  value = value.to_dict() if hasattr(value, 'to_dict') else value
  if isinstance(value, dict):
    return {k: v for key in sorted(value) for k, v in _leaves(value[key], f'{name}.{key}').items()}
  return {name: json.loads(json.dumps(value, default=str))}


def check_resume(saved, record: dict) -> None:
  """ConfigError (one line naming the field) when the run whose config is `record` (as
  JSON values, config_lib.as_dict) would read another stream than the checkpoint's config
  `saved`; with data.resume_new_stream one warning line instead."""
  for name in STREAM_FIELDS:
    was, now = _leaves(_field(saved, name), name), _leaves(_field(record, name), name)
    for field in sorted(set(was) | set(now)):
      if was.get(field) != now.get(field):
        _mismatch(field, was.get(field), now.get(field),
                  bool(record['data']['resume_new_stream']))
        return


def _mismatch(field: str, was, now, new_stream: bool) -> None:
  line = (f'{field} is {now!r} but the checkpoint resumed was made with {was!r}: the run '
          'would not read the data stream it was reading')
  if new_stream:
    metrics_lib.say(f'warning: {line}; going on with the new stream ({OVERRIDE}=True)')
    return
  raise ConfigError(f"{line}; resume with the checkpoint's value, or set "
                    f'--config.{OVERRIDE}=True to go on with a new stream')


def _timed_resume(batches: Iterator[dict], start_step: int, started: float) -> Iterator[dict]:
  """`batches`, saying at the first one how long the data took to resume (from `started`)."""
  first = next(batches)
  metrics_lib.say(f'data resumed at step {start_step} in {time.perf_counter() - started:.2f} s '
                  '(its place computed from the global order: nothing before it read)')
  yield first
  yield from batches


# ---------------------------------------------------------------------- device prefetch

def global_batch(local: Mapping[str, Any], mesh=None) -> dict[str, jax.Array]:
  """Host-local numpy batch -> global jax.Arrays sharded over 'data' of `mesh` (the run's;
  a thread of its own, like the prefetcher, names it: the run's mesh is per thread).

  Every process passes its own rows (the same count on each); the global batch is their
  concatenation in process order. Transfers are asynchronous.
  """
  sharding = parallel.batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in local.items()}


class DevicePrefetcher:
  """Global device batches from host batches, assembled `size` steps ahead in a thread.

  `next()` returns (batch, seconds the caller waited). Errors in the producer re-raise in
  the caller.
  """

  def __init__(self, batches: Iterator[Mapping[str, Any]], sharding, size: int = 2,
               keys: tuple[str, ...] | None = None):
    self._batches = batches
    self._mesh = sharding.mesh  # sharding: the batch's (cvrl.core.parallel.batch_sharding)
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
        item = global_batch(local, self._mesh)
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
