"""Class-balanced labelled subsets of a training split (`data.label_fraction`).

Semi-supervised fine-tuning on 1% / 10% of the labels, as CVRL evaluates it (Qian et al.,
CVPR 2021, sec. 4, after SimCLR's class-balanced 1% / 10% ImageNet subsets): for each class
c with n_c training examples the k_c = max(1, round(fraction * n_c)) examples whose seeded
hash of (data seed, global example id) is smallest are kept. The global example id is the
pipeline's (host-independent), the data seed the job's seed, so the subset is one fixed set
per seed: the same in every job (probe, fine-tune), on any number of hosts, every epoch.

Only the train split of a labelled pipeline (data.require_label) is subset; pretraining
passes label_fraction=1.0 (all videos) and evaluation splits are never subset. The
labels of every training example (all hosts') come from one label pass over the source;
records are then filtered by id before they are parsed, so skipped videos cost no decoding.
Records whose label is invalid (negative, >= num_classes, missing) are all kept: the
pipeline's data.bad_label policy deals with them as without a subset. Choosing and
validating need no TensorFlow; only the pipeline's filter does.
"""
from __future__ import annotations

import dataclasses
import numbers

import numpy as np

FIELD = 'data.label_fraction'
_TAG_SUBSET = 0x5B5E7  # folded into the seed: the subset's hash is its own stream
_M64 = (1 << 64) - 1
_reported: set = set()  # summary lines already printed by this process


def label_fraction(data_config, override=None) -> float:
  """The validated fraction in (0, 1]: `override` if given, else data.label_fraction;
  ValueError naming the field otherwise."""
  value = data_config['label_fraction'] if override is None else override
  ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
  if not ok or not 0.0 < float(value) <= 1.0:
    raise ValueError(f'{FIELD} must be a number in (0, 1] (the fraction of the labelled '
                     f'training examples kept, per class; 1.0 = all), got {value!r}')
  return float(value)


def applies(data_config, split: str, fraction: float) -> bool:
  """Whether the pipeline subsets: the train split of a labelled pipeline, fraction < 1."""
  return split == 'train' and bool(data_config['require_label']) and fraction < 1.0


def _mix(x: np.ndarray) -> np.ndarray:
  """splitmix64's finaliser on uint64 (wrapping arithmetic): a stateless 64-bit hash."""
  x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
  x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
  return x ^ (x >> np.uint64(31))


def hash_keys(ids, seed: int) -> np.ndarray:
  """uint64 key of every example id under `seed`: a pure function of (seed, id)."""
  with np.errstate(over='ignore'):
    s = _mix(np.array([(int(seed) ^ _TAG_SUBSET) & _M64], np.uint64))
    return _mix(np.asarray(ids, np.int64).astype(np.uint64) ^ s)


def _valid(labels: np.ndarray, num_classes: int | None) -> np.ndarray:
  ok = labels >= 0
  return ok & (labels < int(num_classes)) if num_classes else ok


def per_class_quota(counts: np.ndarray, fraction: float) -> np.ndarray:
  """k_c = max(1, round(fraction * n_c)) (round half to even, as Python's round)."""
  return np.maximum(1, np.round(fraction * np.asarray(counts, np.float64))).astype(np.int64)


def select(ids, labels, fraction: float, seed: int, num_classes: int | None = None) -> np.ndarray:
  """Sorted int64 ids kept: per class the quota of smallest hash_keys(id, seed), plus every
  example with an invalid label (left to the pipeline's bad-label policy). The result
  does not depend on the order of `ids`; ids must be unique."""
  ids, labels = np.asarray(ids, np.int64), np.asarray(labels, np.int64)
  valid = _valid(labels, num_classes)
  vid, vlab = ids[valid], labels[valid]
  order = np.lexsort((vid, hash_keys(vid, seed), vlab))  # by class, then key (id breaks ties)
  vid, vlab = vid[order], vlab[order]
  _, starts, counts = np.unique(vlab, return_index=True, return_counts=True)
  quota = per_class_quota(counts, fraction)
  rank = np.arange(len(vid)) - np.repeat(starts, counts)
  keep = rank < np.repeat(quota, counts)
  return np.sort(np.concatenate([vid[keep], ids[~valid]]))


def subset_size(labels, fraction: float, num_classes: int | None = None) -> tuple[int, int, int]:
  """(usable examples kept, fewest per class, most per class): seed-independent."""
  labels = np.asarray(labels, np.int64)
  _, counts = np.unique(labels[_valid(labels, num_classes)], return_counts=True)
  if not len(counts):
    return 0, 0, 0
  quota = per_class_quota(counts, fraction)
  return int(quota.sum()), int(quota.min()), int(quota.max())


def source_labels(source, process_count: int):
  """(ids, labels, hosts) of every training example of a `sources.Reader` (its label
  pass); ValueError when the source cannot list them."""
  if source.labels is None:
    raise ValueError(f'{FIELD} < 1 needs the labels of the training examples, which this '
                     'source cannot list')
  return source.labels(int(process_count))


def restrict(source, fraction: float, seed: int, num_classes: int | None, process_count: int):
  """`source` (a `sources.Reader`) reading only the subset: training's positions those of
  the subset, evaluation's records filtered by id before parsing, its per-host counts
  those of the subset. One summary line."""
  ids, labels, hosts = source_labels(source, process_count)
  kept = select(ids, labels, fraction, seed, num_classes)
  size, lo, hi = subset_size(labels, fraction, num_classes)
  if not size:
    raise ValueError(f'{FIELD}={fraction}: the training split has no usable labelled example')
  line = (f'{FIELD}={fraction:g}: {size} of {len(ids)} training videos kept, {lo}-{hi} '
          f'per class (seed {seed})')
  if source.process_index == 0 and line not in _reported:
    _reported.add(line)
    print(line, flush=True)
  host_counts = np.bincount(hosts[np.isin(ids, kept)], minlength=process_count)
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  table = tf.lookup.StaticHashTable(
      tf.lookup.KeyValueTensorInitializer(tf.constant(kept, tf.int64),
                                          tf.ones([len(kept)], tf.int64)), default_value=0)
  records = source.epoch_records

  def epoch_records(epoch):
    return records(epoch).filter(
        tf.autograph.experimental.do_not_convert(lambda i, record: table.lookup(i) > 0))
  positions = None if source.examples is None else np.flatnonzero(np.isin(source.examples, kept))
  return dataclasses.replace(source, epoch_records=epoch_records, positions=positions,
                             host_counts=[int(c) for c in host_counts])
