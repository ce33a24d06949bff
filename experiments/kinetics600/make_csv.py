"""Kinetics-600 annotation CSV + a folder of downloaded clips -> the `path,label` CSV that
`python -m cvrl.data.convert --csv` reads.

  python -m experiments.kinetics600.make_csv --annotations=train.csv --videos=videos/train \
      --output=train_list.csv [--classes=classes.txt] [--fraction=0.01]

The official CSVs have a header `label,youtube_id,time_start,time_end,split`. Clips are
found anywhere under --videos by file name: downloaders name them `<youtube_id>...`
(e.g. `<youtube_id>_000010_000020.mp4`, flat or in class folders); a YouTube id is
always 11 characters. Labels are written as integers (the index of the class in the
sorted class list), so train and validation shards agree on every index even when a
subset misses a class; the class list is written to --classes (or read from it when it
exists). --fraction keeps that share of every class (at least one clip), chosen by a
fixed hash of the id: the same subset on every machine. Clips not downloaded are listed
in `<output>.missing.txt`; YouTube takedowns make a few percent the norm.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import sys

from cvrl.data.convert import VIDEO_EXTENSIONS

YOUTUBE_ID_LENGTH = 11


def read_annotations(path: str) -> list[tuple[str, str]]:
  """[(youtube_id, class name)] from an official Kinetics CSV."""
  with open(path, newline="") as f:
    reader = csv.DictReader(f)
    missing = {"label", "youtube_id"} - set(reader.fieldnames or ())
    if missing:
      raise ValueError(f"{path}: not a Kinetics annotation CSV (no column {sorted(missing)}; "
                       f"header: {reader.fieldnames})")
    return [(row["youtube_id"].strip(), row["label"].strip()) for row in reader]


def index_videos(root: str) -> dict[str, str]:
  """{youtube_id: path} for every video file under root (first one wins, sorted walk)."""
  found = {}
  for directory, subdirs, files in os.walk(root):
    subdirs.sort()
    for name in sorted(files):
      if name.lower().endswith(VIDEO_EXTENSIONS) and len(name) > YOUTUBE_ID_LENGTH:
        found.setdefault(name[:YOUTUBE_ID_LENGTH], os.path.join(directory, name))
  return found


def rank(youtube_id: str) -> float:
  """A fixed pseudo-random number in [0, 1) per id: the subset is the same everywhere."""
  digest = hashlib.sha1(youtube_id.encode()).digest()
  return int.from_bytes(digest[:8], "big") / 2.0 ** 64


def subset(rows: list[tuple[str, str]], fraction: float) -> list[tuple[str, str]]:
  """`fraction` of each class, at least one clip per class, by the fixed hash order."""
  if fraction >= 1.0:
    return rows
  by_class: dict[str, list[tuple[str, str]]] = {}
  for row in rows:
    by_class.setdefault(row[1], []).append(row)
  chosen = set()
  for name, items in by_class.items():
    items = sorted(items, key=lambda r: rank(r[0]))
    n = max(1, round(fraction * len(items)))
    chosen.update(r[0] for r in items[:n])
  return [r for r in rows if r[0] in chosen]


def class_list(path: str | None, rows) -> list[str]:
  if path and os.path.isfile(path):
    with open(path) as f:
      return [line.rstrip("\n") for line in f if line.strip()]
  names = sorted({label for _, label in rows})
  if path:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
      f.write("\n".join(names) + "\n")
  return names


def make_csv(annotations: str, videos: str, output: str, classes: str | None = None,
             fraction: float = 1.0) -> dict:
  rows = read_annotations(annotations)
  names = class_list(classes, rows)
  index = {n: i for i, n in enumerate(names)}
  unknown = sorted({label for _, label in rows} - set(index))
  if unknown:
    raise ValueError(f"classes not in {classes}: {unknown[:10]}")
  rows = subset(rows, fraction)
  found = index_videos(videos)
  out_dir = os.path.dirname(os.path.abspath(output))
  os.makedirs(out_dir, exist_ok=True)
  written, missing = 0, []
  with open(output, "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["path", "label"])
    for youtube_id, label in rows:
      path = found.get(youtube_id)
      if path is None:
        missing.append(youtube_id)
        continue
      w.writerow([os.path.abspath(path), index[label]])
      written += 1
  with open(output + ".missing.txt", "w") as f:
    f.write("".join(m + "\n" for m in missing))
  return {"listed": len(rows), "written": written, "missing": len(missing),
          "classes": len(names), "output": output}


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--annotations", required=True, help="official CSV (train.csv / validate.csv)")
  p.add_argument("--videos", required=True, help="folder holding the downloaded clips")
  p.add_argument("--output", required=True, help="path,label CSV to write")
  p.add_argument("--classes", default=None, help="class list: written if absent, else used")
  p.add_argument("--fraction", type=float, default=1.0, help="share of each class kept")
  args = p.parse_args(argv)
  if not 0.0 < args.fraction <= 1.0:
    p.error("--fraction must be in (0, 1]")
  report = make_csv(args.annotations, args.videos, args.output, args.classes, args.fraction)
  print(json.dumps(report))
  return 0


if __name__ == "__main__":
  sys.exit(main())
