"""The 'tfrecord' source: shards of tf.train.SequenceExample (file lists, host split,
checks, parsing, the pipeline's Reader).

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

from cvrl.core import lazy
from cvrl.data.sources import MISSING_KEY, MISSING_LABEL, OK, BAD_LABEL, Reader
from cvrl.data.sources import plain, stated_count

tf = lazy.Module("tensorflow")  # on first use: the synthetic source reads counts without it


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
def record_offsets(path: str) -> tuple[np.ndarray, np.ndarray]:
  """(byte offset, payload length) int64 of every record of one TFRecord file, walking the
  length headers (payloads are skipped: one 8-byte read per record)."""
  offsets, lengths = [], []
  with tf.io.gfile.GFile(path, 'rb') as f:
    size = f.size()
    pos = 0
    while pos < size:
      header = f.read(8)
      if len(header) < 8:
        break
      (length,) = struct.unpack('<Q', header)
      offsets.append(pos)
      lengths.append(length)
      pos += 8 + 4 + length + 4
      f.seek(pos)
  return np.asarray(offsets, np.int64), np.asarray(lengths, np.int64)


def count_records(path: str) -> int:
  """Records in one TFRecord file."""
  return len(record_offsets(path)[0])


class RecordIndex:
  """Where every record of `files` is: example ids (file index << 32 | record index) in
  file then record order, and each one's file, byte offset and length. Built once per
  process from the length headers (`record_offsets`)."""

  def __init__(self, files: Sequence[str], records: Sequence[int] | None = None):
    walked = [record_offsets(f) for f in files]
    keep = [np.arange(len(o)) if records is None else np.asarray(records[i], np.int64)
            for i, (o, _) in enumerate(walked)]
    self.files = list(files)
    self.file = np.concatenate([np.full(len(k), i, np.int64) for i, k in enumerate(keep)])
    self.record = np.concatenate(keep).astype(np.int64)
    self.offset = np.concatenate([o[k] for (o, _), k in zip(walked, keep)]).astype(np.int64)
    self.length = np.concatenate([n[k] for (_, n), k in zip(walked, keep)]).astype(np.int64)
    self.examples = self.file * (2 ** 32) + self.record

  def reader(self, examples=None):
    """position tensor -> Dataset of one (example id, record): the record read at its
    offset (a seek, not a scan of the file)."""
    examples = self.examples if examples is None else np.asarray(examples, np.int64)
    table = [tf.constant(x) for x in (self.files, self.file, self.offset, self.length, examples)]

    def read(position):
      path, offset, length, example = (
          tf.gather(table[0], tf.gather(table[1], position)), tf.gather(table[2], position),
          tf.gather(table[3], position), tf.gather(table[4], position))
      variant = tf.raw_ops.TFRecordDatasetV2(
          filenames=tf.reshape(path, [1]), compression_type='', buffer_size=length + 16,
          byte_offsets=tf.reshape(offset, [1]))
      records = tf.data.experimental.from_variant(variant, tf.TensorSpec([], tf.string))
      return records.take(1).map(plain(lambda record: (example, record)))
    return read


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
    return tf.data.TFRecordDataset(path).enumerate().map(
        plain(lambda i, r: (file_id * (2 ** 32) + i, r)))

  @plain
  def label(example_id, record):
    context, _ = tf.io.parse_single_sequence_example(
        record, context_features={label_key: tf.io.VarLenFeature(tf.int64)})
    values = context[label_key].values
    first = tf.cond(tf.size(values) > 0, lambda: values[0],
                    lambda: tf.constant(MISSING_LABEL, tf.int64))
    return example_id, first

  cycle = max(1, min(int(cycle_length), len(files)))
  ds = tf.data.Dataset.from_tensor_slices((tf.range(len(files), dtype=tf.int64), list(files)))
  ds = ds.interleave(plain(read), cycle_length=cycle, num_parallel_calls=cycle,
                     deterministic=False)
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


# ------------------------------------------------------------------------ the source

def split_paths(data, split: str):
  """The paths config.data gives for `split` ('train': train_paths, else eval_paths)."""
  return data.train_paths if split == 'train' else data.eval_paths


def reader(cfg, paths, seed: int, process_index: int, process_count: int) -> Reader:
  """The pipeline's Reader of the shards `paths` (a glob, globs or a list) on this host."""
  files = resolve_paths(paths)
  check_keys(files[0], cfg.frames_key, cfg.label_key, cfg.require_label)
  ids, by_record = host_partition(len(files), process_index, process_count)
  host_files = tf.constant([files[i] for i in ids])
  host_ids = tf.constant(ids, tf.int64)
  cycle = max(1, min(int(cfg.cycle_length), len(ids)))

  def read(file_id, path):
    records = tf.data.TFRecordDataset(path).enumerate()
    if by_record:
      records = records.filter(plain(lambda i, r: tf.equal(i % process_count, process_index)))
    return records.map(plain(lambda i, r: (file_id * (2 ** 32) + i, r)))

  def epoch_records(epoch):  # evaluation's one pass over this host's files
    del epoch
    order = tf.range(len(ids))
    table = tf.data.Dataset.from_tensor_slices((tf.gather(host_ids, order), tf.gather(host_files, order)))
    return table.interleave(plain(read), cycle_length=cycle, block_length=1,
                            num_parallel_calls=cycle, deterministic=True)

  parse = lambda r: parse_sequence_example(r, cfg.frames_key, cfg.label_key, cfg.require_label)
  counts = None
  try:
    counts = host_record_counts(files, process_count)
  except (OSError, tf.errors.OpError):  # unreadable headers: counted later as parse failures
    counts = None
  all_files = tf.constant(files)

  def describe(example_id):
    return tf.strings.join([tf.gather(all_files, example_id // (2 ** 32)), ', record ',
                            tf.strings.as_string(example_id % (2 ** 32))])

  def labels(count: int):  # all files, whatever this host reads: every host sees the same
    example_ids, values = read_labels(tuple(files), cfg.label_key, int(cfg.cycle_length))
    return example_ids, values, record_hosts(example_ids, len(files), count)
  index = RecordIndex(files)
  return Reader(epoch_records, parse, counts, process_index, describe, labels=labels,
                examples=index.examples, read=index.reader())


def make(data, split: str, seed: int, process_index: int, process_count: int) -> Reader:
  return reader(data, split_paths(data, split), seed, process_index, process_count)


def num_examples(data, split: str) -> int:
  """config.data.num_train_examples (train), else the records of the split's shards."""
  stated = stated_count(data, split)
  if stated is not None:
    return stated
  return int(sum(count_records(f) for f in resolve_paths(split_paths(data, split))))


def check(data, split: str) -> None:
  """Every glob config.data gives matches a file: the split's paths, and the other
  split's when set."""
  keys = ['eval_paths' if split == 'eval' else 'train_paths']
  keys += [k for k in ('train_paths', 'eval_paths') if k not in keys and data[k]]
  for key in keys:
    try:
      resolve_paths(data[key])
    except ValueError as e:
      raise ValueError(f'config.data.{key}: {e}; set --config.data.{key}=GLOB[,GLOB...] '
                       'to the TFRecord shards') from None

