"""Input pipeline throughput vs decoding the same frames alone (one JSON line).

  python -m experiments.bench_input [--seconds 6] [--rounds 3] [--videos 16]
  python -m experiments.bench_input --service [--seconds 6] [--rounds 3]

Writes SequenceExample shards of 64-frame videos at 256x340 (natural-looking textures
sliding across the frame, JPEG quality 90) to a temp dir, then measures:
  pretrain: CVRL views (2 clips x 16 frames x 224 x 224) from build_dataset as it ships
            (data.photometric='device': uint8 video + per-clip parameters), vs
            decode-only: the same read/parse/sample, then full decode of the 32 sampled
            frames; also the old host float32 path (data.photometric='host') for reference;
  eval:     10 clips x 3 crops of 32 frames at 256 (uint8), vs decode-only of the same
            320 frames;
  device_finish: cost of `device.finish_batch` (the photometric stage moved off the host)
            per clip under XLA on this CPU, for information (it runs on the accelerator).
  global_order: the global order's own costs (cvrl.data.order): the record index of the
            shards, and one epoch's order of a Kinetics-400-sized dataset (240k videos,
            global batch 1024).
Each pipeline runs alone in its own window (fresh iterator, 2 warm-up batches), the
windows interleaved over `--rounds` rounds so a shared machine's load hits all alike.
`ratio` = pipeline clips/s / decode-only clips/s of the same round (median and range);
`ratio_cpu` the same from clips per CPU-second of this process (robust to other load).
Target: pretraining ratio >= 0.70.

--service instead: the same pretraining pipeline read through the tf.data service
(cvrl.data.service) from 1, then 2 local workers (`python -m cvrl.data.service` processes
on 127.0.0.1, beside a local dispatcher), each phase's windows interleaved with the local
pipeline's; one JSON line with clips/s per phase and `ratio` = service / local of the same
rounds. On one machine the workers share its cores with each other and with this process:
the numbers say what the service costs, not what a cluster of worker VMs gains.
"""
from __future__ import annotations

import json
import os
import resource
import tempfile
import time

import jax  # imported as in every job: the host pipeline runs beside JAX
import numpy as np
import tensorflow as tf

from cvrl.data import augmentation
from cvrl.data import config as config_lib
from cvrl.data import device
from cvrl.data import order
from cvrl.data import pipeline
from cvrl.data import sampling
from cvrl.data.sources import tfrecord

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
    writers[i % num_shards].write(tfrecord.make_sequence_example(jpegs, i % 10).SerializeToString())
  for w in writers:
    w.close()
  return paths, float(np.mean(sizes))


def decode_only(paths, sampler_spec, num_frames, stride, batch_size) -> tf.data.Dataset:
  """Same read, parse and clip sampling as the pipeline; then full decode and nothing else."""
  smp = sampling.make_sampler(sampler_spec, num_frames=num_frames, stride=stride,
                              train=sampler_spec['name'] != 'multiview')
  def load(i, record):
    frames, label, _ = tfrecord.parse_sequence_example(record, 'image/encoded', 'clip/label/index', True)
    idx = sampling.fit_indices(smp.indices(tf.shape(frames)[0], tf.stack([tf.constant(0, tf.int64), i])),
                               tf.shape(frames)[0], 'wrap')
    clips = tf.gather(frames, idx)
    return tf.map_fn(augmentation.decode_frames, clips,
                     fn_output_signature=tf.TensorSpec([None, HEIGHT, WIDTH, 3], tf.uint8)), label
  ds = tf.data.Dataset.from_tensor_slices(paths).interleave(
      tf.data.TFRecordDataset, cycle_length=len(paths), num_parallel_calls=len(paths),
      deterministic=True).repeat().enumerate()
  return ds.map(load, num_parallel_calls=tf.data.AUTOTUNE).batch(batch_size).prefetch(2)


def _cpu_seconds() -> float:
  usage = resource.getrusage(resource.RUSAGE_SELF)
  return usage.ru_utime + usage.ru_stime


def measure(make_ds, seconds: float, clips_per_batch: int) -> tuple[float, float]:
  """(clips per wall second, clips per CPU second of this process) of a fresh iterator."""
  it = iter(make_ds())
  next(it)
  next(it)  # warm-up: tracing, XLA compilation, buffers
  n, start, cpu = 0, time.perf_counter(), _cpu_seconds()
  while time.perf_counter() - start < seconds:
    next(it)
    n += 1
  wall, cpu = time.perf_counter() - start, _cpu_seconds() - cpu
  del it
  return n * clips_per_batch / wall, n * clips_per_batch / max(cpu, 1e-9)


def compare(pipelines: dict, seconds: float, rounds: int, clips_per_batch: int) -> dict:
  """Interleaved windows; {'name': [(wall rate, cpu rate) per round]}."""
  out = {name: [] for name in pipelines}
  for _ in range(rounds):
    for name, make in pipelines.items():
      out[name].append(measure(make, seconds, clips_per_batch))
  return out


def summarise(rates: dict, name: str, limit: str, cores: int, frames: int) -> dict:
  wall = np.array([r[0] for r in rates[name]])
  cpu = np.array([r[1] for r in rates[name]])
  lim_wall = np.array([r[0] for r in rates[limit]])
  lim_cpu = np.array([r[1] for r in rates[limit]])
  ratio, ratio_cpu = wall / lim_wall, cpu / lim_cpu
  r3 = lambda x: round(float(x), 3)
  return {'clips_per_s_per_core': round(float(np.median(wall)) / cores, 2),
          'frames_per_s_per_core': round(float(np.median(wall)) * frames / cores, 1),
          'clips_per_cpu_s': round(float(np.median(cpu)), 2),
          'ratio': r3(np.median(ratio)), 'ratio_range': [r3(ratio.min()), r3(ratio.max())],
          'ratio_cpu': r3(np.median(ratio_cpu)), 'ratio_cpu_range': [r3(ratio_cpu.min()), r3(ratio_cpu.max())],
          'decode_only': {'clips_per_s_per_core': round(float(np.median(lim_wall)) / cores, 2),
                          'clips_per_cpu_s': round(float(np.median(lim_cpu)), 2)}}


def device_finish_cost(data_config, batch_size: int, seconds: float) -> dict:
  """ms of one CPU's time per clip for device.finish_batch under XLA on this host."""
  ds = pipeline.build_dataset(data_config, sampler={'name': 'cvrl'}, train=True,
                              batch_size=batch_size, seed=0, process_index=0, process_count=1)
  batch = next(pipeline.iterate(ds))
  del ds
  finish = jax.jit(device.make_finish(data_config))
  jax.block_until_ready(finish(batch))
  n, start, cpu = 0, time.perf_counter(), _cpu_seconds()
  while time.perf_counter() - start < seconds:
    jax.block_until_ready(finish(batch))
    n += 1
  clips = n * batch['video'].shape[0] * batch['video'].shape[1]
  wall, cpu = time.perf_counter() - start, _cpu_seconds() - cpu
  return {'backend': jax.default_backend(), 'cpu_ms_per_clip': round(1e3 * cpu / clips, 1),
          'wall_ms_per_clip': round(1e3 * wall / clips, 1)}


def order_cost(paths, examples: int = 240_000, batch: int = 1024) -> dict:
  """What the global order (cvrl.data.order) costs besides reading: building the record
  index of the shards (one header read per record, one open per file), and one epoch's
  order for a dataset of `examples` at global batch `batch` (Kinetics-400-sized)."""
  tfrecord.record_offsets.cache_clear()
  start = time.perf_counter()
  index = tfrecord.RecordIndex(paths)
  index_ms = 1e3 * (time.perf_counter() - start)
  part = tf.function(lambda e: order.process_part(examples, batch, 0, e, 0, (0, 1))[0])
  part(tf.constant(0, tf.int64))  # tracing
  start = time.perf_counter()
  for e in range(1, 4):
    part(tf.constant(e, tf.int64)).numpy()
  return {'index_ms': round(index_ms, 1), 'index_records': len(index.examples),
          'index_files': len(paths),
          'order_ms_per_epoch': round(1e3 * (time.perf_counter() - start) / 3, 1),
          'order_examples': examples, 'order_batch': batch}


# ------------------------------------------------------------------------ --service

def _launch(*args):
  """A `python -m cvrl.data.service ...` process and the port its ready line names."""
  import subprocess  # pylint: disable=import-outside-toplevel
  import sys  # pylint: disable=import-outside-toplevel
  proc = subprocess.Popen([sys.executable, '-m', 'cvrl.data.service', *args],
                          stdout=subprocess.PIPE, text=True)
  line = proc.stdout.readline()
  if 'ready on port' not in line:
    proc.kill()
    raise RuntimeError(f'cvrl.data.service {args[0]} did not start: {line!r}')
  return proc, int(line.rsplit(' ', 1)[1])


def bench_service(cfg, batch: int, seconds: float, rounds: int) -> dict:
  """Local pipeline vs the same graph served by 1, then 2 local workers (clips/s)."""
  from cvrl.data import service  # pylint: disable=import-outside-toplevel
  dispatcher, port = _launch('dispatcher', '--port=0')
  workers, out = [], {}
  remote = cfg.copy_and_resolve_references()
  remote.service = f'localhost:{port}'
  make = lambda c: lambda: pipeline.build_dataset(c, sampler={'name': 'cvrl'}, train=True,
                                                  batch_size=batch, seed=0, process_index=0,
                                                  process_count=1)
  try:
    for count in (1, 2):
      workers.append(_launch('worker', f'--dispatcher=localhost:{port}', '--port=0',
                             '--host=localhost')[0])
      rates = compare({'local': make(cfg), 'service': make(remote)}, seconds, rounds, 2 * batch)
      local = np.array([r[0] for r in rates['local']])
      served = np.array([r[0] for r in rates['service']])
      out[f'workers_{count}'] = {
          'clips_per_s': round(float(np.median(served)), 2),
          'local_clips_per_s': round(float(np.median(local)), 2),
          'ratio': round(float(np.median(served / local)), 3),
          'ratio_range': [round(float(x), 3) for x in ((served / local).min(), (served / local).max())]}
  finally:
    service.stop_watchdogs()
    for proc in workers + [dispatcher]:
      proc.terminate()
      proc.wait()
  return out


def main():
  from cvrl.core import cli  # pylint: disable=import-outside-toplevel
  p = cli.ArgumentParser()
  p.add_argument('--seconds', type=float, default=6.0)
  p.add_argument('--rounds', type=int, default=3)
  p.add_argument('--videos', type=int, default=16)
  p.add_argument('--batch', type=int, default=8)
  p.add_argument('--service', action='store_true',
                 help='the pipeline through the tf.data service, 1 and 2 local workers')
  args = p.parse_args()
  cores = os.cpu_count() or 1
  result = {'cores': cores, 'frame': [HEIGHT, WIDTH], 'seconds': args.seconds, 'rounds': args.rounds}
  with tempfile.TemporaryDirectory() as d:
    paths, jpeg_bytes = write_shards(d, args.videos)
    result['jpeg_kb'] = round(jpeg_bytes / 1024, 1)
    cfg = config_lib.default_data_config()
    cfg.source, cfg.train_paths, cfg.eval_paths = 'tfrecord', ','.join(paths), ','.join(paths)
    if args.service:
      result['service'] = bench_service(cfg, args.batch, args.seconds, args.rounds)
      print(json.dumps(result))
      return

    def train_ds(photometric):
      c = cfg.copy_and_resolve_references()
      c.photometric = photometric
      return lambda: pipeline.build_dataset(c, sampler={'name': 'cvrl'}, train=True,
                                            batch_size=args.batch, seed=0, process_index=0,
                                            process_count=1)

    rates = compare({'decode_only': lambda: decode_only(paths, {'name': 'cvrl'}, 16, 2, args.batch),
                     'device': train_ds('device'), 'host': train_ds('host')},
                    args.seconds, args.rounds, 2 * args.batch)
    result['pretrain'] = summarise(rates, 'device', 'decode_only', cores, 16)
    host = summarise(rates, 'host', 'decode_only', cores, 16)
    result['pretrain']['host_photometric'] = {k: host[k] for k in ('ratio', 'ratio_range', 'ratio_cpu')}

    eval_batch = 2
    mv = {'name': 'multiview', 'num_clips': 10, 'num_crops': 3, 'num_frames': 32}
    ev = lambda: pipeline.build_dataset(cfg, sampler=mv, train=False, batch_size=eval_batch, seed=0,
                                        process_index=0, process_count=1).repeat()
    rates = compare({'decode_only': lambda: decode_only(paths, mv, 32, 2, eval_batch), 'eval': ev},
                    args.seconds, max(1, args.rounds - 1), 10 * eval_batch)
    result['eval'] = dict(summarise(rates, 'eval', 'decode_only', cores, 32), views_per_clip=3)

    finish = device_finish_cost(cfg, 1, args.seconds)
    decode_ms = 1e3 / result['pretrain']['decode_only']['clips_per_cpu_s']
    finish['vs_decode_only_cpu'] = round(finish['cpu_ms_per_clip'] / decode_ms, 2)
    result['device_finish'] = finish
    result['global_order'] = order_cost(paths)
  print(json.dumps(result))


if __name__ == '__main__':
  from cvrl.core import cli  # one-line user errors, quiet log
  cli.run_plain(main)
