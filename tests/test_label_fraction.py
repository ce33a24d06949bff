"""data.label_fraction: fixed class-balanced labelled subsets of the train split (CVRL's 1% /
10% fine-tuning), the same for a seed in every job and on any host count. (A fine-tune
job's epoch of the subset: tests/test_jobs_finetune.py.)"""
import os

import ml_collections
import numpy as np
import pytest

from cvrl import config_lib
from cvrl.core.errors import ConfigError
from cvrl.data import config as data_config_lib
from cvrl.data import pipeline, sources, subset
from cvrl.eval import features as F
from cvrl.engine import input as input_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VIDEOS, CLASSES, SHARDS = 32, 4, 3


def _unbalanced(seed=0):
  """(ids, labels): classes of 1, 3, 10, 25, 57 and 200 examples under pipeline-like ids."""
  rng = np.random.default_rng(seed)
  sizes = [1, 3, 10, 25, 57, 200]
  labels = np.concatenate([np.full(n, c) for c, n in enumerate(sizes)])
  ids = rng.choice(2 ** 20, size=len(labels), replace=False)
  ids = (ids % 7) * 2 ** 32 + ids  # several files
  return ids.astype(np.int64), labels.astype(np.int64), sizes


@pytest.mark.parametrize('fraction', [0.01, 0.1, 0.25, 0.5])
def test_select_keeps_the_per_class_quota(fraction):
  ids, labels, sizes = _unbalanced()
  kept = subset.select(ids, labels, fraction, seed=3)
  kept_labels = labels[np.isin(ids, kept)]
  counts = np.bincount(kept_labels, minlength=len(sizes))
  assert counts.tolist() == [max(1, round(fraction * n)) for n in sizes]
  assert len(kept) == len(set(kept.tolist())) and set(kept.tolist()) <= set(ids.tolist())
  assert subset.subset_size(labels, fraction)[0] == counts.sum()
  assert subset.subset_size(labels, fraction)[1:] == (counts.min(), counts.max())


def test_select_is_a_function_of_the_seed_alone():
  ids, labels, _ = _unbalanced()
  kept = subset.select(ids, labels, 0.1, seed=7)
  np.testing.assert_array_equal(kept, subset.select(ids, labels, 0.1, seed=7))
  assert not np.array_equal(kept, subset.select(ids, labels, 0.1, seed=8))
  order = np.random.default_rng(1).permutation(len(ids))  # the order ids come in
  np.testing.assert_array_equal(kept, subset.select(ids[order], labels[order], 0.1, seed=7))
  np.testing.assert_array_equal(np.sort(ids), subset.select(ids, labels, 1.0, seed=7))


def test_invalid_labels_are_left_to_the_bad_label_policy():
  ids, labels, _ = _unbalanced()
  labels = labels.copy()
  labels[:4] = [-1, 9, 9, -2 ** 31]  # missing / outside [0, 6)
  kept = subset.select(ids, labels, 0.1, seed=0, num_classes=6)
  assert set(ids[:4].tolist()) <= set(kept.tolist())
  assert subset.subset_size(labels, 0.1, num_classes=6)[0] == len(kept) - 4


@pytest.mark.parametrize('value', [0.0, -0.1, 1.5, float('nan'), 'half', None, True])
def test_bad_values_name_the_field(value):
  with pytest.raises(ValueError, match=r'data\.label_fraction must be a number in \(0, 1\]'):
    subset.label_fraction({'label_fraction': value})


def test_bad_value_stops_the_jobs_and_the_pipeline(data_dir):
  cfg = _cfg(data_dir, label_fraction=0.0)
  with pytest.raises(ValueError, match=r'data\.label_fraction'):
    pipeline.build_dataset(cfg, sampler={'name': 'single'}, train=True, batch_size=4, seed=0,
                           process_index=0, process_count=1)
  for make in (config_lib.probe_config, config_lib.finetune_config):
    c = make()
    c.random_init = True
    c.data.label_fraction = 1.5
    with pytest.raises(ValueError, match=r'data\.label_fraction.*\(0, 1\]'):
      F.validate_downstream(c.job, config_lib.encoder_args(c), c.optim, c.evaluate, c.data)


# ---------------------------------------------------------------- through the pipeline

@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp('label_fraction'))


def _cfg(directory, **kw):
  cfg = data_config_lib.default_data_config()
  cfg.source = 'synthetic'
  cfg.synthetic.update(dir=directory, num_train_videos=VIDEOS, num_eval_videos=8,
                       num_classes=CLASSES, num_frames=6, size=24, num_shards=SHARDS, seed=0)
  cfg.num_frames, cfg.stride = 4, 1
  cfg.crop_size = cfg.eval_crop_size = cfg.eval_resize = 16
  cfg.num_parallel_calls = 2
  cfg.jit_photometric = False
  cfg.update(kw)
  sources.prepare(cfg)
  return cfg


def _expected(fraction, seed):
  """What the synthetic shards hold: video i (label i % 4) is record i // 3 of shard i % 3."""
  i = np.arange(VIDEOS)
  ids = (i % SHARDS) * 2 ** 32 + i // SHARDS
  kept = subset.select(ids, i % CLASSES, fraction, seed)
  return set(kept.tolist()), dict(zip(ids.tolist(), (i % CLASSES).tolist()))


def _elements(cfg, n, batch_size, seed=0, **kw):
  """(ids, labels) of the first n batches."""
  ds = pipeline.build_dataset(cfg, sampler={'name': 'single'}, batch_size=batch_size, seed=seed,
                              **{'train': True, 'process_index': 0, 'process_count': 1, **kw})
  batches = [b for _, b in zip(range(n), pipeline.iterate(ds))]
  mask = np.concatenate([b.get('mask', np.ones(batch_size)) for b in batches]) > 0
  return (np.concatenate([b['index'] for b in batches])[mask].tolist(),
          np.concatenate([b['label'] for b in batches])[mask].tolist())


def test_one_epoch_is_the_balanced_subset(data_dir):
  cfg = _cfg(data_dir, label_fraction=0.25)
  expected, label_of = _expected(0.25, seed=0)
  assert len(expected) == 8
  ids, labels = _elements(cfg, 4, batch_size=4)  # epochs 0 and 1
  for epoch in (slice(0, 8), slice(8, 16)):
    assert sorted(ids[epoch]) == sorted(expected)  # each kept video once per epoch
    assert np.bincount(labels[epoch], minlength=CLASSES).tolist() == [2] * CLASSES
  assert all(label_of[i] == y for i, y in zip(ids, labels))
  # start_step counts the subset: step 3 is epoch 1's second batch
  resumed, _ = _elements(cfg, 1, batch_size=4, start_step=3)
  assert resumed == ids[12:16]
  other, _ = _elements(cfg, 2, batch_size=4, seed=1)
  assert set(other) == _expected(0.25, seed=1)[0] != expected
  # the un-augmented pass over the train split (probe features) reads the same subset
  plain, _ = _elements(cfg, 100, batch_size=4, train=False, split='train')
  assert sorted(plain) == sorted(expected)


def test_hosts_share_one_subset(data_dir):
  cfg = _cfg(data_dir, label_fraction=0.25)
  expected, _ = _expected(0.25, seed=0)
  seen = []
  for p in range(2):
    # epoch 0: the global order's first len(expected) / 2 batches of 2, one row per host
    ids, _ = _elements(cfg, len(expected) // 2, batch_size=1, process_index=p, process_count=2)
    seen.append(set(ids))
  assert seen[0] and seen[1] and not seen[0] & seen[1]
  assert seen[0] | seen[1] == expected
  # one pass over the train split: every host yields as many batches as the fullest host
  # has subset videos (host p reads files p, p + 2 ...), each kept video once
  per_host = np.bincount([(i // 2 ** 32) % 2 for i in expected], minlength=2)
  ds = [pipeline.build_dataset(cfg, sampler={'name': 'single'}, train=False, batch_size=2,
                               seed=0, process_index=p, process_count=2, split='train')
        for p in range(2)]
  batches = [list(pipeline.iterate(d)) for d in ds]
  assert [len(b) for b in batches] == [-(-max(per_host) // 2)] * 2
  ids = [int(i) for b in batches[0] + batches[1] for i, m in zip(b['index'], b['mask']) if m > 0]
  assert sorted(ids) == sorted(expected)


def test_a_subset_smaller_than_a_global_batch_is_an_error(data_dir):
  cfg = _cfg(data_dir, label_fraction=0.01)  # 4 videos kept; 8 hosts of 1: a batch of 8
  for p in (0, 7):
    with pytest.raises(ConfigError, match='has 4 examples, fewer than one global batch of 8'):
      pipeline.build_dataset(cfg, sampler={'name': 'single'}, train=True, batch_size=1, seed=0,
                             process_index=p, process_count=8)


def test_eval_split_and_pretraining_read_every_video(data_dir):
  cfg = _cfg(data_dir, label_fraction=0.25)
  ids, _ = _elements(cfg, 100, batch_size=4, train=False)  # the eval split: never subset
  assert len(ids) == 8
  it, _ = input_lib.host_batches(cfg, {'name': 'single'}, seed=0, batch_size=4, start_step=0,
                                 process_index=0, process_count=1)
  pre = np.concatenate([next(it)['index'] for _ in range(VIDEOS // 4)])
  assert len(set(pre.tolist())) == VIDEOS  # pretraining's first epoch: all 32 videos


def test_pretraining_evaluators_read_every_train_video_other_jobs_the_subset(data_dir, run_mesh):
  """The job says which train split its evaluators read (data.label_fraction = 0.25: 8 of
  32 videos): pretraining's every video, the evaluate job's the labelled subset."""
  from cvrl.jobs import evaluate, pretrain  # pylint: disable=import-outside-toplevel
  c = config_lib.pretrain_config('cvrl')
  c.data = _cfg(data_dir, label_fraction=0.25)
  c.update(total_epochs=None, total_steps=1, warmup_epochs=None)  # a schedule parse counts
  e = config_lib.evaluate_config()
  e.data, e.random_init, e.evaluate.mode = c.data, True, 'knn'
  for splits, want in ((pretrain._eval_splits(pretrain.parse(c)), VIDEOS),  # pylint: disable=protected-access
                       (evaluate._splits(evaluate.parse(e), 0), 8)):  # pylint: disable=protected-access
    ids = [int(i) for b in splits.batches('train', 1, 1, 8)
           for i, m in zip(b['index'], b['mask']) if m > 0]
    assert len(ids) == len(set(ids)) == want


def test_epochs_count_the_subset(data_dir):
  assert F.num_examples(_cfg(data_dir, label_fraction=0.25), 'train') == 8
  assert F.num_examples(_cfg(data_dir, label_fraction=0.1), 'train') == 4  # round(0.8) = 1
  assert F.num_examples(_cfg(data_dir), 'train') == VIDEOS
  # a user-given size is the full split's; the subset is still what an epoch counts
  assert F.num_examples(_cfg(data_dir, label_fraction=0.25, num_train_examples=32), 'train') == 8
  assert F.num_examples(_cfg(data_dir, label_fraction=0.25), 'eval') == 8
  c = ml_collections.ConfigDict(dict(total_epochs=10, total_steps=None))
  assert config_lib.steps('total', c, num_examples=8, batch_size=4) == 20


# ------------------------------------------------------------------------- configs

@pytest.mark.parametrize('config', ['configs/demo_probe.py', 'configs/ucf101_finetune.py'])
def test_command_line_sets_the_fraction(config):
  c = config_lib.config_from_command_line([f'--config={os.path.join(ROOT, config)}',
                                           '--config.data.label_fraction=0.1'])
  assert c.data.label_fraction == 0.1
  subset.label_fraction(c.data)


def test_probe_after_pretraining_carries_the_fraction():
  pre = config_lib.pretrain_config()
  pre.data.label_fraction = 0.01
  assert config_lib.probe_config_for(pre, '/ckpt').data.label_fraction == 0.01
  old = ml_collections.ConfigDict(pre.to_dict())
  del old.data['label_fraction']  # a pretraining config from before the field
  assert config_lib.probe_config_for(old, '/ckpt').data.label_fraction == 1.0


# ------------------------------------------------------------------------------ TFDS

@pytest.mark.slow
def test_tfds_source_reads_the_same_subset_on_any_host_count(tmp_path):
  import tensorflow as tf
  import tensorflow_datasets as tfds

  class CvrlTestLabelFractionVideos(tfds.core.GeneratorBasedBuilder):
    """12 one-colour JPEG videos of 3 classes (label = video number % 3), in 4 files."""
    VERSION = tfds.core.Version('1.0.0')

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
          'video': tfds.features.Video(shape=(None, 12, 16, 3), encoding_format='jpeg'),
          'label': tfds.features.ClassLabel(num_classes=3)}))

    def _split_generators(self, dl_manager):
      del dl_manager
      return {'train': self._generate_examples()}

    def _generate_examples(self):
      for i in range(12):
        yield i, {'video': np.full((3, 12, 16, 3), 20 * i, np.uint8), 'label': i % 3}

  builder = CvrlTestLabelFractionVideos(data_dir=str(tmp_path))
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(num_shards=4))
  every = builder.as_dataset(split='train', read_config=tfds.ReadConfig(add_tfds_id=True))
  every = [(int(tf.strings.to_hash_bucket_fast(e['tfds_id'], 2 ** 62)), int(e['label']))
           for e in every]
  ids, labels = (np.array(x) for x in zip(*every))
  expected = set(subset.select(ids, labels, 0.5, seed=4).tolist())
  assert np.bincount(labels[np.isin(ids, list(expected))]).tolist() == [2, 2, 2]
  cfg = data_config_lib.default_data_config()
  cfg.update(source='tfds', tfds_name='cvrl_test_label_fraction_videos',
             tfds_data_dir=str(tmp_path), num_frames=2, stride=1, crop_size=8, eval_crop_size=8,
             eval_resize=8, num_parallel_calls=2, jit_photometric=False,
             label_fraction=0.5)
  one, _ = _elements(cfg, 1, batch_size=6, seed=4)
  assert set(one) == expected and len(one) == 6
  seen = [set(_elements(cfg, 3, batch_size=1, seed=4, process_index=p, process_count=2)[0])
          for p in range(2)]
  assert not seen[0] & seen[1] and seen[0] | seen[1] == expected
