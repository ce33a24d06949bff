"""The 'tfds' source: TFDS video datasets (e.g. 'ucf101').

Frames are read still encoded when the dataset stores JPEG frames (SkipDecoding), so the
pipeline samples on the strings and decodes only the chosen frames, as for TFRecords;
otherwise TFDS decodes and the pipeline samples the uint8 frames. Hosts read disjoint
`tfds.even_splits` of the split for evaluation. Training reads the split's TFRecord files
by record offset in the global order (cvrl.data.order), each host only its rows of each
global batch; example ids are a hash of the tfds_id (file name and record index).
"""
from __future__ import annotations

import functools
import os

import numpy as np
import tensorflow as tf

from cvrl.data.sources import MISSING_KEY, OK, Reader, plain, stated_count
from cvrl.data.sources import tfrecord


def _stored_as_jpeg(feature) -> bool:
  fmt = getattr(feature, '_encoding_format', None) or getattr(
      getattr(feature, 'feature', None), '_encoding_format', None)
  return fmt == 'jpeg'


def _builder(cfg):
  """The TFDS builder of config.data.tfds_* (ValueError when there is none)."""
  import tensorflow_datasets as tfds
  if not cfg.tfds_name:
    raise ValueError("data.source is 'tfds' but data.tfds_name is empty")
  try:
    return tfds.builder(cfg.tfds_name, data_dir=cfg.tfds_data_dir or None)
  except Exception as e:  # DatasetNotFoundError and friends
    raise ValueError(f'TFDS dataset {cfg.tfds_name!r} not found: {str(e).splitlines()[0]}') from e


def _split_name(cfg, split: str) -> str:
  return cfg.tfds_train_split if split == 'train' else cfg.tfds_eval_split


def make(cfg, split: str, seed: int, process_index: int, process_count: int) -> Reader:
  """The pipeline's Reader for config.data.tfds_* (ValueError when unusable)."""
  import tensorflow_datasets as tfds
  builder = _builder(cfg)
  features = builder.info.features
  for key, field in ((cfg.tfds_video_key, 'tfds_video_key'), (cfg.tfds_label_key, 'tfds_label_key')):
    if key not in features:
      raise ValueError(f'TFDS dataset {cfg.tfds_name!r} has no feature {key!r} (data.{field}); '
                       f'it has {sorted(features.keys())}')
  split_name = _split_name(cfg, split)
  host_split = tfds.even_splits(split_name, n=process_count)[process_index] if process_count > 1 \
      else split_name
  counts = None
  try:
    if builder.info.splits:
      counts = [builder.info.splits[s].num_examples
                for s in tfds.even_splits(split_name, n=process_count)]
  except (KeyError, ValueError) as e:
    raise ValueError(f'TFDS dataset {cfg.tfds_name!r} has no split {split_name!r}: {e}') from e
  decoders = None
  if _stored_as_jpeg(features[cfg.tfds_video_key]):
    decoders = {cfg.tfds_video_key: tfds.decode.SkipDecoding()}
  video_key, label_key = cfg.tfds_video_key, cfg.tfds_label_key

  def epoch_records(epoch):  # evaluation's one pass, in file order
    del epoch
    read_config = tfds.ReadConfig(add_tfds_id=True)
    try:
      ds = builder.as_dataset(split=host_split, shuffle_files=False, decoders=decoders,
                              read_config=read_config)
    except Exception as e:  # not prepared, bad split
      raise ValueError(f'TFDS dataset {cfg.tfds_name!r} split {host_split!r} cannot be read '
                       f'(is it prepared in data_dir?): {str(e).splitlines()[0]}') from e
    return ds.map(plain(
        lambda ex: (tf.strings.to_hash_bucket_fast(ex['tfds_id'], 2 ** 62),
                    {'video': ex[video_key], 'label': ex[label_key]})))

  def parse(record):
    frames = record['video']
    label = tf.cast(record['label'], tf.int32)
    status = tf.where(tf.equal(tf.shape(frames)[0], 0), MISSING_KEY, OK)
    return frames, label, status

  epoch_records(tf.constant(0, tf.int64))  # fail at build time, not mid-run

  def describe(example_id):
    return tf.strings.join([f'TFDS {cfg.tfds_name} split {host_split!r}, example hash ',
                            tf.strings.as_string(example_id)])
  # The ClassLabel's class count: labels are checked against it unless data.num_classes is set.
  num_classes = getattr(features[cfg.tfds_label_key], 'num_classes', None)

  def labels(count: int):  # every host's part: all hosts compute the same label subset
    return _read_labels(cfg.tfds_name, cfg.tfds_data_dir or None, split_name, label_key, count)
  examples, read = _random_access(builder, split_name, decoders, video_key, label_key)
  return Reader(epoch_records, parse, counts, process_index, describe, num_classes,
                labels=labels, examples=examples, read=read)


def _random_access(builder, split_name: str, decoders, video_key: str, label_key: str):
  """(example ids, position -> Dataset of one (id, record)) of a prepared TFRecord split,
  read at each record's offset (training's global order); (None, None) when the split
  is not TFRecord files (then training cannot read it)."""
  try:
    instructions = builder.info.splits[split_name].file_instructions
    if str(getattr(builder.info.file_format, 'value', 'tfrecord')) != 'tfrecord':
      return None, None
    index = tfrecord.RecordIndex([f.filename for f in instructions],
                                 [np.arange(f.skip, f.skip + f.take) for f in instructions])
  except (KeyError, ValueError, OSError, tf.errors.OpError):
    return None, None
  names = [f'{os.path.basename(index.files[f])}__{r}' for f, r in zip(index.file, index.record)]
  examples = tf.strings.to_hash_bucket_fast(tf.constant(names, tf.string), 2 ** 62).numpy() \
      if names else np.zeros([0], np.int64)
  read_record = index.reader(examples)
  features = builder.info.features

  def read(position):
    @plain
    def fields(example_id, record):
      ex = features.deserialize_example(record, decoders=decoders)
      return example_id, {'video': ex[video_key], 'label': ex[label_key]}
    return read_record(position).map(fields)
  return examples, read


@functools.lru_cache(maxsize=8)
def _read_labels(name: str, data_dir, split_name: str, label_key: str, process_count: int):
  """(ids, labels, hosts) int64 of every example of the split (ids as the pipeline's: a
  hash of the tfds_id; hosts: whose even split holds it). Only the label is decoded."""
  import tensorflow_datasets as tfds
  builder = tfds.builder(name, data_dir=data_dir)
  parts = tfds.even_splits(split_name, n=process_count) if process_count > 1 else [split_name]
  ids, labels, hosts = [], [], []
  for host, part in enumerate(parts):
    ds = builder.as_dataset(split=part, shuffle_files=False,
                            read_config=tfds.ReadConfig(add_tfds_id=True),
                            decoders=tfds.decode.PartialDecoding({label_key: True}))
    ds = ds.map(plain(
        lambda ex: (tf.strings.to_hash_bucket_fast(ex['tfds_id'], 2 ** 62),
                    tf.cast(ex[label_key], tf.int64))), num_parallel_calls=tf.data.AUTOTUNE)
    for i, y in ds.batch(65536).as_numpy_iterator():
      ids.append(i)
      labels.append(y)
      hosts.append(np.full(len(i), host, np.int64))
  cat = lambda xs: np.concatenate(xs).astype(np.int64) if xs else np.zeros([0], np.int64)
  return cat(ids), cat(labels), cat(hosts)


def num_classes(cfg) -> int | None:
  """The label ClassLabel's class count."""
  return getattr(_builder(cfg).info.features[cfg.tfds_label_key], 'num_classes', None)


def num_examples(cfg, split: str) -> int:
  """config.data.num_train_examples (train), else the split's size in the dataset info."""
  stated = stated_count(cfg, split)
  if stated is not None:
    return stated
  return int(_builder(cfg).info.splits[_split_name(cfg, split)].num_examples)

