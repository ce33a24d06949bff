"""Data sources: where videos come from, one module per source.

A source is one module of this package, found by its name (`config.data.source`,
cvrl.core.discovery; a dotted name is a module outside the package, e.g. the tests'
in-memory batches). Its entry point `make(data, split, seed, process_index, process_count)`
opens a split for reading (a `Reader`; ValueError when unusable). It may also define
  num_classes(data): the class count the source knows, or None;
  num_examples(data, split): videos in the split (may count them), or None;
  check(data, split): None, or ValueError (one line) when what a job reading `split`
    needs is missing (main's checks, before the workdir is touched);
  prepare(data, split): write what `make` will read (e.g. the synthetic source renders
    its shards), once; every job calls it (`prepare` below) before it builds a pipeline,
    and `make` itself writes nothing;
  batches(data, sampler, *, seed, batch_size, start_step, process_index, process_count):
    for a source outside tf.data, the iterator of numpy batches the trainer reads.
A new source is one new file: nothing else lists the sources.

The sources here: `tfrecord` (SequenceExample shards, the reference layout), `tfds` (TFDS
video datasets), `synthetic` (procedural videos written as TFRecord shards).

What the pipeline reads from a source is a `Reader` (records as a tf.data dataset, their
parser, counts and labels); the jobs ask the source for its class and example counts
(`num_classes`, `num_examples`, `labelled_subset_size`). This module imports neither
TensorFlow nor JAX: a source's module may.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

from cvrl.core import discovery
from cvrl.core import lazy
from cvrl.data import subset

# Status of a parsed example, carried through the pipeline and counted.
OK, MISSING_KEY, SHORT_PADDED, SHORT_SKIPPED, BAD_LABEL = 0, 1, 2, 3, 4
# Label policy (data.bad_label) for a label outside [0, num_classes) or missing in a
# labelled job: 'error' stops the job naming the record, 'skip' counts and skips it.
BAD_LABEL_POLICIES = ('error', 'skip')
MISSING_LABEL = -2 ** 31  # the label of a record without one in a labelled job
SPLITS = ('train', 'eval')

_tf = lazy.Module('tensorflow')  # on first use: this module imports no TensorFlow


def plain(fn):
  """fn as tf.data traces it as written, not converted by autograph: every tf.data function
  of the sources and the pipeline (their Python `if`s are on Python values; tensors branch
  with tf.cond / tf.where). Autograph's conversion was most of a pipeline's build time."""
  return _tf.autograph.experimental.do_not_convert(fn)


@dataclasses.dataclass
class Reader:
  """What the pipeline reads from a source for one split on one host (tf.data)."""
  epoch_records: Callable   # epoch tensor -> Dataset of (example_id, record): this host's
                            # part of an evaluation pass
  parse: Callable           # record -> (frames [L] (JPEG strings or uint8 frames), label, status)
  host_counts: list | None  # records per host (None if unknown)
  process_index: int
  describe: Callable | None = None  # example id tensor -> string tensor naming the record
  num_classes: int | None = None  # what the source knows (labels are checked against it)
  # process_count -> (ids, labels, hosts) int64 of EVERY host's records (a label pass, for
  # data.label_fraction; None if the source cannot list them).
  labels: Callable | None = None
  # Training reads by position (cvrl.data.order): example ids int64 [n] of the split in the
  # source's fixed order, and position tensor -> Dataset of one (example_id, record).
  examples: object | None = None
  read: Callable | None = None
  positions: object | None = None  # the positions training draws from (None: all; a subset)


def get(name: str):
  """The module of source `name` (cvrl.core.discovery: cvrl/data/sources/<name>.py, or a
  dotted module path), ValueError listing the sources when there is none."""
  return discovery.module(__name__, name, 'data.source')


def names() -> list[str]:
  """Every source of this package."""
  return discovery.names(__name__)


def make(data, split: str, *, seed: int, process_index: int, process_count: int) -> Reader:
  """The Reader of config.data's source for `split` on this host."""
  return get(data.source).make(data, split, int(seed), int(process_index), int(process_count))


def num_classes(data) -> int:
  """Classes of the labelled dataset: config.data.num_classes, or what the source knows."""
  if data['num_classes']:
    return int(data.num_classes)
  count = getattr(get(data.source), 'num_classes', None)
  known = count(data) if count else None
  if not known:
    raise ValueError(f'set config.data.num_classes for a {data.source} dataset (the source '
                     'does not know its class count)')
  return int(known)


def stated_count(data, split: str) -> int | None:
  """config.data.num_train_examples for the train split (a count the user gave), else None."""
  if split == 'train' and data['num_train_examples']:
    return int(data.num_train_examples)
  return None


def num_examples(data, split: str = 'train', process_count: int = 1) -> int:
  """Videos in a split, as the source says (see each source). With data.label_fraction < 1
  the train split of a labelled job is its class-balanced subset, counted by a label pass
  (the pipeline's)."""
  if split == 'train' and subset.applies(data, split, subset.label_fraction(data)):
    return int(labelled_subset_size(data, process_count))
  counter = getattr(get(data.source), 'num_examples', None)
  count = counter(data, split) if counter else None
  if count is None:
    raise ValueError(f'the {data.source} source cannot count the videos of its {split} split '
                     '(set config.data.num_train_examples)')
  return int(count)


def labelled_subset_size(data, process_count: int = 1) -> int | None:
  """Training examples a labelled job reads under data.label_fraction < 1 (the per-class
  quotas' sum, from a label pass shared with the pipeline); None when it reads them all."""
  fraction = subset.label_fraction(data)
  if not subset.applies(data, 'train', fraction):
    return None
  reader = make(data, 'train', seed=0, process_index=0, process_count=int(process_count))
  _, labels, _ = subset.source_labels(reader, process_count)
  classes = data['num_classes'] or reader.num_classes
  return subset.subset_size(labels, fraction, classes)[0]


def prepare(data, splits: Sequence[str] = SPLITS) -> None:
  """Makes config.data's source ready to open for each of `splits` (names of SPLITS; its
  `prepare`: the synthetic source writes its shards; a source without one reads what is
  there)."""
  if isinstance(splits, str):
    raise TypeError(f'splits is a sequence of split names, e.g. [{splits!r}]')
  source_prepare = getattr(get(data.source), 'prepare', None)
  if source_prepare is None:
    return
  for split in splits:
    source_prepare(data, split)


def check(data, split: str) -> None:
  """What a job reading `split` needs from config.data's source is there (ValueError)."""
  source_check = getattr(get(data.source), 'check', None)
  if source_check is not None:
    source_check(data, split)
