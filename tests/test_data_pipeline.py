"""build_dataset end to end on tiny shards the test writes."""

import jax
import numpy as np
import pytest
import tensorflow as tf

from cvrl.data import config as config_lib
from cvrl.data import device
from cvrl.data import photometric
from cvrl.data import pipeline
from cvrl.data.sources import tfrecord

SIZE = 24


def _frame(level, h=SIZE, w=SIZE + 8):
  """A flat grey frame: decodes back to `level` within JPEG error (frame-index probes)."""
  return np.full((h, w, 3), level, np.uint8)


def _textured(seed, h=SIZE, w=SIZE + 8):
  rng = np.random.default_rng(seed)
  coarse = rng.random((4, 5, 3)).astype(np.float32)
  return (tf.image.resize(coarse[None], [h, w], 'bicubic')[0].numpy().clip(0, 1) * 255).astype(np.uint8)


def _encode(frames):
  return [tf.io.encode_jpeg(f, quality=95).numpy() for f in frames]


def _write(path, examples):
  with tf.io.TFRecordWriter(path) as w:
    for ex in examples:
      w.write(ex if isinstance(ex, bytes) else ex.SerializeToString())


def _index_video(num_frames):
  """Frame t has grey level 4 * t + 2: the pipeline's frames tell which indices it took."""
  return _encode([_frame(4 * t + 2) for t in range(num_frames)])


def _config(tmp_path, files, **kw):
  cfg = config_lib.default_data_config()
  cfg.source = 'tfrecord'
  cfg.train_paths = cfg.eval_paths = ','.join(files)
  cfg.num_frames, cfg.stride = 4, 2
  cfg.crop_size = cfg.eval_crop_size = cfg.eval_resize = 16
  cfg.num_parallel_calls = 2
  cfg.jit_photometric = False
  for k, v in kw.items():
    setattr(cfg, k, v)
  return cfg


@pytest.fixture(scope='module')
def shards(tmp_path_factory):
  d = tmp_path_factory.mktemp('shards')
  files = []
  for s in range(4):
    exs = [tfrecord.make_sequence_example(_encode([_textured(10 * s + i + 100 * t) for t in range(12)]),
                                         label=3 * s + i) for i in range(3)]
    files.append(str(d / f'train-{s}.tfrecord'))
    _write(files[-1], exs)
  return files


def _take(ds, n):
  return [b for _, b in zip(range(n), pipeline.iterate(ds))]


@pytest.mark.slow
def test_train_batches_shapes_determinism_and_resume(tmp_path, shards):
  cfg = _config(tmp_path, shards)
  build = lambda **kw: pipeline.build_dataset(
      cfg, sampler={'name': 'cvrl'}, train=True, batch_size=4, seed=kw.pop('seed', 1),
      process_index=0, process_count=1, **kw)
  first = _take(build(), 5)  # 12 videos: batches span epochs
  b = first[0]
  assert b['video'].shape == (4, 2, 4, 16, 16, 3) and b['video'].dtype == np.uint8
  assert b['photometric'].shape == (4, 2, photometric.SIZE) and b['photometric'].dtype == np.float32
  assert b['label'].dtype == np.int32 and 'mask' not in b and 'stats' not in b
  epoch0 = np.concatenate([x['label'] for x in first[:3]])
  assert sorted(epoch0) == list(range(12))  # one epoch = every video once
  assert not np.array_equal(epoch0, np.arange(12))  # shuffled
  again = _take(build(), 5)
  for x, y in zip(first, again):
    np.testing.assert_array_equal(x['video'], y['video'])
    np.testing.assert_array_equal(x['photometric'], y['photometric'])
    np.testing.assert_array_equal(x['label'], y['label'])
  other = _take(build(seed=2), 1)[0]
  assert not np.array_equal(other['video'], first[0]['video'])
  resumed = _take(build(start_step=2), 3)  # what steps 2, 3, 4 of the first run saw
  for x, y in zip(first[2:], resumed):
    np.testing.assert_array_equal(x['label'], y['label'])
    np.testing.assert_array_equal(x['video'], y['video'])
    np.testing.assert_array_equal(x['photometric'], y['photometric'])
  # epoch 1 differs from epoch 0 in order and augmentation
  assert not np.array_equal(np.concatenate([x['label'] for x in first[3:5]]), epoch0[:8])


@pytest.mark.slow
def test_hosts_read_disjoint_files_and_eval_counts_every_video_once(tmp_path, shards):
  cfg = _config(tmp_path, shards)
  seen, batches = [], []
  for p in range(3):
    ds = pipeline.build_dataset(cfg, sampler={'name': 'multiview', 'num_clips': 2, 'num_crops': 1},
                                train=False, batch_size=4, seed=0, process_index=p, process_count=3)
    out = list(pipeline.iterate(ds))
    batches.append(len(out))
    real = np.concatenate([b['index'][b['mask'] > 0] for b in out])
    files = set((real >> 32).tolist())
    assert files == set(range(p, 4, 3)), files  # host p reads files p, p + 3
    seen.append(real)
    assert out[-1]['video'].shape == (4, 2, 4, 16, 16, 3)
  assert batches == [2, 2, 2]  # host 0 has 6 videos, hosts 1-2 have 3: padded to equal count
  allv = np.concatenate(seen)
  assert len(allv) == len(set(allv.tolist())) == 12
  # training streams of two hosts are disjoint too
  labels = []
  for p in range(2):
    ds = pipeline.build_dataset(cfg, sampler={'name': 'single'}, train=True, batch_size=3, seed=0,
                                process_index=p, process_count=2)
    labels.append(set(np.concatenate([b['label'] for b in _take(ds, 2)]).tolist()))
  assert not labels[0] & labels[1]


def test_eval_multiview_indices_and_padding(tmp_path):
  path = str(tmp_path / 'eval.tfrecord')
  _write(path, [tfrecord.make_sequence_example(_index_video(40), label=i) for i in range(5)])
  cfg = _config(tmp_path, [path])
  ds = pipeline.build_dataset(cfg, sampler={'name': 'multiview', 'num_clips': 3, 'num_crops': 3},
                              train=False, batch_size=2, seed=0, process_index=0, process_count=1)
  out = list(pipeline.iterate(ds))
  assert len(out) == 3
  np.testing.assert_array_equal(out[-1]['mask'], [1, 0])
  np.testing.assert_array_equal(np.concatenate([b['label'] for b in out]), [0, 1, 2, 3, 4, -1])
  video = out[0]['video'][0]  # [9, 4, 16, 16, 3]
  assert video.shape == (9, 4, 16, 16, 3)
  assert video.dtype == np.uint8 and 'photometric' not in out[0]
  levels = video.mean(axis=(2, 3, 4))  # [views, T], uint8 levels
  frame_idx = np.round((levels - 2) / 4).astype(int)
  starts = np.floor(np.linspace(0, 40 - 4 * 2, 3)).astype(int)
  expected = np.repeat(starts[:, None] + 2 * np.arange(4), 3, axis=0)  # view = clip * 3 + crop
  np.testing.assert_array_equal(frame_idx, expected)


@pytest.mark.slow
def test_training_views_are_consistent_and_tclr_rho_shapes(tmp_path):
  path = str(tmp_path / 'still.tfrecord')
  still = _encode([_textured(5)] * 40)
  _write(path, [tfrecord.make_sequence_example(still, label=1) for _ in range(2)])
  cfg = _config(tmp_path, [path])
  finish = jax.jit(device.make_finish(cfg))
  build = lambda: pipeline.build_dataset(cfg, sampler={'name': 'cvrl'}, train=True, batch_size=2,
                                         seed=0, process_index=0, process_count=1)
  b = _take(build(), 1)[0]
  assert b['photometric'].shape == (2, 2, photometric.SIZE)
  v = np.asarray(finish(b)['video'])  # still video: frames of a clip must stay identical
  assert v.dtype == np.float32 and 0 <= v.min() and v.max() <= 1
  for view in range(2):
    for t in range(1, 4):
      np.testing.assert_array_equal(v[:, view, t], v[:, view, 0])
  assert np.abs(v[:, 0] - v[:, 1]).mean() > 0.01
  cfg.augmentation.consistent = False
  b = _take(build(), 1)[0]
  assert b['photometric'].shape == (2, 2, 4, photometric.SIZE)  # one draw per frame
  v = np.asarray(jax.jit(device.make_finish(cfg))(b)['video'])
  assert np.abs(v[:, 0, 1] - v[:, 0, 0]).mean() > 0.01
  cfg.augmentation.consistent = True
  for spec, views in (({'name': 'tclr', 'num_frames': 4}, 10), ({'name': 'rho', 'num_clips': 3}, 3),
                      ({'name': 'single', 'extra_frames': 1}, 1)):
    b = _take(pipeline.build_dataset(cfg, sampler=spec, train=True, batch_size=2, seed=0,
                                     process_index=0, process_count=1), 1)[0]
    frames = 5 if spec.get('extra_frames') else 4
    assert b['video'].shape == (2, views, frames, 16, 16, 3), spec
    assert b['photometric'].shape == (2, views, photometric.SIZE), spec
  config_lib.set_probe_augmentation(cfg)  # crop + flip only: nothing for the device to apply
  b = _take(pipeline.build_dataset(cfg, sampler={'name': 'single'}, train=True, batch_size=2, seed=0,
                                   process_index=0, process_count=1), 1)[0]
  assert b['video'].dtype == np.uint8 and 'photometric' not in b
  cfg.photometric = 'tpu'
  with pytest.raises(ValueError, match='data.photometric'):
    build()


@pytest.mark.slow
def test_erasing_alone_ships_parameters_and_erases_per_clip_on_tclr_views(tmp_path):
  """Crop + flip + TCLR's erasing only (no colour op): the parameters still travel, and
  finish_batch zeroes each clip's drawn box in every frame of that clip (all 10 TCLR views)."""
  path = str(tmp_path / 'still.tfrecord')
  _write(path, [tfrecord.make_sequence_example(_encode([_textured(7)] * 40), label=1)
                for _ in range(2)])
  cfg = _config(tmp_path, [path])
  config_lib.set_probe_augmentation(cfg)
  cfg.augmentation.update(erase_prob=1.0, erase_size=0.5)  # extent 8 at 16 px: sides 4 .. 7
  b = _take(pipeline.build_dataset(cfg, sampler={'name': 'tclr', 'num_frames': 4}, train=True,
                                   batch_size=2, seed=0, process_index=0, process_count=1), 1)[0]
  p = b['photometric']
  assert p.shape == (2, 10, photometric.SIZE) and (p[..., photometric.ERASE] == 1).all()
  boxes = p[..., photometric.ERASE_BOX]
  assert boxes[..., 2:].min() >= 4 and boxes[..., 2:].max() <= 7 and len({tuple(r) for r in boxes.reshape(-1, 4)}) > 10
  v = np.asarray(jax.jit(device.make_finish(cfg))(b)['video'])
  for i in range(2):
    for view in range(10):
      top, left, h, w = boxes[i, view].astype(int)
      inside = np.zeros((16, 16), bool)
      inside[top:top + h, left:left + w] = True
      zero = (v[i, view] == 0).all(-1)  # [T, 16, 16]
      assert zero[:, inside].all() and not zero[:, ~inside].any()


@pytest.mark.slow
def test_bad_records_are_counted_not_fatal(tmp_path):
  good = lambda i: tfrecord.make_sequence_example(_index_video(12), label=i)
  corrupt_jpeg = _index_video(12)
  corrupt_jpeg[3] = corrupt_jpeg[3][:20] + b'garbage' * 10  # a frame every clip samples
  corrupt_all = [f[:30] + b'\x00' * 40 for f in corrupt_jpeg]
  no_frames = tf.train.SequenceExample()
  no_frames.context.feature['clip/label/index'].int64_list.value.append(7)
  no_label = tfrecord.make_sequence_example(_index_video(12), label=None)
  short = tfrecord.make_sequence_example(_index_video(3), label=8)
  path = str(tmp_path / 'mixed.tfrecord')
  _write(path, [good(0), b'not a sequence example', tfrecord.make_sequence_example(corrupt_all, 5),
                no_frames, no_label, short, good(1)])
  cfg = _config(tmp_path, [path], bad_label='skip')  # the missing label: counted, skipped
  stats = pipeline.PipelineStats()
  ds = pipeline.build_dataset(cfg, sampler={'name': 'single'}, train=False, batch_size=4, seed=0,
                              process_index=0, process_count=1)
  out = list(pipeline.iterate(ds, stats))
  labels = np.concatenate([b['label'][b['mask'] > 0] for b in out])
  assert sorted(labels.tolist()) == [0, 1, 8]  # the short video is padded and used
  assert stats.as_dict() == {'parse_failed': 1, 'decode_failed': 1, 'missing_key': 1,
                             'short_padded': 1, 'short_skipped': 0, 'bad_label': 1,
                             'skipped': 4}
  # training keeps going through them
  stats = pipeline.PipelineStats()
  cfg.short_video = 'skip'
  ds = pipeline.build_dataset(cfg, sampler={'name': 'cvrl'}, train=True, batch_size=2, seed=0,
                              process_index=0, process_count=1)
  got = [b['label'] for b in _take_with(ds, stats, 4)]
  assert set(np.concatenate(got).tolist()) == {0, 1}
  assert stats.short_skipped >= 1 and stats.decode_failed >= 1
  assert stats.bad_label >= 1
  assert stats.parse_failed >= 1


def _take_with(ds, stats, n):
  return [b for _, b in zip(range(n), pipeline.iterate(ds, stats))]


def test_build_time_errors_name_the_problem(tmp_path, shards):
  cfg = _config(tmp_path, [str(tmp_path / 'nothing-*.tfrecord')])
  with pytest.raises(ValueError, match='nothing-'):
    pipeline.build_dataset(cfg, sampler={'name': 'cvrl'}, train=True, batch_size=2, seed=0,
                           process_index=0, process_count=1)
  cfg = _config(tmp_path, shards, frames_key='frames/jpeg')
  with pytest.raises(ValueError, match="'frames/jpeg'.*image/encoded"):
    pipeline.build_dataset(cfg, sampler={'name': 'cvrl'}, train=True, batch_size=2, seed=0,
                           process_index=0, process_count=1)
  cfg = _config(tmp_path, shards, label_key='label')
  with pytest.raises(ValueError, match="'label'"):
    pipeline.build_dataset(cfg, sampler={'name': 'cvrl'}, train=True, batch_size=2, seed=0,
                           process_index=0, process_count=1)
  cfg = _config(tmp_path, shards, source='tfds', tfds_name='no_such_dataset_xyz')
  with pytest.raises(ValueError, match='no_such_dataset_xyz'):
    pipeline.build_dataset(cfg, sampler={'name': 'cvrl'}, train=True, batch_size=2, seed=0,
                           process_index=0, process_count=1)


def test_record_counter_matches_tf(shards):
  for f in shards:
    assert tfrecord.count_records(f) == sum(1 for _ in tf.data.TFRecordDataset(f)) == 3


def test_training_clips_take_the_strides_drawn_for_them(tmp_path):
  path = str(tmp_path / 'index.tfrecord')
  _write(path, [tfrecord.make_sequence_example(_index_video(40), label=i) for i in range(4)])
  cfg = _config(tmp_path, [path])
  cfg.augmentation.clip_strides = (1, 3)
  cfg.augmentation.color_jitter_prob = cfg.augmentation.grayscale_prob = 0.0
  ds = pipeline.build_dataset(cfg, sampler={'name': 'cvrl'}, train=True, batch_size=4, seed=0,
                              process_index=0, process_count=1)
  levels = np.concatenate([b['video'] for b in _take(ds, 4)]).mean(axis=(3, 4, 5))  # [16, 2, T]
  frame_idx = np.round((levels - 2) / 4).astype(int)
  steps = np.diff(frame_idx, axis=-1)
  np.testing.assert_array_equal(steps, np.broadcast_to(steps[..., :1], steps.shape))
  assert set(np.unique(steps)) == {1, 3}  # 32 clips: both strides drawn
