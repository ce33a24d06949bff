"""Labels are checked where they enter the pipeline: a label outside [0, num_classes), or
missing in a labelled job, stops the job naming the file, record and label (default), or
is counted and skipped (data.bad_label='skip')."""
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from cvrl.data import pipeline
from cvrl.data.sources import tfrecord
from cvrl.core.errors import ConfigError
from test_data_pipeline import _config, _index_video, _write

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GOOD = [0, 1, 2, 3, 1, 2]


def _shard(path, bad_at, bad):
  """GOOD labels with `bad` (an int, or None: no label) inserted at record `bad_at`."""
  labels = GOOD[:bad_at] + [bad] + GOOD[bad_at:]
  _write(path, [tfrecord.make_sequence_example(_index_video(12), label=l) for l in labels])
  return path


def _build(cfg, train):
  return pipeline.build_dataset(cfg, sampler={'name': 'single'}, train=train, batch_size=2,
                                seed=0, process_index=0, process_count=1)


@pytest.mark.parametrize('bad,text', [(999, 'has label 999, outside [0, 4)'),
                                      (-3, 'has label -3, outside [0, 4)'),
                                      (-1, 'has label -1, outside [0, 4)'),  # padding's value
                                      (None, 'has no label (clip/label/index)')])
def test_bad_label_stops_naming_file_record_and_label(tmp_path, bad, text):
  path = _shard(str(tmp_path / 'bad.tfrecord'), 3, bad)
  cfg = _config(tmp_path, [path], num_classes=4)
  with pytest.raises(pipeline.BadLabelError) as e:
    list(pipeline.iterate(_build(cfg, train=False)))
  assert isinstance(e.value, ConfigError)  # the CLI prints it as one line, exit 2
  msg = str(e.value)
  assert msg.startswith(f'{path}, record 3 {text}'), msg
  assert '\n' not in msg and "bad_label='skip'" in msg


def test_bad_label_stops_training_early(tmp_path):
  path = _shard(str(tmp_path / 'bad.tfrecord'), 2, 7)
  cfg = _config(tmp_path, [path], num_classes=4)
  it = pipeline.iterate(_build(cfg, train=True))
  with pytest.raises(pipeline.BadLabelError, match='record 2 has label 7'):
    for _ in range(4):  # within the first epoch's batches
      next(it)


def test_skip_counts_and_never_yields_bad_labels(tmp_path):
  labels = [0, 999, 1, -3, None, 2, 3, 4]  # 4 is outside [0, 4) too
  path = str(tmp_path / 'mixed.tfrecord')
  _write(path, [tfrecord.make_sequence_example(_index_video(12), label=l) for l in labels])
  cfg = _config(tmp_path, [path], num_classes=4, bad_label='skip')
  stats = pipeline.PipelineStats()
  out = list(pipeline.iterate(_build(cfg, train=False), stats))
  got = np.concatenate([b['label'] for b in out])
  mask = np.concatenate([b['mask'] for b in out])
  assert sorted(got[mask > 0].tolist()) == [0, 1, 2, 3]
  assert set(got[mask == 0].tolist()) == {-1}  # as padding: never indexes a class
  assert stats.bad_label == 4 and stats.as_dict()['bad_label'] == 4 and stats.skipped == 4
  stats = pipeline.PipelineStats()
  it = pipeline.iterate(_build(cfg, train=True), stats)
  train_labels = np.concatenate([next(it)['label'] for _ in range(4)])
  assert set(train_labels.tolist()) <= {0, 1, 2, 3}
  assert stats.bad_label >= 4


def test_label_minus_one_is_bad_input_while_padding_and_unlabelled_data_keep_it(tmp_path):
  """-1 is what padding rows and the records of unlabelled data carry: a record labelled
  -1 in a labelled job is bad like -3 (skipped and counted here, without a class count
  too); padding still reads -1 with mask 0, unlabelled pretraining records -1 with mask 1."""
  path = _shard(str(tmp_path / 'bad.tfrecord'), 3, -1)
  cfg = _config(tmp_path, [path], bad_label='skip')  # no num_classes: only negatives are bad
  stats = pipeline.PipelineStats()
  out = list(pipeline.iterate(_build(cfg, train=False), stats))
  labels = np.concatenate([b['label'] for b in out])
  mask = np.concatenate([b['mask'] for b in out])
  assert stats.bad_label == 1 and sorted(labels[mask > 0].tolist()) == sorted(GOOD)
  assert set(labels[mask == 0].tolist()) == {-1}  # the bad record and the padding
  unlabelled = str(tmp_path / 'unlabelled.tfrecord')
  _write(unlabelled, [tfrecord.make_sequence_example(_index_video(12), label=None)] * 3)
  cfg = _config(tmp_path, [unlabelled], require_label=False)
  out = list(pipeline.iterate(_build(cfg, train=False)))
  labels = np.concatenate([b['label'] for b in out])
  mask = np.concatenate([b['mask'] for b in out])
  assert labels.tolist() == [-1] * 4 and mask.tolist() == [1, 1, 1, 0]


def test_unlabelled_job_and_unknown_class_count(tmp_path):
  """require_label=False reads no label; without num_classes only negatives are bad."""
  path = str(tmp_path / 'x.tfrecord')
  _write(path, [tfrecord.make_sequence_example(_index_video(12), label=l) for l in [0, None, 50]])
  cfg = _config(tmp_path, [path], require_label=False)
  assert len(list(pipeline.iterate(_build(cfg, train=False)))) == 2
  cfg = _config(tmp_path, [path], bad_label='skip')
  stats = pipeline.PipelineStats()
  out = list(pipeline.iterate(_build(cfg, train=False), stats))
  assert stats.bad_label == 1  # the missing label; 50 passes with no class count
  assert 50 in np.concatenate([b['label'] for b in out]).tolist()
  cfg.bad_label = 'ignore'
  with pytest.raises(ValueError, match='data.bad_label'):
    _build(cfg, train=False)


@pytest.mark.slow
def test_demo_recipe_on_bad_labels_stops_with_one_line(tmp_path):
  """The demo pointed at shards with a label 999: exit 2, one `cvrl: error:` line."""
  path = _shard(str(tmp_path / 'bad.tfrecord'), 1, 999)
  env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL='3')
  out = subprocess.run(
      [sys.executable, '-m', 'cvrl.main', '--config=configs/demo.py:steps=2,probe=False',
       '--config.data.source=tfrecord', f'--config.data.train_paths={path}',
       f'--config.data.eval_paths={path}', '--config.data.num_classes=4',
       '--config.data.num_train_examples=7', '--config.data.crop_size=16',
       '--config.data.num_frames=4', '--config.batch_size=4',  # 7 videos fill a batch
       f'--workdir={tmp_path / "wd"}'],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
  assert out.returncode == 2, out.stderr[-3000:]
  last = out.stderr.strip().splitlines()[-1]
  assert last == (f"cvrl: error: {path}, record 1 has label 999, outside [0, 4) (check "
                  "data.num_classes; data.bad_label='skip' counts and skips such records)")
  assert 'Traceback' not in out.stderr
