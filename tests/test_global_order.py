"""One training stream on any number of processes (cvrl.data.order).

In one process, the pipeline of every simulated process index: for 1, 2 and 3 processes and
2, 3 and 64 shards, global batch k (the processes' rows in process order) holds the same
example ids; each example once per epoch, never twice in a batch. Then real processes over
gloo on 127.0.0.1: a run resumed on another process count, 1 -> 2 at step 2 then 2 -> 1 at
step 4, ends with the parameters of the uninterrupted run; the 2 processes, each started in
its own directory, share a gs:// workdir (a GCS emulator) as a slice's hosts do."""
import io
import os
import textwrap

import numpy as np
import pytest
import tensorflow as tf
from etils import epath

from cvrl import config_lib as config_lib_full
from cvrl.core.errors import ConfigError
from cvrl.data import config as config_lib
from cvrl.data import pipeline
from cvrl.data.sources import tfrecord
from cvrl.engine import input as input_lib
import _storage
from _processes import committed_steps, metrics_rows
from _storage import emulator  # noqa: F401  (a fixture)
from test_multihost import HEAD, ROOT, RUN, spawn

VIDEOS, BATCH = 20, 6


def _shards(directory, num_shards):
  """Video i (a 4-frame 8x8 JPEG video, label i) in shard i % num_shards."""
  paths = [os.path.join(directory, f'train-{s:05d}.tfrecord') for s in range(num_shards)]
  writers = [tf.io.TFRecordWriter(p) for p in paths]
  for i in range(VIDEOS):
    frames = [tf.io.encode_jpeg(np.full((8, 8, 3), 10 * i, np.uint8)).numpy()] * 4
    writers[i % num_shards].write(tfrecord.make_sequence_example(frames, i).SerializeToString())
  for w in writers:
    w.close()
  return paths


def _global_batches(paths, processes, steps=6, start_step=0):
  cfg = config_lib.default_data_config()
  cfg.update(source='tfrecord', train_paths=','.join(paths), num_frames=2, stride=1,
             crop_size=8, num_parallel_calls=2, jit_photometric=False)
  parts = []
  for p in range(processes):
    ds = pipeline.build_dataset(cfg, sampler={'name': 'single'}, train=True,
                                batch_size=BATCH // processes, seed=3, start_step=start_step,
                                process_index=p, process_count=processes)
    parts.append([b['label'] for _, b in zip(range(steps), pipeline.iterate(ds))])
  return np.stack([np.concatenate(rows) for rows in zip(*parts)])


@pytest.mark.slow
@pytest.mark.parametrize('num_shards', [2, 3, 64])
def test_global_batches_are_the_same_on_any_process_count(tmp_path, num_shards):
  paths = _shards(str(tmp_path), num_shards)
  one = _global_batches(paths, 1)
  for processes in (2, 3):
    np.testing.assert_array_equal(_global_batches(paths, processes), one)
  assert all(len(set(b.tolist())) == BATCH for b in one)  # never twice in a batch
  stream = one.reshape(-1)
  assert sorted(stream[:VIDEOS].tolist()) == list(range(VIDEOS))  # epoch 0: every video once
  assert not np.array_equal(stream[:VIDEOS], np.arange(VIDEOS))  # in a seeded order
  assert len(set(stream[VIDEOS:].tolist())) == len(stream) - VIDEOS  # epoch 1 begins: no repeat
  # a resume mid-epoch (batch 5 of epoch 1, which starts at batch 4) on another process
  # count reads the same global batches from its step
  np.testing.assert_array_equal(_global_batches(paths, 2, steps=1, start_step=5), one[5:])


def test_a_resume_on_another_stream_is_one_line_unless_overridden(capsys):
  saved = config_lib_full.pretrain_config('cvrl')
  for field, value in (('batch_size', 512), ('seed', 7), ('data.synthetic.num_shards', 5),
                       ('data.train_paths', 'gs://elsewhere/train-*')):
    config = config_lib_full.pretrain_config('cvrl')
    head, _, key = field.rpartition('.')
    (config if not head else _sub(config, head))[key] = value
    with pytest.raises(ConfigError, match=f'^{field} is .*resume_new_stream=True') as e:
      input_lib.check_resume(saved, config_lib_full.as_dict(config))
    assert '\n' not in str(e.value)
    config.data.resume_new_stream = True
    input_lib.check_resume(saved, config_lib_full.as_dict(config))
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 1 and out[0].startswith(f'warning: {field} is '), out
  same = config_lib_full.as_dict(config_lib_full.pretrain_config('cvrl'))
  input_lib.check_resume(saved, same)  # the same: silent
  assert not capsys.readouterr().out


def _sub(config, dotted):
  for part in dotted.split('.'):
    config = config[part]
  return config


WORKER = HEAD + textwrap.dedent("""
    from etils import epath
    c = tiny_config(total_steps=6, warmup_steps=1)
    c.data.update(source="synthetic", num_train_examples=None, num_frames=2, stride=1,
                  crop_size=16, num_parallel_calls=2, cycle_length=2, prefetch=1)
    c.data.synthetic.update(dir=sys.argv[6], num_train_videos=12, num_eval_videos=4,
                            num_classes=4, num_frames=4, size=16, num_shards=3)
    c.checkpoint.every_steps = 2
    c.log.tensorboard = False
    c.parallel.compilation_cache_dir = None
""") + RUN + textwrap.dedent("""
    if int(process_id) == 0:
      with (epath.Path(workdir) / ("params_%d.npz" % out["step"])).open("wb") as f:
        np.savez(f, *leaves)
""")
LAST = 6  # the worker's total_steps


def _run(workdir, data_dir, processes, cwds=None):
  """The worker on `processes` processes (started in `cwds`) to step LAST; process 0's
  output."""
  port = _storage.free_port()
  procs = [spawn(p, processes, 2, port, workdir, data_dir, worker=WORKER,
                 cwd=cwds[p] if cwds else ROOT) for p in range(processes)]
  outs = [p.communicate(timeout=900)[0] for p in procs]
  for p, out in zip(procs, outs):
    assert p.returncode == 0, out[-4000:]
  return outs[0]


def _params(workdir):
  """Process 0's parameters at step LAST (read whole: a bucket answers a zip's many small
  reads one request each)."""
  data = (epath.Path(workdir) / f'params_{LAST}.npz').read_bytes()
  with np.load(io.BytesIO(data)) as z:
    return [z[k] for k in sorted(z.files, key=lambda k: int(k.split('_')[1]))]


def _resumed(step, source, target, data, processes, cwds=None):
  """`source`'s workdir as it was after its checkpoint of `step`, copied to `target` (a
  local folder or the bucket) and run there on `processes`."""
  later = [f'checkpoints/{s}' for s in range(step + 2, LAST + 1, 2)]
  _storage.copy_tree(source, target, skip=(*later, f'params_{LAST}.npz'))
  out = _run(target, data, processes, cwds)
  assert f'resumed from {target}/checkpoints at step {step}' in out, out[-3000:]
  assert f'data resumed at step {step} in ' in out, out[-3000:]
  return _params(target)


@pytest.mark.slow
def test_a_resume_on_another_process_count_ends_as_the_uninterrupted_run(tmp_path, emulator):
  """12 videos in 3 shards, global batch 8: steps 2 and 4 end mid-epoch. The uninterrupted
  run on 1 process; its step-2 checkpoint resumed on 2 processes; their step-4 checkpoint
  resumed on 1 process. Both end with the uninterrupted run's parameters (so 2 processes
  also run steps 3 to 6 as 1 does). The 2 processes run as a slice's hosts do: each
  started in its own directory, the workdir one gs:// folder they share (the GCS
  emulator); they leave no local `gs:` folder."""
  data, one = str(tmp_path / 'data'), str(tmp_path / 'one')
  _run(one, data, 1)  # writes the shards first
  two, cwds = f'gs://{_storage.BUCKET}/one_to_two', [tmp_path / 'host0', tmp_path / 'host1']
  for d in cwds:
    d.mkdir()
  legs = {'one_to_two': _resumed(2, one, two, data, 2, cwds)}
  assert committed_steps(two) == [2, 4, 6]
  assert metrics_rows(two)[-1]['step'] == LAST
  assert [os.listdir(d) for d in cwds] == [[], []]
  _storage.no_local_gs_folder(ROOT)
  legs['two_to_one'] = _resumed(4, two, str(tmp_path / 'two_to_one'), data, 1)
  for name, got in legs.items():
    for a, b in zip(_params(one), got, strict=True):
      np.testing.assert_allclose(a, b, atol=1e-5, err_msg=name)
