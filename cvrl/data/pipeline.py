"""The host input pipeline every job uses (tf.data on host CPUs).

Phases, in order:

  files of this host (jax.process_index) -> per-epoch seeded file order -> read records
  -> parse -> SAMPLE clip indices on the encoded JPEG strings (keep only those strings)
  -> seeded per-epoch shuffle (train) -> per frame: decode ONLY the crop window (train),
  flip, bilinear resize, round to uint8 -> draw the clip's photometric parameters
  (one stateless draw per clip) -> batch -> prefetch.
With data.label_fraction < 1 the train split of a labelled job reads only a fixed
class-balanced subset: records are filtered by example id before they are parsed
(cvrl.data.subset).

Contract (data.photometric = 'device', the default): the host ships `video` as uint8
[B, V, T, H, W, 3] (4x less host->device traffic than float32) and, for training views
with any colour/grayscale/blur/solarize/erase op enabled, `photometric` float32 [B, V, P]
(one vector per clip; [B, V, T, P] with augmentation.consistent=False), laid out as in
`photometric.py`. Every job's jitted step must start with
`batch = cvrl.data.device.finish_batch(batch, config.data)`, which applies the
photometric ops on the accelerator and returns `video` float32 in [0, 1] (eval and probe
batches: just the scaling; float32 video without parameters passes through unchanged).
With data.photometric = 'host' the host applies everything itself and ships float32
video in [0, 1] with no `photometric` entry (the reference behaviour, several times
slower on the host; same pixels up to the uint8 rounding).

Randomness is stateless: the seed of every draw is derived from (run seed, example id,
epoch, view), where the example id is global (file index in the sorted file list << 32 |
record index), so a video gets the same clips and augmentation whatever the host count.
File order and shuffle buffers are re-seeded per epoch from (seed, epoch, host), so the
stream of a host is a pure function of (seed, process_index, process_count) and
`start_step` can skip to the element a run that never stopped would be at.

Labels are checked where they enter (every source): a label outside [0, num_classes), or
missing in a labelled job (data.require_label), stops the job at the first batch after it
with one line naming the file, the record and the label (BadLabelError, a ConfigError:
`cvrl: error: ...`, exit 2), or with data.bad_label='skip' is counted (`bad_label`) and
skipped. num_classes is data.num_classes, else what the source knows (synthetic, TFDS);
unknown, only negative labels are caught.

Other bad records never stop a run and are never silent: a record that does not parse or a
frame that does not decode (dropped), a record missing the frames or label key, and a
video shorter than the sampler's footprint (padded per `data.short_video`, or skipped)
are counted. Batches carry the running counts in a `stats` field; `iterate` strips it
into a `PipelineStats` the job logs.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Iterator, Mapping

import ml_collections
import numpy as np
import tensorflow as tf

from cvrl.data import augmentation
from cvrl.data import photometric
from cvrl.data import sampling
from cvrl.data import sources
from cvrl.data import subset
from cvrl.core.errors import ConfigError

_TAG_FILES, _TAG_SHUFFLE, _TAG_SAMPLE, _TAG_VIEW = 1, 2, 3, 4
STATS_KEY = 'stats'
PHOTOMETRIC_KEY = 'photometric'
PHOTOMETRIC_MODES = ('device', 'host')
# Columns of the per-example `stats` vector.
_EPOCH, _PARSE_FAILED, _DECODE_FAILED, _MISSING, _SHORT, _SHORT_SKIPPED, _BAD_LABEL = range(7)
NUM_STATS = 7
_NOTE_KEY = 'bad_label_note'  # the first bad label's description ('' if none); see iterate


class BadLabelError(ConfigError):
  """A record's label is outside [0, num_classes) or missing (data.bad_label='error')."""


@dataclasses.dataclass
class PipelineStats:
  """Running counts of problem records seen by the pipeline (this host, this run)."""
  decode_failed: int = 0   # corrupt JPEG (example dropped)
  missing_key: int = 0     # frames or label key absent (skipped / masked)
  short_padded: int = 0    # shorter than a clip, padded per data.short_video
  short_skipped: int = 0   # shorter than a clip, skipped (short_video='skip')
  bad_label: int = 0       # label outside [0, num_classes) or missing (bad_label='skip')
  batches: int = 0
  _parse_failed: dict = dataclasses.field(default_factory=dict)  # epoch -> count

  @property
  def parse_failed(self) -> int:
    """Records that are not a SequenceExample (dropped)."""
    return int(sum(self._parse_failed.values()))

  @property
  def skipped(self) -> int:
    return (self.parse_failed + self.decode_failed + self.missing_key + self.short_skipped +
            self.bad_label)

  def update(self, stats: np.ndarray) -> None:
    stats = np.asarray(stats).reshape(-1, NUM_STATS)
    for epoch in np.unique(stats[:, _EPOCH]):
      rows = stats[stats[:, _EPOCH] == epoch]
      key = int(epoch)
      self._parse_failed[key] = max(self._parse_failed.get(key, 0), int(rows[:, _PARSE_FAILED].max()))
    self.decode_failed = max(self.decode_failed, int(stats[:, _DECODE_FAILED].max()))
    self.missing_key = max(self.missing_key, int(stats[:, _MISSING].max()))
    self.bad_label = max(self.bad_label, int(stats[:, _BAD_LABEL].max()))
    short = int(stats[:, _SHORT].max())
    self.short_skipped = max(self.short_skipped, int(stats[:, _SHORT_SKIPPED].max()))
    self.short_padded = max(self.short_padded, short - self.short_skipped)
    self.batches += 1

  def as_dict(self) -> dict:
    return {'parse_failed': self.parse_failed, 'decode_failed': self.decode_failed,
            'missing_key': self.missing_key, 'short_padded': self.short_padded,
            'short_skipped': self.short_skipped, 'bad_label': self.bad_label,
            'skipped': self.skipped}

  def __str__(self) -> str:
    return ' '.join(f'{k}={v}' for k, v in self.as_dict().items())


def iterate(ds: tf.data.Dataset, stats: PipelineStats | None = None) -> Iterator[dict]:
  """Numpy batches from `ds`; the `stats` field is moved into `stats` (if given). A bad
  label under data.bad_label='error' raises BadLabelError (one line)."""
  for batch in ds.as_numpy_iterator():
    notes = batch.pop(_NOTE_KEY, None)
    if notes is not None and np.any(notes != b''):
      raise BadLabelError(notes[notes != b''][0].decode('utf-8', 'replace'))
    counts = batch.pop(STATS_KEY, None)
    if stats is not None and counts is not None:
      stats.update(counts)
    yield batch


def bad_label_policy(data_config) -> str:
  policy = data_config.get('bad_label', 'error')
  if policy not in sources.BAD_LABEL_POLICIES:
    raise ValueError(f'data.bad_label must be one of {sources.BAD_LABEL_POLICIES}, got {policy!r}')
  return policy


def photometric_mode(data_config) -> str:
  """'device' (default: uint8 video + parameters) or 'host' (float32 video, all applied)."""
  mode = data_config.get('photometric', 'device')
  if mode not in PHOTOMETRIC_MODES:
    raise ValueError(f'data.photometric must be one of {PHOTOMETRIC_MODES}, got {mode!r}')
  return mode


# ------------------------------------------------------------------------------ sources

@dataclasses.dataclass
class _Source:
  """What the pipeline needs from a source, whatever it is."""
  epoch_records: callable   # (epoch tensor, shuffle: bool) -> Dataset of (example_id, record)
  parse: callable           # record -> (frames [L] (strings or uint8 frames), label, status)
  host_counts: list | None  # records per host (None if unknown)
  process_index: int
  describe: callable = None  # example id tensor -> string tensor naming the record
  num_classes: int | None = None  # what the source knows (labels are checked against it)
  # process_count -> (ids, labels, hosts) int64 of EVERY host's records (a label pass, for
  # data.label_fraction; None if the source cannot list them).
  labels: callable = None


def _resolve_process(process_index, process_count):
  if process_index is None or process_count is None:
    import jax  # the pipeline is used beside JAX; only the host topology is read
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  return int(process_index), int(process_count)


def _tfrecord_source(cfg, paths, seed: int, process_index: int, process_count: int) -> _Source:
  files = sources.resolve_paths(paths)
  sources.check_keys(files[0], cfg.frames_key, cfg.label_key, cfg.require_label)
  ids, by_record = sources.host_partition(len(files), process_index, process_count)
  host_files = tf.constant([files[i] for i in ids])
  host_ids = tf.constant(ids, tf.int64)
  cycle = max(1, min(int(cfg.cycle_length), len(ids)))

  def read(file_id, path):
    records = tf.data.TFRecordDataset(path).enumerate()
    if by_record:
      records = records.filter(lambda i, r: tf.equal(i % process_count, process_index))
    return records.map(lambda i, r: (file_id * (2 ** 32) + i, r))

  def epoch_records(epoch, shuffle: bool):
    order = tf.range(len(ids))
    if shuffle:
      order = tf.random.experimental.stateless_shuffle(
          order, seed=augmentation.fold_seed([seed, process_index], _TAG_FILES, epoch))
    table = tf.data.Dataset.from_tensor_slices((tf.gather(host_ids, order), tf.gather(host_files, order)))
    return table.interleave(read, cycle_length=cycle, block_length=1,
                            num_parallel_calls=cycle, deterministic=True)

  parse = lambda r: sources.parse_sequence_example(r, cfg.frames_key, cfg.label_key, cfg.require_label)
  counts = None
  try:
    counts = sources.host_record_counts(files, process_count)
  except (OSError, tf.errors.OpError):  # unreadable headers: counted later as parse failures
    counts = None
  all_files = tf.constant(files)

  def describe(example_id):
    return tf.strings.join([tf.gather(all_files, example_id // (2 ** 32)), ', record ',
                            tf.strings.as_string(example_id % (2 ** 32))])

  def labels(count: int):  # all files, whatever this host reads: every host sees the same
    example_ids, values = sources.read_labels(tuple(files), cfg.label_key, int(cfg.cycle_length))
    return example_ids, values, sources.record_hosts(example_ids, len(files), count)
  return _Source(epoch_records, parse, counts, process_index, describe, labels=labels)


def _make_source(cfg, train: bool, split: str, seed: int, process_index: int,
                 process_count: int) -> _Source:
  if cfg.source == 'tfrecord':
    paths = cfg.train_paths if split == 'train' else cfg.eval_paths
    return _tfrecord_source(cfg, paths, seed, process_index, process_count)
  if cfg.source == 'synthetic':
    from cvrl.data import synthetic
    paths = synthetic.ensure_synthetic(cfg.synthetic, split)
    source = _tfrecord_source(cfg, paths, seed, process_index, process_count)
    source.num_classes = int(cfg.synthetic.num_classes)
    return source
  if cfg.source == 'tfds':
    from cvrl.data import tfds_source
    return tfds_source.make_source(cfg, split, seed, process_index, process_count, _Source)
  raise ValueError(f"data.source must be 'synthetic', 'tfrecord' or 'tfds', got {cfg.source!r}")


def labelled_subset_size(data_config, process_count: int = 1) -> int | None:
  """Training examples a labelled job reads under data.label_fraction < 1 (the per-class
  quotas' sum, from a label pass shared with the pipeline); None when it reads them all."""
  fraction = subset.label_fraction(data_config)
  if not subset.applies(data_config, 'train', fraction):
    return None
  source = _make_source(data_config, True, 'train', 0, 0, int(process_count))
  _, labels, _ = subset.source_labels(source, process_count)
  num_classes = data_config.get('num_classes') or source.num_classes
  return subset.subset_size(labels, fraction, num_classes)[0]


# ----------------------------------------------------------------------------- pipeline

def build_dataset(data_config: ml_collections.ConfigDict, *, sampler: Mapping, train: bool,
                  batch_size: int, seed: int, start_step: int = 0, process_index=None,
                  process_count=None, split: str | None = None,
                  label_fraction: float | None = None) -> tf.data.Dataset:
  """Batches for one host: dicts of `video` [B, V, T, H, W, 3] (uint8, or float32 in [0, 1]
  with data.photometric='host'), `photometric` [B, V, P] / [B, V, T, P] float32 (device
  mode, training views with photometric ops; see the module docstring), `label` [B]
  int32, `index` [B] int64 (global example id, -1 for padding), `mask` [B] float32 (eval
  only), and `stats` [B, NUM_STATS] int64 running problem counts (stripped by `iterate`).
  Pass every batch through `cvrl.data.device.finish_batch` inside the jitted step.

  sampler: {'name': 'cvrl'} (V=2), {'name': 'rho', 'num_clips': rho} (V=rho),
    {'name': 'tclr'} (V=10: views 0-4 = [sparse, dense0, dense1, dense2, dense3] under
    augmentation A, views 5-9 the same clips under augmentation B; optional
    'sparse_stride' 4, 'num_dense' 4, 'dense_stride' 1), {'name': 'single'} (V=1, a random
    clip; 'extra_frames': k gives T + k frames, e.g. 1 for 3DRotNet's frame differences;
    with train=False the middle clip, centre crop), {'name': 'multiview', 'num_clips': 10,
    'num_crops': 3} (eval, V = clips x crops, view = clip * num_crops + crop; also takes
    'extra_frames'). Any sampler may override 'num_frames' and 'stride'.
  train: True -> seeded shuffling, random augmentation, repeat forever, drop remainder.
    False -> one deterministic pass, final batch padded (mask 0) so every video counts
    once; with several hosts every host yields the same number of batches.
  start_step: skip the first start_step * batch_size examples of this host's stream
    (exact when no record was dropped before that point).
  split: 'train' or 'eval' (default: 'train' if train else 'eval').
  label_fraction: None = data.label_fraction. Below 1, the 'train' split of a labelled
    pipeline (data.require_label) reads only a fixed class-balanced subset of its examples,
    chosen by `seed` (cvrl.data.subset); pretraining passes 1.0 (every video).
  """
  cfg = data_config
  if cfg.short_video not in sampling.SHORT_POLICIES:
    raise ValueError(f'data.short_video must be one of {sampling.SHORT_POLICIES}, got {cfg.short_video!r}')
  split = split or ('train' if train else 'eval')
  process_index, process_count = _resolve_process(process_index, process_count)
  smp = sampling.make_sampler(sampler, num_frames=cfg.num_frames, stride=cfg.stride, train=train)
  label_policy = bad_label_policy(cfg)
  fraction = subset.label_fraction(cfg, label_fraction)
  source = _make_source(cfg, train, split, seed, process_index, process_count)
  num_classes = cfg.get('num_classes') or source.num_classes
  if subset.applies(cfg, split, fraction):
    source = subset.restrict(source, fraction, seed, num_classes, process_count, train)
  describe = source.describe or (lambda i: tf.strings.join(['example ', tf.strings.as_string(i)]))
  random = train and smp.random
  base_seed = tf.constant([seed, 0x5EED], tf.int64)
  auto = tf.data.AUTOTUNE if cfg.num_parallel_calls < 0 else int(cfg.num_parallel_calls)

  # Phase 1+2: per epoch, read -> parse -> sample on the JPEG strings -> shuffle.
  def parse_and_sample(pos, example_id, record, epoch):
    frames, label, status = source.parse(record)
    if cfg.require_label:  # a labelled job: labels checked where they enter
      status = sources.check_label(label, status, num_classes)
    length = tf.shape(frames)[0]
    key = augmentation.fold_seed(base_seed, example_id, epoch)
    idx = smp.indices(length, augmentation.fold_seed(key, _TAG_SAMPLE))
    short = tf.logical_and(tf.equal(status, sources.OK), length < smp.footprint)
    skip_short = cfg.short_video == 'skip'
    status = tf.where(short, sources.SHORT_SKIPPED if skip_short else sources.SHORT_PADDED, status)
    policy = 'wrap' if skip_short else cfg.short_video
    safe = tf.maximum(length, 1)
    frames = tf.cond(length > 0, lambda: frames,
                     lambda: tf.zeros(tf.concat([[1], tf.shape(frames)[1:]], 0), frames.dtype))
    clips = tf.gather(frames, sampling.fit_indices(idx, safe, policy))
    return {'frames': clips, 'label': label, 'id': example_id, 'epoch': epoch,
            'status': tf.cast(status, tf.int32), 'pos': pos}

  def count_gaps(column):
    def step(state, el):
      last, failed = state
      failed += el['pos'] - last - 1
      el = dict(el, **{column: failed})
      return (el['pos'], failed), el
    return step

  def epoch_dataset(epoch):
    records = source.epoch_records(epoch, random)
    ds = records.enumerate().map(
        lambda pos, item: parse_and_sample(pos, item[0], item[1], epoch),
        num_parallel_calls=auto, deterministic=True)
    ds = ds.ignore_errors()  # unparsable records: counted by the position gaps below
    ds = ds.scan((tf.constant(-1, tf.int64), tf.constant(0, tf.int64)), count_gaps('parse_failed'))
    if random and cfg.shuffle_buffer > 1:
      shuffle_seed = augmentation.fold_seed([seed, process_index], _TAG_SHUFFLE, epoch)
      ds = ds.shuffle(int(cfg.shuffle_buffer), seed=augmentation.scalar_seed(shuffle_seed),
                      reshuffle_each_iteration=False)
    return ds

  start_epoch, offset = 0, 0
  if train and start_step > 0:
    per_host = source.host_counts[process_index] if source.host_counts else None
    if not per_host:
      raise ValueError('start_step > 0 needs the number of records per host, which this '
                       'source could not count')
    start_epoch, offset = divmod(start_step * batch_size, per_host)
  epochs = tf.data.Dataset.range(start_epoch, 2 ** 62 if train else 1)
  ds = epochs.flat_map(epoch_dataset)
  if offset:
    ds = ds.skip(offset)

  # Phase 3+4: decode only the sampled frames, augment with one draw per clip.
  spec = augmentation.AugmentSpec.from_config(cfg.augmentation)
  mode = photometric_mode(cfg)
  dtype = tf.uint8 if mode == 'device' else tf.float32
  views, frames_per_view = smp.num_views, smp.frames
  if train:
    augmenter = augmentation.ClipAugmenter(spec, int(cfg.crop_size), jit=bool(cfg.jit_photometric),
                                           dct_method=cfg.dct_method, photometric=mode)
    out_size = int(cfg.crop_size)
  else:
    out_size = int(cfg.eval_crop_size)
  video_shape = [views, frames_per_view, out_size, out_size, 3]
  # Device mode ships the photometric parameters when some op can fire (not for probes).
  emit_params = (train and mode == 'device' and
                 spec.has_photometric(views, photometric.blur_radius(out_size)))
  params_shape = [views, photometric.SIZE] if spec.consistent else \
      [views, frames_per_view, photometric.SIZE]

  def make_video(el):
    clips = el['frames']
    key = augmentation.fold_seed(base_seed, el['id'], el['epoch'])
    if train:
      out = [augmenter(clips[v], augmentation.fold_seed(key, _TAG_VIEW, v), v) for v in range(views)]
      return tf.stack([o[0] for o in out]), tf.stack([o[1] for o in out])
    per_clip = [augmentation.eval_views(clips[c], int(cfg.eval_resize), out_size, smp.num_crops,
                                        cfg.dct_method, dtype)
                for c in range(views // smp.num_crops)]
    return tf.concat(per_clip, axis=0), tf.zeros(params_shape)

  def decode(pos, el):
    usable = tf.logical_or(tf.equal(el['status'], sources.OK),
                           tf.equal(el['status'], sources.SHORT_PADDED))
    video, params = tf.cond(usable, lambda: make_video(el),
                            lambda: (tf.zeros(video_shape, dtype), tf.zeros(params_shape)))
    video = tf.ensure_shape(video, video_shape)
    out = dict(el, video=video, pos=pos)
    if emit_params:
      out[PHOTOMETRIC_KEY] = tf.ensure_shape(params, params_shape)
    return out

  ds = ds.enumerate().map(decode, num_parallel_calls=auto, deterministic=True)
  ds = ds.ignore_errors()  # frames that do not decode: counted by the position gaps

  def count(state, el):
    last, failed, missing, short, short_skipped, bad_label, note = state
    failed += el['pos'] - last - 1
    st = el['status']
    is_bad = tf.equal(st, sources.BAD_LABEL)
    if label_policy == 'error':  # the first bad record's description rides on every later
      # element (a skipped one is filtered out of training), `iterate` raises on it
      no_label = tf.equal(el['label'], sources.MISSING_LABEL)
      what = tf.where(no_label, f'has no label ({cfg.label_key}) in a labelled job',
                      tf.strings.join(['has label ', tf.strings.as_string(el['label']),
                                       f', outside [0, {num_classes or "num_classes"})']))
      this = tf.strings.join([describe(el['id']), ' ', what,
                              " (check data.num_classes; data.bad_label='skip' counts and "
                              'skips such records)'])
      note = tf.where(tf.logical_and(is_bad, tf.equal(note, '')), this, note)
    bad_label += tf.cast(is_bad, tf.int64)
    missing += tf.cast(tf.equal(st, sources.MISSING_KEY), tf.int64)
    short += tf.cast(tf.logical_or(tf.equal(st, sources.SHORT_PADDED),
                                   tf.equal(st, sources.SHORT_SKIPPED)), tf.int64)
    short_skipped += tf.cast(tf.equal(st, sources.SHORT_SKIPPED), tf.int64)
    stats = tf.stack([el['epoch'], el['parse_failed'], failed, missing, short, short_skipped,
                      bad_label])
    usable = tf.logical_or(tf.equal(st, sources.OK), tf.equal(st, sources.SHORT_PADDED))
    label = tf.where(is_bad, -1, el['label'])  # as padding: never indexes a class
    out = {'video': el['video'], 'label': label, 'index': el['id'], STATS_KEY: stats,
           'mask': tf.cast(usable, tf.float32), _NOTE_KEY: note}
    if emit_params:
      out[PHOTOMETRIC_KEY] = el[PHOTOMETRIC_KEY]
    return (el['pos'], failed, missing, short, short_skipped, bad_label, note), out

  zero = tf.constant(0, tf.int64)
  ds = ds.scan((tf.constant(-1, tf.int64), zero, zero, zero, zero, zero, tf.constant('')), count)
  if train:
    ds = ds.filter(lambda el: el['mask'] > 0)
    ds = ds.map(lambda el: {k: v for k, v in el.items() if k != 'mask'})
    ds = ds.batch(batch_size, drop_remainder=True)
  else:
    ds = _eval_batches(ds, batch_size, video_shape, dtype, source.host_counts)
  options = tf.data.Options()
  options.deterministic = True
  options.experimental_optimization.map_parallelization = True
  ds = ds.with_options(options)
  return ds.prefetch(int(cfg.prefetch))


def _eval_batches(ds, batch_size: int, video_shape, dtype, host_counts) -> tf.data.Dataset:
  """Batch without dropping: pad the last batch with mask 0; equalise batch counts over hosts."""
  ds = ds.batch(batch_size, drop_remainder=False)

  def pad(batch):
    n = tf.shape(batch['label'])[0]
    extra = batch_size - n

    def pad_to(x, value):
      paddings = tf.concat([[[0, extra]], tf.zeros([tf.rank(x) - 1, 2], tf.int32)], 0)
      return tf.pad(x, paddings, constant_values=value)
    out = {k: pad_to(v, '' if v.dtype == tf.string else -1 if k in ('index', 'label') else 0)
           for k, v in batch.items()}
    out['video'] = tf.ensure_shape(out['video'], [batch_size] + video_shape)
    for k in ('label', 'index', 'mask'):
      out[k] = tf.ensure_shape(out[k], [batch_size])
    out[STATS_KEY] = tf.ensure_shape(out[STATS_KEY], [batch_size, NUM_STATS])
    return out

  ds = ds.map(pad)
  if host_counts and len(host_counts) > 1:
    num_batches = math.ceil(max(host_counts) / batch_size)
    filler = {'video': tf.zeros([batch_size] + video_shape, dtype), 'label': -tf.ones([batch_size], tf.int32),
              'index': -tf.ones([batch_size], tf.int64), 'mask': tf.zeros([batch_size]),
              STATS_KEY: tf.zeros([batch_size, NUM_STATS], tf.int64),
              _NOTE_KEY: tf.fill([batch_size], '')}
    ds = ds.concatenate(tf.data.Dataset.from_tensors(filler).repeat()).take(num_batches)
  return ds


