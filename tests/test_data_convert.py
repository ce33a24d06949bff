"""Converter round trip: videos written with PyAV -> shards -> pipeline."""
import json
import os

import numpy as np
import pytest
import tensorflow as tf

import av  # the test extra installs PyAV

from cvrl.data import config as config_lib
from cvrl.data import convert
from cvrl.data import pipeline

H, W, T = 32, 48, 8


def _content(seed):
  """T frames of a smooth pattern sliding right: easy on a lossy codec."""
  rng = np.random.default_rng(seed)
  coarse = rng.random((4, 6, 3)).astype(np.float32)
  big = tf.image.resize(coarse[None], [H, W + 2 * T], 'bicubic')[0].numpy().clip(0, 1)
  return (np.stack([big[:, 2 * t:2 * t + W] for t in range(T)]) * 255).astype(np.uint8)


def _write_video(path, frames):
  with av.open(path, 'w') as c:
    s = c.add_stream('mpeg4', rate=10)
    s.width, s.height, s.pix_fmt = W, H, 'yuv420p'
    s.options = {'qscale': '2'}
    for f in frames:
      for p in s.encode(av.VideoFrame.from_ndarray(f, format='rgb24')):
        c.mux(p)
    for p in s.encode():
      c.mux(p)


@pytest.fixture(scope='module')
def videos(tmp_path_factory):
  root = tmp_path_factory.mktemp('videos')
  truth = {}
  for ci, cls in enumerate(['jump', 'run']):
    os.makedirs(root / cls)
    for i in range(2):
      path = str(root / cls / f'v{i}.mp4')
      truth[path] = (ci, _content(10 * ci + i))
      _write_video(path, truth[path][1])
  with open(root / 'run' / 'broken.mp4', 'wb') as f:
    f.write(b'\x00\x01 not a video' * 50)
  return root, truth


def _read_shards(paths):
  out = []
  for path in paths:
    for rec in tf.data.TFRecordDataset(path):
      ex = tf.train.SequenceExample.FromString(rec.numpy())
      frames = [tf.io.decode_jpeg(f.bytes_list.value[0]).numpy()
                for f in ex.feature_lists.feature_list['image/encoded'].feature]
      out.append((ex.context.feature['clip/label/index'].int64_list.value[0],
                  ex.context.feature['clip/label/text'].bytes_list.value[0].decode(), np.stack(frames)))
  return out


def test_folder_round_trip_resumable_and_pipeline(videos, tmp_path):
  root, truth = videos
  out = str(tmp_path / 'shards')
  report = convert.convert(convert.list_folder(str(root)), out, num_shards=2, short_side=24,
                           jpeg_quality=95, workers=0, progress=False)
  assert report['written'] == 4 and report['num_classes'] == 2
  assert [os.path.basename(p) for p, _ in report['unreadable']] == ['broken.mp4']
  with open(os.path.join(out, 'label_map.json')) as f:
    assert json.load(f) == {'jump': 0, 'run': 1}
  shards = sorted(p for p in os.listdir(out) if p.endswith('.tfrecord'))
  assert shards == ['data-00000-of-00002.tfrecord', 'data-00001-of-00002.tfrecord']
  records = _read_shards([os.path.join(out, s) for s in shards])
  assert sorted((lab, text) for lab, text, _ in records) == [(0, 'jump'), (0, 'jump'), (1, 'run'), (1, 'run')]
  for label, _, frames in records:
    assert frames.shape == (T, 24, 36, 3)  # shorter side 32 -> 24
    # matches one of its class's source videos, resized, within codec + JPEG error
    errs = [np.abs(frames.astype(float) - tf.image.resize(src, [24, 36], 'area').numpy()).mean()
            for lab, src in truth.values() if lab == label]
    assert min(errs) < 12 < max(errs), errs  # the other video of the class is far
  # stored frames are exactly the JPEG round trip of the decoded, resized video
  first = sorted(truth)[0]
  direct = convert.decode_video(first, 24, 0)
  jpeg = np.stack([tf.io.decode_jpeg(tf.io.encode_jpeg(f, quality=95)).numpy() for f in direct])
  stored = [f for lab, text, f in records if text == 'jump']
  assert min(np.abs(s.astype(float) - jpeg).max() for s in stored) == 0
  # resumable: a second run keeps the finished shards
  mtimes = [os.path.getmtime(os.path.join(out, s)) for s in shards]
  convert.convert(convert.list_folder(str(root)), out, num_shards=2, short_side=24, workers=0,
                  progress=False)
  assert mtimes == [os.path.getmtime(os.path.join(out, s)) for s in shards]
  # through the pipeline: right labels, frames back
  cfg = config_lib.default_data_config()
  cfg.source, cfg.eval_paths = 'tfrecord', os.path.join(out, '*.tfrecord')
  cfg.num_frames, cfg.stride, cfg.eval_resize, cfg.eval_crop_size = T, 1, 24, 24
  ds = pipeline.build_dataset(cfg, sampler={'name': 'single'}, train=False, batch_size=4, seed=0,
                              process_index=0, process_count=1)
  batch = next(pipeline.iterate(ds))
  assert sorted(batch['label'].tolist()) == [0, 0, 1, 1]
  for b in range(4):
    clip = batch['video'][b, 0].astype(np.float32)  # uint8 centre 24x24 crop of the 24x36 frames
    ref = [f[:, :, 6:30] for lab, _, f in records if lab == batch['label'][b]]
    assert min(np.abs(clip - r).mean() for r in ref) < 1.0


@pytest.mark.slow
def test_csv_cli_with_workers_and_fps(videos, tmp_path):
  root, truth = videos
  csv_path = tmp_path / 'list.csv'
  paths = sorted(truth)
  with open(csv_path, 'w') as f:
    f.write('path,label\n')
    for p in paths:
      f.write(f'{os.path.relpath(p, tmp_path)},{truth[p][0] + 3}\n')
  out = str(tmp_path / 'csv_shards')
  assert convert.main(['--csv', str(csv_path), '--output_dir', out, '--num_shards', '2',
                       '--short_side', '0', '--fps', '5', '--workers', '2']) == 0
  with open(os.path.join(out, 'label_map.json')) as f:
    assert json.load(f) == {'3': 3, '4': 4}  # integer labels keep their value
  records = _read_shards(sorted(os.path.join(out, p) for p in os.listdir(out) if p.endswith('.tfrecord')))
  assert sorted(r[0] for r in records) == [3, 3, 4, 4]
  assert all(r[2].shape == (T // 2, H, W, 3) for r in records)  # 10 fps -> 5 fps


def test_record_streamed_in_wire_format_equals_the_proto(videos):
  """The one-buffer record is byte for byte what make_sequence_example serializes."""
  root, truth = videos
  path = sorted(truth)[0]
  record, n = convert.encode_video_record(path, 3, 'jump', short_side=24, fps=0, quality=90)
  jpegs = [tf.io.encode_jpeg(f, quality=90).numpy() for f in convert.decode_video(path, 24, 0)]
  from cvrl.data.sources import tfrecord
  assert n == T == len(jpegs)
  assert bytes(record) == tfrecord.make_sequence_example(jpegs, 3, text='jump').SerializeToString()
  # max_frames keeps the first frames only
  capped, n = convert.encode_video_record(path, 3, 'jump', 24, 0, 90, max_frames=3)
  ex = tf.train.SequenceExample.FromString(bytes(capped))
  assert n == 3 and len(ex.feature_lists.feature_list['image/encoded'].feature) == 3
  assert ex.feature_lists.feature_list['image/encoded'].feature[2].bytes_list.value[0] == jpegs[2]


def test_label_map_reused_across_splits(videos, tmp_path):
  """A split missing a class keeps the other split's indices; an unknown label is an error."""
  root, truth = videos
  train_map = tmp_path / 'label_map.json'
  train_map.write_text(json.dumps({'jump': 0, 'run': 1, 'swim': 2}))
  run_only = [(p, 'run') for p in sorted(truth) if '/run/' in p]
  out = str(tmp_path / 'val')
  rep = convert.convert(run_only, out, num_shards=1, short_side=16, workers=0, progress=False,
                        label_map_file=str(train_map), max_frames=2)
  assert rep['written'] == 2
  records = _read_shards([os.path.join(out, 'data-00000-of-00001.tfrecord')])
  assert [(lab, text, f.shape[0]) for lab, text, f in records] == [(1, 'run', 2)] * 2
  with open(os.path.join(out, 'label_map.json')) as f:
    assert json.load(f) == {'jump': 0, 'run': 1, 'swim': 2}
  with pytest.raises(ValueError, match=r"1 label\(s\) not in --label_map .*: dance"):
    convert.convert(run_only + [(run_only[0][0], 'dance')], str(tmp_path / 'x'),
                    label_map_file=str(train_map), workers=0, progress=False)
  assert not os.path.exists(tmp_path / 'x')  # checked before anything is written
  csv_path = tmp_path / 'l.csv'
  csv_path.write_text(f'{run_only[0][0]},dance\n')
  assert convert.main(['--csv', str(csv_path), '--output_dir', str(tmp_path / 'y'),
                       '--label_map', str(train_map), '--workers', '0']) == 2
