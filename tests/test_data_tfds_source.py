"""TFDS source through the pipeline, on tfds.testing.mock_data (ucf101 features)."""
import numpy as np
import pytest
import tensorflow_datasets as tfds

from cvrl.data import config as config_lib
from cvrl.data import photometric
from cvrl.data import pipeline


def _cfg(**kw):
  cfg = config_lib.default_data_config()
  cfg.source = 'tfds'
  cfg.tfds_name = 'ucf101'
  cfg.num_frames, cfg.stride = 4, 2
  cfg.crop_size = cfg.eval_crop_size = cfg.eval_resize = 16
  cfg.num_parallel_calls = 2
  cfg.jit_photometric = False
  for k, v in kw.items():
    setattr(cfg, k, v)
  return cfg


def test_tfds_eval_batches():
  with tfds.testing.mock_data(num_examples=4):
    # the mocked labels come through unchanged, each test video once
    ref = sorted(int(e['label']) for e in tfds.load('ucf101', split='test'))
    ds = pipeline.build_dataset(_cfg(), sampler={'name': 'multiview', 'num_clips': 2, 'num_crops': 1},
                                train=False, batch_size=3, seed=0, process_index=0, process_count=1)
    out = list(pipeline.iterate(ds))
    labels = np.concatenate([o['label'][o['mask'] > 0] for o in out])
    assert sorted(labels.tolist()) == ref
    assert out[0]['video'].shape == (3, 2, 4, 16, 16, 3)


def test_tfds_hosts_and_key_errors():
  with tfds.testing.mock_data(num_examples=4):
    ids = []
    for p in range(2):
      ds = pipeline.build_dataset(_cfg(), sampler={'name': 'single'}, train=False, batch_size=4,
                                  seed=0, process_index=p, process_count=2)
      out = list(pipeline.iterate(ds))
      ids.append({int(i) for o in out for i, m in zip(o['index'], o['mask']) if m > 0})
    assert ids[0] and ids[1] and not ids[0] & ids[1]
    with pytest.raises(ValueError, match="'frames'.*video"):
      pipeline.build_dataset(_cfg(tfds_video_key='frames'), sampler={'name': 'cvrl'}, train=True,
                             batch_size=2, seed=0, process_index=0, process_count=1)


class CvrlTestTinyVideos(tfds.core.GeneratorBasedBuilder):
  """12 one-colour JPEG videos, label = video number; written as 4 files."""
  VERSION = tfds.core.Version('1.0.0')

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        'video': tfds.features.Video(shape=(None, 12, 16, 3), encoding_format='jpeg'),
        'label': tfds.features.ClassLabel(num_classes=12)}))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {'train': self._generate_examples()}

  def _generate_examples(self):
    for i in range(12):
      yield i, {'video': np.full((3, 12, 16, 3), 20 * i, np.uint8), 'label': i}


@pytest.mark.slow
def test_tfds_training_reads_the_global_order_by_record(tmp_path):
  builder = CvrlTestTinyVideos(data_dir=str(tmp_path))
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(num_shards=4))
  assert len(builder.info.splits['train'].file_instructions) == 4
  cfg = _cfg(tfds_name='cvrl_test_tiny_videos', tfds_data_dir=str(tmp_path),
             crop_size=8, eval_crop_size=8, eval_resize=8)
  cfg.num_frames, cfg.stride = 2, 1

  def epochs(seed, n=3, **kw):
    ds = pipeline.build_dataset(cfg, sampler={'name': 'single'}, train=True, batch_size=12,
                                seed=seed, process_index=0, process_count=1, **kw)
    return [b['label'].tolist() for _, b in zip(range(n), pipeline.iterate(ds))]

  orders = epochs(0)
  assert all(sorted(o) == list(range(12)) for o in orders)  # every video once per epoch
  assert len({tuple(o) for o in orders}) == 3  # a new order every epoch
  blocks = {tuple(sorted(o[k:k + 3])) for o in orders for k in range(0, 12, 3)}
  assert len(blocks) > 4  # records, not whole files, are ordered
  assert epochs(0) == orders  # the same seed, the same orders
  assert epochs(0, n=2, start_step=1) == orders[1:]  # a resumed run reads the orders it would have
  assert epochs(1, n=1) != orders[:1]
  # two hosts of 6 read the two halves of each global batch of 12
  halves = [[b['label'].tolist() for _, b in zip(range(3), pipeline.iterate(pipeline.build_dataset(
      cfg, sampler={'name': 'single'}, train=True, batch_size=6, seed=0, process_index=p,
      process_count=2)))] for p in range(2)]
  assert [a + b for a, b in zip(*halves)] == orders
  video = next(pipeline.iterate(pipeline.build_dataset(
      cfg, sampler={'name': 'single'}, train=True, batch_size=12, seed=0, process_index=0,
      process_count=1)))['video']
  assert video.shape == (12, 1, 2, 8, 8, 3) and video.dtype == np.uint8
