"""Input pipeline throughput vs decoding the same frames alone (one JSON line).

  python -m experiments.bench_input [--seconds 10] [--videos 16]

Writes SequenceExample shards of 64-frame videos at 256x340 (natural-looking textures
sliding across the frame, JPEG quality 90) to a temp dir, then measures per host core:
  pretrain: CVRL views (2 clips x 16 frames x 224 x 224, full augmentation) via
            build_dataset, vs decode-only: the same read/parse/sample, then full decode
            of the 32 sampled frames;
  eval:     10 clips x 3 crops of 32 frames at 256 (shorter side 256), vs decode-only
            of the same 320 frames.
`ratio` = pipeline clips/s / decode-only clips/s (target >= 0.70 for pretraining).
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import numpy as np
import tensorflow as tf

from cvrl.data import augmentation
from cvrl.data import config as config_lib
from cvrl.data import pipeline
from cvrl.data import sampling
from cvrl.data import sources

HEIGHT, WIDTH, FRAMES = 256, 340, 64


def _scene(rng) -> np.ndarray:
  """A wide natural-ish image: multi-octave colour noise plus edges (a few blocks)."""
  h, w = HEIGHT, WIDTH + 2 * FRAMES
  img = np.zeros((h, w, 3), np.float32)
  for octave, weight in ((4, 1.0), (16, 0.6), (64, 0.35), (200, 0.2)):
    coarse = rng.random((max(2, h * octave // w), octave, 3)).astype(np.float32)
    img += weight * tf.image.resize(coarse[None], [h, w], 'bicubic')[0].numpy()
  for _ in range(12):
    y, x = rng.integers(0, h - 20), rng.integers(0, w - 20)
    img[y:y + rng.integers(10, 60), x:x + rng.integers(10, 80)] += rng.uniform(-0.8, 0.8, 3)
  img += 0.08 * rng.standard_normal((h, w, 3)).astype(np.float32)  # sensor noise
  img -= img.min()
  return (img / img.max() * 255).astype(np.uint8)


def write_shards(directory: str, num_videos: int, num_shards: int = 4) -> list[str]:
  paths = [os.path.join(directory, f'bench-{k}.tfrecord') for k in range(num_shards)]
  writers = [tf.io.TFRecordWriter(p) for p in paths]
  sizes = []
  for i in range(num_videos):
    scene = _scene(np.random.default_rng(i))
    jpegs = [tf.io.encode_jpeg(scene[:, 2 * t:2 * t + WIDTH], quality=90).numpy() for t in range(FRAMES)]
    sizes += [len(j) for j in jpegs]
    writers[i % num_shards].write(sources.make_sequence_example(jpegs, i % 10).SerializeToString())
  for w in writers:
    w.close()
  return paths, float(np.mean(sizes))


def decode_only(paths, sampler_spec, num_frames, stride, batch_size) -> tf.data.Dataset:
  """Same read, parse and clip sampling as the pipeline; then full decode and nothing else."""
  smp = sampling.make_sampler(sampler_spec, num_frames=num_frames, stride=stride,
                              train=sampler_spec['name'] != 'multiview')
  def load(i, record):
    frames, label, _ = sources.parse_sequence_example(record, 'image/encoded', 'clip/label/index', True)
    idx = sampling.fit_indices(smp.indices(tf.shape(frames)[0], tf.stack([tf.constant(0, tf.int64), i])),
                               tf.shape(frames)[0], 'wrap')
    clips = tf.gather(frames, idx)
    return tf.map_fn(augmentation.decode_frames, clips,
                     fn_output_signature=tf.TensorSpec([None, HEIGHT, WIDTH, 3], tf.uint8)), label
  ds = tf.data.Dataset.from_tensor_slices(paths).interleave(
      tf.data.TFRecordDataset, cycle_length=len(paths), num_parallel_calls=len(paths),
      deterministic=True).repeat().enumerate()
  return ds.map(load, num_parallel_calls=tf.data.AUTOTUNE).batch(batch_size).prefetch(2)


def rate(ds, seconds: float, clips_per_batch: int) -> float:
  it = iter(ds)
  next(it)
  next(it)  # warm-up: tracing, XLA compilation, buffers
  n, start = 0, time.perf_counter()
  while time.perf_counter() - start < seconds:
    next(it)
    n += 1
  return n * clips_per_batch / (time.perf_counter() - start)


def main():
  p = argparse.ArgumentParser()
  p.add_argument('--seconds', type=float, default=10.0)
  p.add_argument('--videos', type=int, default=16)
  p.add_argument('--batch', type=int, default=8)
  args = p.parse_args()
  cores = os.cpu_count() or 1
  result = {'cores': cores, 'frame': [HEIGHT, WIDTH]}
  with tempfile.TemporaryDirectory() as d:
    paths, jpeg_bytes = write_shards(d, args.videos)
    result['jpeg_kb'] = round(jpeg_bytes / 1024, 1)
    cfg = config_lib.default_data_config()
    cfg.source, cfg.train_paths, cfg.eval_paths = 'tfrecord', ','.join(paths), ','.join(paths)
    cfg.shuffle_buffer = 16

    def train_ds(**aug):
      c = cfg.copy_and_resolve_references()
      for k, v in aug.items():
        c.augmentation[k] = v
      return pipeline.build_dataset(c, sampler={'name': 'cvrl'}, train=True, batch_size=args.batch,
                                    seed=0, process_index=0, process_count=1)

    per_core = lambda clips_s, frames: {'clips_per_s_per_core': round(clips_s / cores, 2),
                                        'frames_per_s_per_core': round(clips_s * frames / cores, 1)}
    limit = rate(decode_only(paths, {'name': 'cvrl'}, 16, 2, args.batch), args.seconds, 2 * args.batch)
    full = rate(train_ds(), args.seconds, 2 * args.batch)
    no_blur = rate(train_ds(blur_probs=(0.0,)), args.seconds, 2 * args.batch)
    result['pretrain'] = dict(per_core(full, 16), ratio=round(full / limit, 3),
                              decode_only=per_core(limit, 16),
                              ratio_without_blur=round(no_blur / limit, 3))
    eval_batch = 2
    mv = {'name': 'multiview', 'num_clips': 10, 'num_crops': 3, 'num_frames': 32}
    eval_limit = rate(decode_only(paths, mv, 32, 2, eval_batch), args.seconds, 10 * eval_batch)
    ev = pipeline.build_dataset(cfg, sampler=mv, train=False, batch_size=eval_batch, seed=0,
                                process_index=0, process_count=1).repeat()
    ev_rate = rate(ev, args.seconds, 10 * eval_batch)
    result['eval'] = dict(per_core(ev_rate, 32), ratio=round(ev_rate / eval_limit, 3),
                          decode_only=per_core(eval_limit, 32), views_per_clip=3)
  print(json.dumps(result))


if __name__ == '__main__':
  main()
