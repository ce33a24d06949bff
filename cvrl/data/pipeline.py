"""The host input pipeline every job uses (tf.data on host CPUs).

Phases, in order:

  training: this process's rows of each global batch of the global order (cvrl.data.order)
  -> read those records at their offsets; evaluation: this host's files, one pass
  -> parse -> SAMPLE clip indices on the encoded JPEG strings (keep only those strings)
  -> per frame: decode ONLY the crop window (train),
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
The training order is global too (cvrl.data.order): global batch k holds the same examples
on any number of processes, each process reads only its rows of it, and `start_step`
computes where batch start_step is (nothing before it is read).

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
from cvrl.data import order
from cvrl.data import photometric
from cvrl.data import sampling
from cvrl.data import service
from cvrl.data import sources
from cvrl.data import subset
from cvrl.core.errors import ConfigError

_TAG_SAMPLE, _TAG_VIEW = 3, 4  # 1: the global order (cvrl.data.order), 2: retired
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
  policy = data_config.bad_label
  if policy not in sources.BAD_LABEL_POLICIES:
    raise ValueError(f'data.bad_label must be one of {sources.BAD_LABEL_POLICIES}, got {policy!r}')
  return policy


def photometric_mode(data_config) -> str:
  """'device' (default: uint8 video + parameters) or 'host' (float32 video, all applied)."""
  mode = data_config.photometric
  if mode not in PHOTOMETRIC_MODES:
    raise ValueError(f'data.photometric must be one of {PHOTOMETRIC_MODES}, got {mode!r}')
  return mode


def check_label(label, status, num_classes: int | None):
  """`status` with BAD_LABEL where a usable record's label is negative or >= num_classes
  (None: only negative labels are bad)."""
  bad = label < 0
  if num_classes:
    bad = tf.logical_or(bad, label >= int(num_classes))
  return tf.where(tf.logical_and(tf.equal(status, sources.OK), bad), sources.BAD_LABEL, status)


def _resolve_process(process_index, process_count):
  if process_index is None or process_count is None:
    import jax  # the pipeline is used beside JAX; only the host topology is read
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  return int(process_index), int(process_count)


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

  sampler: a dict whose 'name' is a module of cvrl/data/samplers/ (or a dotted module path
    outside cvrl; cvrl.core.discovery): {'name': 'cvrl'} (V=2), {'name': 'rho', 'num_clips': rho}
    (V=rho), {'name': 'tclr'} (V=10: views 0-4 = [sparse, dense0, dense1, dense2, dense3]
    under augmentation A, views 5-9 the same clips under augmentation B; optional
    'sparse_stride' 4, 'num_dense' 4, 'dense_stride' 1), {'name': 'single'} (V=1, a random
    clip; 'extra_frames': k gives T + k frames, e.g. 1 for 3DRotNet's frame differences;
    with train=False the middle clip, centre crop), {'name': 'multiview', 'num_clips': 10,
    'num_crops': 3} (eval, V = clips x crops, view = clip * num_crops + crop; also takes
    'extra_frames'). Any sampler may override 'num_frames' and 'stride'.
  train: True -> the global seeded order (batch_size is this process's rows of each global
    batch of batch_size x process_count), random augmentation, repeat forever.
    False -> one deterministic pass, final batch padded (mask 0) so every video counts
    once; with several hosts every host yields the same number of batches.
  start_step: begin at global batch start_step, its place computed (exact when no record
    was dropped: a dropped record shifts this process's later rows).
  split: 'train' or 'eval' (default: 'train' if train else 'eval').
  label_fraction: None = data.label_fraction. Below 1, the 'train' split of a labelled
    pipeline (data.require_label) reads only a fixed class-balanced subset of its examples,
    chosen by `seed` (cvrl.data.subset); pretraining passes 1.0 (every video).
  """
  plan = _Plan(data_config, sampler=sampler, train=train, batch_size=batch_size, seed=seed,
               split=split or ('train' if train else 'eval'), label_fraction=label_fraction,
               process=_resolve_process(process_index, process_count))
  ds = plan.read_and_sample(start_step)
  ds = plan.decode_and_augment(ds)
  return plan.count_and_batch(ds)


def _count_gaps(column):
  """scan step: the number of elements dropped so far (gaps in 'pos') into `column`."""
  def step(state, el):
    last, failed = state
    failed += el['pos'] - last - 1
    el = dict(el, **{column: failed})
    return (el['pos'], failed), el
  return step


def _usable(status):
  return tf.logical_or(tf.equal(status, sources.OK), tf.equal(status, sources.SHORT_PADDED))


class _Plan:
  """One host's pipeline, decided before any stage runs: the source's reader (subset under
  data.label_fraction), the sampler, the output shapes. Stages: `read_and_sample` (records
  -> sampled encoded frames, per epoch), `decode_and_augment` (-> video), `count_and_batch`
  (-> problem counts, batches)."""

  def __init__(self, cfg, *, sampler: Mapping, train: bool, batch_size: int, seed: int,
               split: str, label_fraction, process: tuple[int, int]):
    if cfg.short_video not in sampling.SHORT_POLICIES:
      raise ValueError(f'data.short_video must be one of {sampling.SHORT_POLICIES}, got {cfg.short_video!r}')
    self.cfg, self.train, self.batch_size, self.seed = cfg, train, batch_size, seed
    self.process_index, self.process_count = process
    self.smp = sampling.make_sampler(sampler, num_frames=cfg.num_frames, stride=cfg.stride,
                                     train=train, strides=cfg.augmentation.clip_strides)
    self.label_policy = bad_label_policy(cfg)
    fraction = subset.label_fraction(cfg, label_fraction)
    reader = sources.make(cfg, split, seed=seed, process_index=self.process_index,
                          process_count=self.process_count)
    self.num_classes = cfg['num_classes'] or reader.num_classes
    if subset.applies(cfg, split, fraction):
      reader = subset.restrict(reader, fraction, seed, self.num_classes, self.process_count)
    self.reader = reader
    self.describe = reader.describe or (lambda i: tf.strings.join(['example ', tf.strings.as_string(i)]))
    self.base_seed = tf.constant([seed, 0x5EED], tf.int64)
    self.auto = tf.data.AUTOTUNE if cfg.num_parallel_calls < 0 else int(cfg.num_parallel_calls)
    self._shapes()

  def _shapes(self):
    """Augmentation, output dtype and shapes (photometric parameters: device mode only)."""
    cfg, views = self.cfg, self.smp.num_views
    self.spec = augmentation.AugmentSpec.from_config(cfg.augmentation)
    mode = photometric_mode(cfg)
    self.dtype = tf.uint8 if mode == 'device' else tf.float32
    if self.train:
      self.augmenter = augmentation.ClipAugmenter(
          self.spec, int(cfg.crop_size), jit=bool(cfg.jit_photometric),
          dct_method=cfg.dct_method, photometric=mode)
      out_size = int(cfg.crop_size)
    else:
      out_size = int(cfg.eval_crop_size)
    self.out_size = out_size
    self.video_shape = [views, self.smp.frames, out_size, out_size, 3]
    # Device mode ships the photometric parameters when some op can fire (not for probes).
    self.emit_params = (self.train and mode == 'device' and
                        self.spec.has_photometric(views, photometric.blur_radius(out_size)))
    self.params_shape = [views, photometric.SIZE] if self.spec.consistent else \
        [views, self.smp.frames, photometric.SIZE]

  # ---------------------------------------------------- stage 1: read and sample
  def read_and_sample(self, start_step: int) -> tf.data.Dataset:
    """Records -> parse -> sample on the JPEG strings. Training: this process's rows of the
    global order's batches from start_step (cvrl.data.order); evaluation: one pass."""
    if not self.train:
      return tf.data.Dataset.range(1).flat_map(sources.plain(
          lambda e: self._parse(self.reader.epoch_records(e).map(
              sources.plain(lambda i, record: (i, record, e))))))
    return self._global_order(start_step)

  def _global_order(self, start_step: int) -> tf.data.Dataset:
    """This process's rows of every global batch from start_step, parsed and sampled."""
    reader = self.reader
    if reader.read is None:
      raise ValueError(f'data.source {self.cfg.source!r} cannot read its examples by position, '
                       'which training needs (cvrl.data.order)')
    positions = np.arange(len(reader.examples)) if reader.positions is None else reader.positions
    n, batch = len(positions), self.batch_size * self.process_count
    order.check_size(n, batch)
    table = tf.constant(np.asarray(positions, np.int64))
    cycle = max(1, int(self.cfg.cycle_length))

    def epoch(e):
      pos, eps = order.process_part(n, batch, self.seed, e, start_step,
                                    (self.process_index, self.process_count))
      ds = tf.data.Dataset.from_tensor_slices((tf.gather(table, pos), eps))
      ds = ds.interleave(sources.plain(lambda q, ep: reader.read(q).map(
                             sources.plain(lambda i, record: (i, record, ep)))),
                         cycle_length=cycle, block_length=1, num_parallel_calls=cycle,
                         deterministic=True)
      return self._parse(ds)
    # One element per epoch: the tf.data service's unit of work (cvrl.data.service).
    epochs = tf.data.Dataset.range(order.start_epoch(n, batch, start_step), 2 ** 62)
    return epochs.flat_map(sources.plain(epoch))

  def _parse(self, records):
    """(example id, record, epoch) -> sampled encoded frames; unparsable records dropped
    and counted by the position gaps."""
    ds = records.enumerate().map(
        sources.plain(lambda pos, item: self._parse_and_sample(pos, *item)),
        num_parallel_calls=self.auto, deterministic=True)
    ds = ds.ignore_errors()
    return ds.scan((tf.constant(-1, tf.int64), tf.constant(0, tf.int64)),
                   sources.plain(_count_gaps('parse_failed')))

  def _parse_and_sample(self, pos, example_id, record, epoch):
    cfg, smp = self.cfg, self.smp
    frames, label, status = self.reader.parse(record)
    if cfg.require_label:  # a labelled job: labels checked where they enter
      status = check_label(label, status, self.num_classes)
    length = tf.shape(frames)[0]
    key = augmentation.fold_seed(self.base_seed, example_id, epoch)
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

  # ---------------------------------------------------- stage 2: decode and augment
  def decode_and_augment(self, ds: tf.data.Dataset) -> tf.data.Dataset:
    """Decode only the sampled frames, augment with one draw per clip."""
    ds = ds.enumerate().map(sources.plain(self._decode), num_parallel_calls=self.auto,
                            deterministic=True)
    return ds.ignore_errors()  # frames that do not decode: counted by the position gaps

  def _make_video(self, el):
    clips, views = el['frames'], self.smp.num_views
    key = augmentation.fold_seed(self.base_seed, el['id'], el['epoch'])
    if self.train:
      out = [self.augmenter(clips[v], augmentation.fold_seed(key, _TAG_VIEW, v), v)
             for v in range(views)]
      return tf.stack([o[0] for o in out]), tf.stack([o[1] for o in out])
    crops = self.smp.num_crops
    per_clip = [augmentation.eval_views(clips[c], int(self.cfg.eval_resize), self.out_size,
                                        crops, self.cfg.dct_method, self.dtype)
                for c in range(views // crops)]
    return tf.concat(per_clip, axis=0), tf.zeros(self.params_shape)

  def _decode(self, pos, el):
    video, params = tf.cond(_usable(el['status']), lambda: self._make_video(el),
                            lambda: (tf.zeros(self.video_shape, self.dtype),
                                     tf.zeros(self.params_shape)))
    video = tf.ensure_shape(video, self.video_shape)
    out = dict(el, video=video, pos=pos)
    if self.emit_params:
      out[PHOTOMETRIC_KEY] = tf.ensure_shape(params, self.params_shape)
    return out

  # ---------------------------------------------------- stage 3: count and batch
  def count_and_batch(self, ds: tf.data.Dataset) -> tf.data.Dataset:
    """Running problem counts on every element; train: usable ones in full batches;
    eval: every one, the last batch padded."""
    zero = tf.constant(0, tf.int64)
    ds = ds.scan((tf.constant(-1, tf.int64), zero, zero, zero, zero, zero, tf.constant('')),
                 sources.plain(self._count))
    if self.train:
      ds = ds.filter(sources.plain(lambda el: el['mask'] > 0))
      ds = ds.map(sources.plain(lambda el: {k: v for k, v in el.items() if k != 'mask'}))
      ds = ds.batch(self.batch_size, drop_remainder=True)
    else:
      ds = _eval_batches(ds, self.batch_size, self.video_shape, self.dtype,
                         self.reader.host_counts)
    options = tf.data.Options()
    options.deterministic = True
    options.experimental_optimization.map_parallelization = True
    ds = ds.with_options(options)
    # data.service set: the workers of that tf.data service run this graph (cvrl.data.service);
    # an evaluation pass stops after its batch count (a dead worker's task never ends).
    passes = None if self.train else service.pass_batches(
        self.reader.host_counts, self.process_index, self.batch_size)
    return service.distribute(ds.prefetch(int(self.cfg.prefetch)), self.cfg, batches=passes)

  def _bad_label_note(self, el, is_bad, note):
    """The first bad record's description: it rides on every later element (a skipped one
    is filtered out of training), `iterate` raises on it."""
    no_label = tf.equal(el['label'], sources.MISSING_LABEL)
    what = tf.where(no_label, f'has no label ({self.cfg.label_key}) in a labelled job',
                    tf.strings.join(['has label ', tf.strings.as_string(el['label']),
                                     f', outside [0, {self.num_classes or "num_classes"})']))
    this = tf.strings.join([self.describe(el['id']), ' ', what,
                            " (check data.num_classes; data.bad_label='skip' counts and "
                            'skips such records)'])
    return tf.where(tf.logical_and(is_bad, tf.equal(note, '')), this, note)

  def _count(self, state, el):
    last, failed, missing, short, short_skipped, bad_label, note = state
    failed += el['pos'] - last - 1
    st = el['status']
    is_bad = tf.equal(st, sources.BAD_LABEL)
    if self.label_policy == 'error':
      note = self._bad_label_note(el, is_bad, note)
    bad_label += tf.cast(is_bad, tf.int64)
    missing += tf.cast(tf.equal(st, sources.MISSING_KEY), tf.int64)
    short += tf.cast(tf.logical_or(tf.equal(st, sources.SHORT_PADDED),
                                   tf.equal(st, sources.SHORT_SKIPPED)), tf.int64)
    short_skipped += tf.cast(tf.equal(st, sources.SHORT_SKIPPED), tf.int64)
    stats = tf.stack([el['epoch'], el['parse_failed'], failed, missing, short, short_skipped,
                      bad_label])
    label = tf.where(is_bad, -1, el['label'])  # as padding: never indexes a class
    out = {'video': el['video'], 'label': label, 'index': el['id'], STATS_KEY: stats,
           'mask': tf.cast(_usable(st), tf.float32), _NOTE_KEY: note}
    if self.emit_params:
      out[PHOTOMETRIC_KEY] = el[PHOTOMETRIC_KEY]
    return (el['pos'], failed, missing, short, short_skipped, bad_label, note), out


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

  ds = ds.map(sources.plain(pad))
  if host_counts and len(host_counts) > 1:
    num_batches = math.ceil(max(host_counts) / batch_size)
    filler = {'video': tf.zeros([batch_size] + video_shape, dtype), 'label': -tf.ones([batch_size], tf.int32),
              'index': -tf.ones([batch_size], tf.int64), 'mask': tf.zeros([batch_size]),
              STATS_KEY: tf.zeros([batch_size, NUM_STATS], tf.int64),
              _NOTE_KEY: tf.fill([batch_size], '')}
    ds = ds.concatenate(tf.data.Dataset.from_tensors(filler).repeat()).take(num_batches)
  return ds


