"""Convert video files to TFRecord shards of SequenceExample (JPEG frames).

  python -m cvrl.data.convert --input_dir videos/ --output_dir shards/ --num_shards 64
  python -m cvrl.data.convert --csv list.csv --output_dir shards/ --short_side 256 --fps 25
  python -m cvrl.data.convert --csv val.csv --output_dir val/ --label_map train/label_map.json

Input is (a) a folder of class sub-folders of video files, or (b) a CSV of `path,label`
(relative paths are relative to the CSV; an optional header row `path,label`). Videos are
decoded with PyAV, resized so the shorter side is --short_side (0 keeps the size),
optionally resampled to --fps, and stored one JPEG per frame with context
`clip/label/index` and `clip/label/text`. `label_map.json` (name -> index) is written
beside the shards; `--label_map FILE` reuses another split's (so a split missing a class
keeps every index; a label missing from FILE is an error). Frames are decoded one at a
time and encoded to JPEG at once, so memory follows the JPEG bytes of one video, never its
decoded frames; `--max_frames N` keeps the first N frames of each video (after --fps). Shards are written under a temporary name and renamed when complete,
so a rerun skips finished shards (resumable). Unreadable videos are skipped and listed
in `conversion_report.json`.
"""
from __future__ import annotations

import argparse
import csv
import json
import multiprocessing
import os
import sys
from typing import Sequence

from cvrl.core import paths
from cvrl.data.sources import tfrecord

VIDEO_EXTENSIONS = ('.mp4', '.avi', '.mkv', '.webm', '.mov', '.m4v', '.mpg', '.mpeg', '.flv', '.gif')


def list_folder(input_dir: str) -> list[tuple[str, str]]:
  """(path, class name) for every video under input_dir/<class>/ (sorted)."""
  classes = sorted(d for d in os.listdir(input_dir) if os.path.isdir(os.path.join(input_dir, d)))
  if not classes:
    raise ValueError(f'{input_dir} has no class sub-folders')
  items = []
  for c in classes:
    folder = os.path.join(input_dir, c)
    for name in sorted(os.listdir(folder)):
      if name.lower().endswith(VIDEO_EXTENSIONS):
        items.append((os.path.join(folder, name), c))
  return items


def list_csv(csv_path: str) -> list[tuple[str, str]]:
  base = os.path.dirname(os.path.abspath(csv_path))
  items = []
  with open(csv_path, newline='') as f:
    for i, row in enumerate(csv.reader(f)):
      if not row or (i == 0 and [c.strip().lower() for c in row[:2]] == ['path', 'label']):
        continue
      if len(row) < 2:
        raise ValueError(f'{csv_path}:{i + 1}: expected path,label, got {row}')
      path = row[0].strip()
      items.append((path if os.path.isabs(path) else os.path.join(base, path), row[1].strip()))
  if not items:
    raise ValueError(f'{csv_path} lists no videos')
  return items


def label_map(labels: Sequence[str]) -> dict[str, int]:
  """Integer labels keep their value; names get indices in sorted order."""
  names = sorted(set(labels))
  if all(n.lstrip('-').isdigit() for n in names):
    return {n: int(n) for n in names}
  return {n: i for i, n in enumerate(names)}


def read_label_map(path: str, labels: Sequence[str]) -> dict[str, int]:
  """The name -> index map in `path` (a label_map.json); every label must be in it."""
  mapping = paths.read_json(path)
  if not isinstance(mapping, dict) or not all(isinstance(v, int) for v in mapping.values()):
    raise ValueError(f'{path}: expected a JSON object of label name -> integer index')
  missing = sorted(set(labels) - set(mapping))
  if missing:
    raise ValueError(f'{len(missing)} label(s) not in --label_map {path}: '
                     f'{", ".join(missing[:10])}{" ..." if len(missing) > 10 else ""}')
  return {str(k): int(v) for k, v in mapping.items()}


def iter_frames(path: str, short_side: int, fps: float, max_frames: int = 0):
  """uint8 RGB frames [H, W, 3] one at a time (PyAV), shorter side resized to `short_side`,
  resampled to `fps` if > 0, the first `max_frames` if > 0."""
  import av  # lazy: only the converter needs PyAV
  count = 0
  with av.open(path) as container:
    stream = container.streams.video[0]
    next_time = 0.0
    for frame in container.decode(stream):
      if max_frames > 0 and count >= max_frames:
        break
      if fps > 0:
        t = float(frame.time) if frame.time is not None else next_time
        if t + 1e-6 < next_time:
          continue
        next_time += 1.0 / fps
      w, h = frame.width, frame.height
      if short_side > 0:
        if h <= w:
          h, w = short_side, max(1, round(w * short_side / h))
        else:
          h, w = max(1, round(h * short_side / w)), short_side
      count += 1
      yield frame.reformat(width=w, height=h, format='rgb24').to_ndarray()


def decode_video(path: str, short_side: int, fps: float, max_frames: int = 0):
  """All frames [T, H, W, 3] at once (for tools and tests; the converter streams)."""
  import numpy as np
  frames = list(iter_frames(path, short_side, fps, max_frames))
  if not frames:
    raise ValueError('no decodable frames')
  return np.stack(frames)


def _varint(n: int) -> bytes:
  out = bytearray()
  while True:
    byte, n = n & 0x7F, n >> 7
    out.append(byte | (0x80 if n else 0))
    if not n:
      return bytes(out)


def _field(number: int, payload_len: int) -> bytes:
  """Protobuf wire-format header of a length-delimited field."""
  return _varint(number << 3 | 2) + _varint(payload_len)


def encode_video_record(path: str, label: int, text: str, short_side: int, fps: float,
                        quality: int, max_frames: int = 0, frames_key: str = 'image/encoded'):
  """The serialized SequenceExample of one video (as `tfrecord.make_sequence_example`
  writes it), built in one buffer: each frame is JPEG-encoded as soon as it is decoded and
  appended in protobuf wire format, so the record's bytes are held once, never the
  decoded frames nor a list and a proto copy of the JPEGs. Returns (bytearray, frames)."""
  import tensorflow as tf
  frames = bytearray()  # FeatureList body: repeated Feature{bytes_list{value: jpeg}}
  count = 0
  for frame in iter_frames(path, short_side, fps, max_frames):
    jpeg = tf.io.encode_jpeg(frame, quality=quality).numpy()
    bytes_list = _field(1, len(jpeg))
    feature = _field(1, len(bytes_list) + len(jpeg))
    frames += _field(1, len(feature) + len(bytes_list) + len(jpeg)) + feature + bytes_list
    frames += jpeg
    count += 1
  if not count:
    raise ValueError('no decodable frames')
  # Context (label, text) through the proto; then feature_lists{feature_list{key, value}}.
  context = tfrecord.make_sequence_example([], label, text=text)
  context.ClearField('feature_lists')
  head = context.SerializeToString()
  key = frames_key.encode()
  entry_len = len(_field(1, len(key))) + len(key) + len(_field(2, len(frames))) + len(frames)
  lists_len = len(_field(1, entry_len)) + entry_len
  prefix = (head + _field(2, lists_len) + _field(1, entry_len) + _field(1, len(key)) + key +
            _field(2, len(frames)))
  frames[0:0] = prefix  # in place: no second copy of the frames
  return frames, count


def shard_path(output_dir: str, prefix: str, k: int, n: int) -> str:
  return paths.join(output_dir, f'{prefix}-{k:05d}-of-{n:05d}.tfrecord')


def write_shard(job) -> dict:
  """Write one shard; returns {'shard', 'written', 'failed': [(path, error)]}."""
  path, items, labels, short_side, fps, quality, max_frames = job
  import tensorflow as tf
  failed, written = [], 0
  # Locally under a temporary name, renamed when whole; an object store's upload is whole.
  tmp = path if paths.is_url(path) else f'{path}.tmp-{os.getpid()}'
  with tf.io.TFRecordWriter(tmp) as writer:  # TensorFlow's client writes the shards
    for video_path, name in items:
      try:
        record, _ = encode_video_record(video_path, labels[name], name, short_side, fps,
                                        quality, max_frames)
      except Exception as e:  # unreadable: listed, skipped
        failed.append((video_path, f'{type(e).__name__}: {e}'))
        continue
      writer.write(record)
      del record
      written += 1
  report = {'shard': paths.as_path(path).name, 'written': written, 'failed': failed}
  paths.write_json(path + '.report.json', report)
  if tmp != path:
    paths.as_path(tmp).replace(path)
  return report


def convert(items: Sequence[tuple[str, str]], output_dir: str, num_shards: int = 8,
            short_side: int = 256, fps: float = 0.0, jpeg_quality: int = 90, workers: int = 0,
            prefix: str = 'data', progress: bool = True, label_map_file: str | None = None,
            max_frames: int = 0) -> dict:
  """Convert (path, label name) items into shards; returns the report written to disk.

  label_map_file: reuse this name -> index map (another split's label_map.json) instead
  of deriving one from `items`; ValueError if a label is missing from it.
  max_frames: keep at most this many frames per video (0: all).
  """
  names = [name for _, name in items]
  labels = read_label_map(label_map_file, names) if label_map_file else label_map(names)
  paths.write_json(paths.join(output_dir, 'label_map.json'), labels, indent=1, sort_keys=True)
  num_shards = max(1, min(num_shards, len(items)))
  jobs = []
  for k in range(num_shards):
    path = shard_path(output_dir, prefix, k, num_shards)
    if paths.as_path(path).exists() and paths.as_path(path + '.report.json').exists():
      continue  # finished by an earlier run
    jobs.append((path, list(items[k::num_shards]), labels, short_side, fps, jpeg_quality,
                 max_frames))
  done_videos = len(items) - sum(len(j[1]) for j in jobs)
  bar = None
  if progress:
    try:
      from tqdm import tqdm
      bar = tqdm(total=len(items), initial=done_videos, unit='video', file=sys.stderr)
    except ImportError:
      bar = None
  if workers > 0 and len(jobs) > 1:
    with multiprocessing.get_context('spawn').Pool(workers) as pool:
      for rep in pool.imap_unordered(write_shard, jobs):
        _tick(bar, progress, rep, jobs)
  else:
    for job in jobs:
      _tick(bar, progress, write_shard(job), jobs)
  if bar is not None:
    bar.close()
  reports = [paths.read_json(shard_path(output_dir, prefix, k, num_shards) + '.report.json')
             for k in range(num_shards)]
  summary = {'videos': len(items), 'written': sum(r['written'] for r in reports),
             'unreadable': [p for r in reports for p in r['failed']], 'num_shards': num_shards,
             'num_classes': len(labels)}
  paths.write_json(paths.join(output_dir, 'conversion_report.json'), summary, indent=1)
  return summary


def _tick(bar, progress, rep, jobs):
  n = rep['written'] + len(rep['failed'])
  if bar is not None:
    bar.update(n)
  elif progress:
    print(f"{rep['shard']}: {rep['written']} written, {len(rep['failed'])} unreadable",
          file=sys.stderr)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  src = p.add_mutually_exclusive_group(required=True)
  src.add_argument('--input_dir', help='folder of class sub-folders of videos')
  src.add_argument('--csv', help='CSV of path,label')
  p.add_argument('--output_dir', required=True)
  p.add_argument('--num_shards', type=int, default=8)
  p.add_argument('--short_side', type=int, default=256, help='0 keeps the stored size')
  p.add_argument('--fps', type=float, default=0.0, help='0 keeps every frame')
  p.add_argument('--jpeg_quality', type=int, default=90)
  p.add_argument('--workers', type=int, default=os.cpu_count() or 1)
  p.add_argument('--prefix', default='data')
  p.add_argument('--label_map', default=None,
                 help="reuse another split's label_map.json (a label missing from it is an error)")
  p.add_argument('--max_frames', type=int, default=0,
                 help='keep at most this many frames per video, after --fps (0: all)')
  args = p.parse_args(argv)
  if args.max_frames < 0:
    p.error(f'--max_frames must be >= 0, got {args.max_frames}')
  try:
    items = list_folder(args.input_dir) if args.input_dir else list_csv(args.csv)
    report = convert(items, args.output_dir, args.num_shards, args.short_side, args.fps,
                     args.jpeg_quality, args.workers, args.prefix,
                     label_map_file=args.label_map, max_frames=args.max_frames)
  except (ValueError, OSError) as e:
    print(f'cvrl: error: {e}', file=sys.stderr)
    return 2
  print(json.dumps({k: (len(v) if k == 'unreadable' else v) for k, v in report.items()}))
  for path, err in report['unreadable']:
    print(f'unreadable: {path}: {err}', file=sys.stderr)
  return 0


if __name__ == '__main__':
  sys.exit(main())
