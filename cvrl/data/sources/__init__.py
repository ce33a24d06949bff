"""Data sources: where videos come from, one module per source.

A source is one module of this package that defines `SOURCE = Source(...)`; its name is
the module's name (`config.data.source`). `names()` scans the package, `get(name)` imports
the module. A new source is one new file: nothing else lists the sources. Sources outside
the package (the tests' in-memory batches) call `register`.

The sources here: `tfrecord` (SequenceExample shards, the reference layout), `tfds` (TFDS
video datasets), `synthetic` (procedural videos written as TFRecord shards).

What the pipeline reads from a source is a `Reader` (records as a tf.data dataset, their
parser, counts and labels); the jobs ask the source for its class and example counts
(`num_classes`, `num_examples`, `labelled_subset_size`). This module imports neither
TensorFlow nor JAX: a source's module may.
"""
from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from typing import Callable

# Status of a parsed example, carried through the pipeline and counted.
OK, MISSING_KEY, SHORT_PADDED, SHORT_SKIPPED, BAD_LABEL = 0, 1, 2, 3, 4
# Label policy (data.bad_label) for a label outside [0, num_classes) or missing in a
# labelled job: 'error' stops the job naming the record, 'skip' counts and skips it.
BAD_LABEL_POLICIES = ('error', 'skip')
MISSING_LABEL = -2 ** 31  # the label of a record without one in a labelled job
SPLITS = ('train', 'eval')


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


def _unknown_count(data, *args):
  return None


@dataclasses.dataclass(frozen=True)
class Source:
  """One data source.

  open: (data config, split, seed, process_index, process_count) -> Reader, the records of
    `split` ('train' or 'eval') this host reads. ValueError when unusable.
  num_classes: data config -> the class count the source knows, or None.
  num_examples: (data config, split) -> videos in the split (may count them), or None.
  check: (data config, split) -> None, or ValueError (one line) when what a job reading
    `split` needs is missing (main's checks, before the workdir is touched).
  batches: for sources outside tf.data only: (config, sampler, batch_size, start_step,
    process_index, process_count) -> iterator of numpy batches (the trainer's input).
  """
  name: str
  open: Callable | None = None
  num_classes: Callable = _unknown_count
  num_examples: Callable = _unknown_count
  check: Callable | None = None
  batches: Callable | None = None


_REGISTRY: dict[str, Source] = {}


def register(source: Source) -> Source:
  """Add a source defined outside this package (a module here needs only `SOURCE`)."""
  _REGISTRY[source.name] = source
  return source


def _modules() -> list[str]:
  return [m.name for m in pkgutil.iter_modules(__path__)
          if not m.name.startswith('_') and not m.ispkg]


def names() -> list[str]:
  """Every source name: the modules of this package and the registered sources."""
  return sorted(set(_modules()) | set(_REGISTRY))


def get(name: str) -> Source:
  """The source called `name` (ValueError listing the names when there is none)."""
  name = str(name)
  if name not in _REGISTRY:
    if name not in _modules():
      raise ValueError(f'data.source {name!r} is not a source; the sources are: '
                       f'{", ".join(names())}')
    module = importlib.import_module(f'{__name__}.{name}')
    source = getattr(module, 'SOURCE', None)
    if not isinstance(source, Source) or source.name != name:
      raise ValueError(f'{module.__name__} must define SOURCE = Source({name!r}, ...)')
    _REGISTRY[name] = source
  return _REGISTRY[name]


def make(data, split: str, *, seed: int, process_index: int, process_count: int) -> Reader:
  """The Reader of config.data's source for `split` on this host."""
  source = get(data.source)
  if source.open is None:
    raise ValueError(f'data.source {source.name!r} has no tf.data reader (it gives batches '
                     'to the trainer only)')
  return source.open(data, split, int(seed), int(process_index), int(process_count))


def num_classes(data) -> int:
  """Classes of the labelled dataset: config.data.num_classes, or what the source knows."""
  if data.get('num_classes'):
    return int(data.num_classes)
  known = get(data.source).num_classes(data)
  if not known:
    raise ValueError(f'set config.data.num_classes for a {data.source} dataset (the source '
                     'does not know its class count)')
  return int(known)


def stated_count(data, split: str) -> int | None:
  """config.data.num_train_examples for the train split (a count the user gave), else None."""
  if split == 'train' and data.get('num_train_examples'):
    return int(data.num_train_examples)
  return None


def num_examples(data, split: str = 'train', process_count: int = 1) -> int:
  """Videos in a split, as the source says (see each source). With data.label_fraction < 1
  the train split of a labelled job is its class-balanced subset, counted by a label pass
  (the pipeline's)."""
  from cvrl.data import subset  # pylint: disable=import-outside-toplevel
  if split == 'train' and subset.applies(data, split, subset.label_fraction(data)):
    return int(labelled_subset_size(data, process_count))
  count = get(data.source).num_examples(data, split)
  if count is None:
    raise ValueError(f'the {data.source} source cannot count the videos of its {split} split '
                     '(set config.data.num_train_examples)')
  return int(count)


def labelled_subset_size(data, process_count: int = 1) -> int | None:
  """Training examples a labelled job reads under data.label_fraction < 1 (the per-class
  quotas' sum, from a label pass shared with the pipeline); None when it reads them all."""
  from cvrl.data import subset  # pylint: disable=import-outside-toplevel
  fraction = subset.label_fraction(data)
  if not subset.applies(data, 'train', fraction):
    return None
  reader = make(data, 'train', seed=0, process_index=0, process_count=int(process_count))
  _, labels, _ = subset.source_labels(reader, process_count)
  classes = data.get('num_classes') or reader.num_classes
  return subset.subset_size(labels, fraction, classes)[0]


def check(data, split: str) -> None:
  """What a job reading `split` needs from config.data's source is there (ValueError)."""
  source = get(data.source)
  if source.check is not None:
    source.check(data, split)
