"""TFRecord shards of tf.train.SequenceExample: file lists, host split, checks, parsing.

The format users already have (DMVR / the reference CVRL code): feature list
`image/encoded` (one JPEG per frame), context `clip/label/index` (int64); key names are
configurable. Problems that would make a whole run useless (no files, wrong keys) raise
a ValueError at build time; problems with single records are left to the pipeline,
which skips and counts them.
"""
from __future__ import annotations

import functools
import struct
from typing import Sequence

import numpy as np
import tensorflow as tf

# Status of a parsed example, carried through the pipeline and counted.
OK, MISSING_KEY, SHORT_PADDED, SHORT_SKIPPED, BAD_LABEL = 0, 1, 2, 3, 4
# Label policy (data.bad_label) for a label outside [0, num_classes) or missing in a
# labelled job: 'error' stops the job naming the record, 'skip' counts and skips it.
BAD_LABEL_POLICIES = ('error', 'skip')
MISSING_LABEL = -2 ** 31  # the label of a record without one in a labelled job


def resolve_paths(paths) -> list[str]:
  """Sorted unique files from a glob, comma-separated globs or a list; ValueError if none."""
  if isinstance(paths, str):
    patterns = [p.strip() for p in paths.split(',') if p.strip()]
  else:
    patterns = [str(p) for p in paths]
  if not patterns:
    raise ValueError('no TFRecord paths given (data.train_paths / data.eval_paths is empty)')
  files = set()
  for pattern in patterns:
    matched = tf.io.gfile.glob(pattern)
    if not matched:
      raise ValueError(f'TFRecord path or glob {pattern!r} matches no file')
    files.update(matched)
  return sorted(files)


def host_partition(num_files: int, process_index: int, process_count: int) -> tuple[list[int], bool]:
  """File indices this host reads, and whether records must be sharded instead.

  With at least one file per host, host i reads files i, i + n, i + 2n ... (disjoint).
  With fewer files than hosts every host reads all files and keeps every n-th record.
  """
  if not 0 <= process_index < process_count:
    raise ValueError(f'process_index {process_index} not in [0, {process_count})')
  if num_files >= process_count:
    return list(range(process_index, num_files, process_count)), False
  return list(range(num_files)), True


@functools.lru_cache(maxsize=4096)
def count_records(path: str) -> int:
  """Records in one TFRecord file, walking the length headers (payloads are skipped)."""
  n = 0
  with tf.io.gfile.GFile(path, 'rb') as f:
    size = f.size()
    pos = 0
    while pos < size:
      header = f.read(8)
      if len(header) < 8:
        break
      (length,) = struct.unpack('<Q', header)
      pos += 8 + 4 + length + 4
      f.seek(pos)
      n += 1
  return n


def host_record_counts(files: Sequence[str], process_count: int) -> list[int]:
  """Number of records each host reads under `host_partition`."""
  counts = [count_records(f) for f in files]
  out = []
  for p in range(process_count):
    ids, by_record = host_partition(len(files), p, process_count)
    if by_record:
      out.append(sum(len(range(p, c, process_count)) for c in counts))
    else:
      out.append(sum(counts[i] for i in ids))
  return out


@functools.lru_cache(maxsize=8)
def read_labels(files: tuple, label_key: str, cycle_length: int = 8):
  """(ids, labels) int64 of every record of `files`: the pipeline's global ids (file index
  << 32 | record index) and the context label (MISSING_LABEL when absent). Only the label
  is parsed; records that do not parse are left out. Cached: several pipelines of one job
  share one pass."""
  def read(file_id, path):
    return tf.data.TFRecordDataset(path).enumerate().map(lambda i, r: (file_id * (2 ** 32) + i, r))

  def label(example_id, record):
    context, _ = tf.io.parse_single_sequence_example(
        record, context_features={label_key: tf.io.VarLenFeature(tf.int64)})
    values = context[label_key].values
    first = tf.cond(tf.size(values) > 0, lambda: values[0],
                    lambda: tf.constant(MISSING_LABEL, tf.int64))
    return example_id, first

  cycle = max(1, min(int(cycle_length), len(files)))
  ds = tf.data.Dataset.from_tensor_slices((tf.range(len(files), dtype=tf.int64), list(files)))
  ds = ds.interleave(read, cycle_length=cycle, num_parallel_calls=cycle, deterministic=False)
  ds = ds.map(label, num_parallel_calls=tf.data.AUTOTUNE, deterministic=False).ignore_errors()
  parts = list(ds.batch(65536).as_numpy_iterator())
  ids = np.concatenate([p[0] for p in parts]) if parts else np.zeros([0], np.int64)
  labels = np.concatenate([p[1] for p in parts]) if parts else np.zeros([0], np.int64)
  return ids.astype(np.int64), labels.astype(np.int64)


def record_hosts(ids, num_files: int, process_count: int):
  """The host (under `host_partition`) that reads each global record id."""
  ids = np.asarray(ids, np.int64)
  if num_files >= process_count:
    return (ids // (2 ** 32)) % process_count
  return (ids % (2 ** 32)) % process_count


def check_keys(path: str, frames_key: str, label_key: str, require_label: bool) -> None:
  """Parse the first record of `path` and fail early, naming the keys it does have."""
  record = next(iter(tf.data.TFRecordDataset(path).take(1)), None)
  if record is None:
    return  # empty shard: nothing to check
  example = tf.train.SequenceExample.FromString(record.numpy())
  lists = sorted(example.feature_lists.feature_list.keys())
  context = sorted(example.context.feature.keys())
  if frames_key not in example.feature_lists.feature_list:
    raise ValueError(f'{path}: feature list {frames_key!r} (data.frames_key) not found; '
                     f'the records have feature lists {lists} and context {context}')
  if require_label and label_key not in example.context.feature:
    raise ValueError(f'{path}: context feature {label_key!r} (data.label_key) not found; '
                     f'the records have context {context} (set data.require_label=False '
                     'for unlabelled pretraining data)')


def parse_sequence_example(record, frames_key: str, label_key: str, require_label: bool):
  """(frames [L] JPEG strings, label int32, status) from a serialized SequenceExample."""
  context, sequence = tf.io.parse_single_sequence_example(
      record,
      context_features={label_key: tf.io.VarLenFeature(tf.int64)},
      sequence_features={frames_key: tf.io.FixedLenSequenceFeature([], tf.string,
                                                                   allow_missing=True)})
  frames = sequence[frames_key]
  labels = context[label_key].values
  has_label = tf.size(labels) > 0
  label = tf.cond(has_label, lambda: tf.cast(labels[0], tf.int32), lambda: tf.constant(-1))
  status = tf.where(tf.equal(tf.size(frames), 0), MISSING_KEY, OK)
  if require_label:  # a missing label is a bad label (the pipeline applies data.bad_label)
    status = tf.where(tf.logical_and(tf.equal(status, OK), tf.logical_not(has_label)),
                      BAD_LABEL, status)
    label = tf.where(has_label, label, MISSING_LABEL)
  return frames, label, status


def check_label(label, status, num_classes: int | None):
  """`status` with BAD_LABEL where a usable record's label is negative or >= num_classes
  (None: only negative labels are bad)."""
  bad = label < 0
  if num_classes:
    bad = tf.logical_or(bad, label >= int(num_classes))
  return tf.where(tf.logical_and(tf.equal(status, OK), bad), BAD_LABEL, status)


def make_sequence_example(frames: Sequence[bytes], label: int | None, text: str | None = None,
                          frames_key: str = 'image/encoded',
                          label_key: str = 'clip/label/index',
                          text_key: str = 'clip/label/text') -> tf.train.SequenceExample:
  """A SequenceExample in the reference layout (used by the converter and synthetic data)."""
  ex = tf.train.SequenceExample()
  if label is not None:
    ex.context.feature[label_key].int64_list.value.append(int(label))
  if text is not None:
    ex.context.feature[text_key].bytes_list.value.append(text.encode('utf-8'))
  fl = ex.feature_lists.feature_list[frames_key]
  for f in frames:
    fl.feature.add().bytes_list.value.append(f)
  return ex
