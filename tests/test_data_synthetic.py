"""Synthetic motion videos: deterministic, idempotent shards, label only in the motion."""
import os

import ml_collections
import numpy as np
import pytest
import tensorflow as tf

from cvrl import config_lib
from cvrl.data import sources
from cvrl.data.sources import synthetic


def test_render_is_deterministic_and_label_only_changes_motion():
  a = synthetic.render_video(0, 5, 2, 8, 16, 40)
  assert a.shape == (16, 40, 40, 3) and a.dtype == np.uint8
  np.testing.assert_array_equal(a, synthetic.render_video(0, 5, 2, 8, 16, 40))
  assert np.abs(a.astype(float) - synthetic.render_video(1, 5, 2, 8, 16, 40)).mean() > 5
  # same video slot, other classes: the first frame (appearance) is identical,
  # the later frames differ (motion)
  for other in (0, 3, 6):
    b = synthetic.render_video(0, 5, other, 8, 16, 40)
    np.testing.assert_array_equal(a[0], b[0])
    assert np.abs(a[8].astype(float) - b[8]).mean() > 1


def test_fast_classes_move_more_than_slow_ones():
  classes = synthetic.motion_classes(8)
  assert len(classes) == 8 and len({c for c in classes}) == 8
  def motion(label):
    return np.mean([np.abs(np.diff(synthetic.render_video(3, i, label, 8, 12, 40).astype(float),
                                   axis=0)).mean() for i in range(6)])
  slow = [c for c, (_, s) in enumerate(classes) if s == 1.0]
  fast = [c for c, (_, s) in enumerate(classes) if s > 1.0]
  assert min(motion(c) for c in fast[:2]) > max(motion(c) for c in slow[:2])


def test_shards_idempotent_and_balanced(tmp_path):
  d = str(tmp_path / 'syn')
  paths = synthetic.write_synthetic_shards(d, num_videos=6, num_classes=3, num_frames=8, size=24,
                                           num_shards=2, seed=0)
  assert paths == [os.path.join(d, 'train-00000-of-00002.tfrecord'),
                   os.path.join(d, 'train-00001-of-00002.tfrecord')]
  mtimes = [os.path.getmtime(p) for p in paths]
  assert synthetic.write_synthetic_shards(d, 6, 3, 8, 24, 2, 0) == paths
  assert mtimes == [os.path.getmtime(p) for p in paths]  # skipped: already complete
  labels = []
  for p in paths:
    for rec in tf.data.TFRecordDataset(p):
      ex = tf.train.SequenceExample.FromString(rec.numpy())
      labels.append(ex.context.feature['clip/label/index'].int64_list.value[0])
      frames = ex.feature_lists.feature_list['image/encoded'].feature
      assert len(frames) == 8
      assert tf.io.decode_jpeg(frames[0].bytes_list.value[0]).shape == (24, 24, 3)
  assert sorted(labels) == [0, 0, 1, 1, 2, 2]
  # other parameters: rewritten
  synthetic.write_synthetic_shards(d, 4, 2, 8, 24, 2, 0)
  assert sum(1 for p in paths for _ in tf.data.TFRecordDataset(p)) == 4


def test_opening_writes_nothing_until_prepare_and_names_it(tmp_path):
  data = ml_collections.ConfigDict(dict(source='synthetic', synthetic=dict(
      kind='motion', dir=str(tmp_path / 'syn'), num_train_videos=4, num_eval_videos=2,
      num_classes=2, num_frames=4, size=16, num_shards=2, seed=0, difficulty=None)))
  data.update({k: v for k, v in config_lib.default_data_config().items()
               if k not in data})
  for split in ('train', 'eval'):
    with pytest.raises(synthetic.NotPrepared, match=rf"not prepared in .*syn: call "
                       rf"cvrl.data.sources.prepare\(config.data, \['{split}'\]\)"):
      sources.make(data, split, seed=0, process_index=0, process_count=1)
  assert not (tmp_path / 'syn').exists()  # opening wrote nothing
  sources.prepare(data, ['train'])
  written = sorted(os.listdir(tmp_path / 'syn'))
  assert written == ['train-00000-of-00002.tfrecord', 'train-00001-of-00002.tfrecord',
                     'train.complete.json']
  reader = sources.make(data, 'train', seed=0, process_index=0, process_count=1)
  assert reader.num_classes == 2 and reader.host_counts == [4]
  with pytest.raises(synthetic.NotPrepared):  # the eval split is still not there
    sources.make(data, 'eval', seed=0, process_index=0, process_count=1)
  data.synthetic.num_train_videos = 6  # other parameters: the prepared shards do not count
  with pytest.raises(synthetic.NotPrepared):
    sources.make(data, 'train', seed=0, process_index=0, process_count=1)
  assert sorted(os.listdir(tmp_path / 'syn')) == written
