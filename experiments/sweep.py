"""Width x depth (x any config field) sweeps: run, or print the launch commands, then collect.

  python -m experiments.sweep --config=configs/demo.py --depths=18,50 --widths=0.125,0.25 \\
      [--set=objective.temperature=0.1,0.2 ...] --workdir=DIR [--launch=local|print] [--collect]

Every grid point is one `python -m cvrl.main` run in its own DIR/<point>/, with the grid
values as `--config.<field>=<value>` overrides (so a point is exactly reproducible from
its command). `local` runs the points in sequence and skips those whose results file
exists; `print` writes one command per point to DIR/launch.sh for a cluster scheduler.
`--collect` runs the `summary` job for each point (backbone parameters, GFLOPs per clip,
cached in DIR/<point>/summary.json), reads each point's results, and writes
DIR/sweep.csv, DIR/sweep.md and DIR/sweep.png (the metric against parameters and against
GFLOPs, one line per depth).
"""
from __future__ import annotations

import csv
import dataclasses
import io
import itertools
import json
import math
import os
import re
import shlex
import struct
import subprocess
import sys
import zlib

import numpy as np
from absl import app, flags

from cvrl import config_lib
from cvrl.core import paths

# Where a point's results live, relative to its workdir, in the order they are looked for:
# a downstream job's own results, or those of the probe a pretraining ran after itself.
RESULT_FILES = ("results.json", "probe/results.json")

def define_flags():
  """The sweep's command line; defined only when it runs as a program, so that importing
  this module beside cvrl.main (which owns --config) does not clash."""
  global _CONFIG, _DEPTHS, _WIDTHS, _SET, _WORKDIR, _LAUNCH, _COLLECT, _RESULTS, _METRIC, _PYTHON  # pylint: disable=global-statement
  _CONFIG = flags.DEFINE_string("config", None, "Base config, as for cvrl.main: FILE[:ARG].")
  _DEPTHS = flags.DEFINE_list("depths", [], "R3D depths (config.model.depth); empty: the config's.")
  _WIDTHS = flags.DEFINE_list("widths", [], "Width multipliers (config.model.width); empty: the "
                              "config's.")
  _SET = flags.DEFINE_multi_string("set", [], "FIELD=V1,V2,...: one more grid axis over "
                                   "config.FIELD (repeatable). Values in [] or () may hold commas.")
  _WORKDIR = flags.DEFINE_string("workdir", None, "Sweep directory: one sub-directory per point.")
  _LAUNCH = flags.DEFINE_enum("launch", None, ["local", "print"], "Run every point here in "
                              "sequence (local) or write their commands to WORKDIR/launch.sh.")
  _COLLECT = flags.DEFINE_bool("collect", False, "Gather summaries and results into "
                               "WORKDIR/sweep.{csv,md,png}.")
  _RESULTS = flags.DEFINE_string("results", None, "A point's results file, relative to its "
                                 f"workdir (default: the first of {list(RESULT_FILES)} found).")
  _METRIC = flags.DEFINE_string("metric", "top1", "The metric plotted (a key of the results' "
                                "'metrics').")
  _PYTHON = flags.DEFINE_string("python", "python", "Interpreter named in printed commands.")


# ------------------------------------------------------------------------------- the grid

@dataclasses.dataclass(frozen=True)
class Point:
  name: str
  overrides: tuple[tuple[str, str], ...]  # (config field, value as typed on a command line)

  def value(self, field: str) -> str | None:
    return dict(self.overrides).get(field)


def split_values(text: str) -> list[str]:
  """'1,2' -> ['1', '2']; commas inside (), [] or quotes stay: '(1,2),(3,4)' -> 2 values."""
  out, depth, quote, cur = [], 0, None, ""
  for ch in text:
    if quote:
      quote = None if ch == quote else quote
    elif ch in "'\"":
      quote = ch
    elif ch in "([{":
      depth += 1
    elif ch in ")]}":
      depth -= 1
    elif ch == "," and depth == 0:
      out.append(cur.strip())
      cur = ""
      continue
    cur += ch
  if cur.strip():
    out.append(cur.strip())
  return out


def parse_axes(depths, widths, sets) -> list[tuple[str, list[str]]]:
  """[(config field, values)] in grid order: depth, width, then each --set."""
  axes = []
  if depths:
    axes.append(("model.depth", [str(int(d)) for d in depths]))
  if widths:
    axes.append(("model.width", [f"{float(w):g}" for w in widths]))
  for item in sets:
    if "=" not in item:
      raise ValueError(f"--set expects FIELD=V1,V2,..., got {item!r}")
    field, values = item.split("=", 1)
    field = field.strip().removeprefix("config.")
    if not re.fullmatch(r"[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*", field):
      raise ValueError(f"--set field must be a dotted config path, got {field!r}")
    vals = split_values(values)
    if not vals:
      raise ValueError(f"--set {field}= has no values")
    axes.append((field, vals))
  fields = [f for f, _ in axes]
  if len(set(fields)) != len(fields):
    raise ValueError(f"a config field is swept twice: {fields}")
  return axes


def _slug(text: str) -> str:
  return re.sub(r"[^A-Za-z0-9.+-]+", "-", text).strip("-")


def point_name(overrides) -> str:
  parts = []
  for field, value in overrides:
    if field == "model.depth":
      parts.append(f"d{value}")
    elif field == "model.width":
      parts.append(f"w{value}")
    else:
      parts.append(f"{_slug(field.split('.')[-1])}{_slug(value)}")
  return "_".join(parts) or "base"


def expand(axes) -> list[Point]:
  """Every combination of the axes' values, in order (the first axis varies slowest)."""
  points = []
  for combo in itertools.product(*[[(f, v) for v in vals] for f, vals in axes]):
    points.append(Point(point_name(combo), tuple(combo)))
  names = [p.name for p in points]
  if len(set(names)) != len(names):
    raise ValueError("two grid points get the same directory name; rename a --set value")
  return points


# ---------------------------------------------------------------------- running the points

def point_dir(workdir: str, point: Point) -> str:
  return paths.join(workdir, point.name)


def point_args(config: str, workdir: str, point: Point) -> list[str]:
  """cvrl.main's flags for one point (without the interpreter)."""
  return ["--config=" + config, "--workdir=" + point_dir(workdir, point)] + [
      f"--config.{field}={value}" for field, value in point.overrides]


def command(python: str, config: str, workdir: str, point: Point) -> list[str]:
  return [python, "-m", "cvrl.main", *point_args(config, workdir, point)]


def results_path(directory: str, results: str | None = None) -> str | None:
  """The point's results file if it exists (None if not yet)."""
  for name in ([results] if results else RESULT_FILES):
    path = paths.join(directory, name)
    if paths.as_path(path).is_file():
      return path
  return None


def write_launch_script(config: str, workdir: str, points, python: str) -> str:
  path = paths.join(workdir, "launch.sh")
  lines = ["#!/usr/bin/env bash", "# One line per grid point; each is independent.",
           "set -euo pipefail"]
  lines += [shlex.join(command(python, config, workdir, p)) for p in points]
  paths.write_text(path, "\n".join(lines) + "\n")
  if not paths.is_url(path):
    os.chmod(path, 0o755)  # a local script is run as it is
  return path


def run_local(config: str, workdir: str, points, results: str | None = None) -> dict[str, str]:
  """Runs the points in sequence; {point: 'done' | 'skipped' | 'failed (rc N)'}.

  A point whose results file exists is skipped. Output goes to DIR/<point>/run.log.
  """
  status = {}
  for i, p in enumerate(points):
    d = point_dir(workdir, p)
    if results_path(d, results):
      status[p.name] = "skipped"
      print(f"[{i + 1}/{len(points)}] {p.name}: results exist, skipped", flush=True)
      continue
    cmd = command(sys.executable, config, workdir, p)
    print(f"[{i + 1}/{len(points)}] {p.name}: {shlex.join(cmd)}", flush=True)
    rc = run_logged(cmd, paths.join(d, "run.log"))
    status[p.name] = "done" if rc == 0 else f"failed (rc {rc})"
    if rc != 0:
      print(f"  failed (rc {rc}); see {paths.join(d, 'run.log')}", flush=True)
  return status


def run_logged(cmd, log: str) -> int:
  """Runs `cmd` with its output in `log`: written as it goes locally, uploaded at the end
  to a store (which cannot append)."""
  if paths.is_url(log):
    out = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         check=False)
    paths.write_text(log, out.stdout)
    return out.returncode
  paths.makedirs(paths.as_path(log).parent)
  with paths.as_path(log).open("w") as f:
    return subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, check=False).returncode


# --------------------------------------------------------------------------- collecting

def load_config(config: str, workdir: str, point: Point):
  """The point's config exactly as `cvrl.main` parses it from the point's flags."""
  return config_lib.config_from_command_line(point_args(config, workdir, point))


def point_summary(config: str, workdir: str, point: Point) -> dict:
  """The summary job's numbers for the point (run once, kept in DIR/<point>/summary.json)."""
  d = point_dir(workdir, point)
  path = paths.as_path(paths.join(d, "summary.json"))
  if path.is_file():
    return json.loads(path.read_text().splitlines()[0])
  import ml_collections  # pylint: disable=import-outside-toplevel
  from cvrl.jobs import summary  # pylint: disable=import-outside-toplevel
  cfg = ml_collections.ConfigDict(load_config(config, workdir, point).to_dict())
  if cfg.get("data") is not None and cfg.data.get("num_classes") is None:
    # Probe configs may leave the class count to the data source; the classifier's size
    # does not change the backbone numbers the sweep reports.
    cfg.data.num_classes = 1
  return summary.run(cfg, d)


def collect(config: str, workdir: str, points, results: str | None = None,
            metric: str = "top1") -> list[dict]:
  """One row per point: its grid values, summary numbers and results' metrics."""
  rows = []
  for p in points:
    s = point_summary(config, workdir, p)
    row = {"point": p.name, **{f: v for f, v in p.overrides},
           "backbone_params": s["backbone_params"], "gflops_per_clip": s["gflops_per_clip"],
           "model": s["model"]}
    path = results_path(point_dir(workdir, p), results)
    if path:
      res = paths.read_json(path)
      metrics = res.get("metrics", {})
      row.update({k: v for k, v in metrics.items() if isinstance(v, (int, float))})
      row["results"] = path[len(workdir):].lstrip("/")
      row["status"] = "done" if metric in metrics else f"no {metric}"
    else:
      row["status"] = "no results"
    rows.append(row)
  return rows


def _columns(rows, axes_fields) -> list[str]:
  fixed = ["point", *axes_fields, "model", "backbone_params", "gflops_per_clip"]
  extra = sorted({k for r in rows for k in r} - set(fixed) - {"status", "results"})
  return fixed + extra + ["status", "results"]


def write_csv(path: str, rows, columns) -> None:
  text = io.StringIO(newline="")
  w = csv.DictWriter(text, fieldnames=columns)
  w.writeheader()
  for r in rows:
    w.writerow({c: r.get(c, "") for c in columns})
  paths.write_text(path, text.getvalue())


def _fmt(value) -> str:
  if value is None or value == "":
    return ""
  if isinstance(value, float):
    return f"{value:.4g}"
  return str(value)


def write_markdown(path: str, rows, columns, title: str) -> None:
  cols = [c for c in columns if c != "results"]
  heads = {"backbone_params": "params (M)", "gflops_per_clip": "GFLOPs/clip",
           "model.depth": "depth", "model.width": "width"}
  lines = [f"# {title}", "", "| " + " | ".join(heads.get(c, c) for c in cols) + " |",
           "|" + "---|" * len(cols)]
  for r in rows:
    cells = []
    for c in cols:
      v = r.get(c, "")
      cells.append(f"{v / 1e6:.2f}" if c == "backbone_params" and v != "" else _fmt(v))
    lines.append("| " + " | ".join(cells) + " |")
  paths.write_text(path, "\n".join(lines) + "\n")


# ----------------------------------------------------------- the plot (PNG, numpy + zlib)
# A dependency-free raster plot: two panels, log-scaled x, one coloured line per depth,
# labels in a 3x5 pixel font. Enough to see a scaling trend; the CSV has the numbers.

_FONT = {  # 3 columns x 5 rows, row-major, '1' = ink
    "0": "111101101101111", "1": "010110010010111", "2": "111001111100111",
    "3": "111001111001111", "4": "101101111001001", "5": "111100111001111",
    "6": "111100111101111", "7": "111001010010010", "8": "111101111101111",
    "9": "111101111001111", ".": "000000000000010", "-": "000000111000000",
    "+": "000010111010000", "%": "101001010100101", "(": "010100100100010",
    ")": "010001001001010", ":": "000010000010000", "/": "001001010100100",
    "=": "000111000111000", "_": "000000000000111", " ": "000000000000000",
    "A": "010101111101101", "B": "110101110101110", "C": "011100100100011",
    "D": "110101101101110", "E": "111100110100111", "F": "111100110100100",
    "G": "011100101101011", "H": "101101111101101", "I": "111010010010111",
    "J": "001001001101010", "K": "101101110101101", "L": "100100100100111",
    "M": "101111111101101", "N": "110101101101101", "O": "010101101101010",
    "P": "110101110100100", "Q": "010101101110011", "R": "110101110101101",
    "S": "011100010001110", "T": "111010010010010", "U": "101101101101111",
    "V": "101101101101010", "W": "101101111111101", "X": "101101010101101",
    "Y": "101101010010010", "Z": "111001010100111",
}
_PALETTE = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14),
            (23, 190, 207), (140, 86, 75), (227, 119, 194)]
_INK = (0, 0, 0)
_GRID = (225, 225, 225)


def encode_png(image: np.ndarray) -> bytes:
  """An (H, W, 3) uint8 array as PNG bytes (8-bit RGB, no filtering)."""
  h, w, _ = image.shape
  raw = b"".join(b"\x00" + image[y].tobytes() for y in range(h))

  def chunk(kind: bytes, data: bytes) -> bytes:
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
  return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
          + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))


def decode_png(data: bytes) -> np.ndarray:
  """The inverse of `encode_png` (filter type 0 only): for tests and quick checks."""
  assert data[:8] == b"\x89PNG\r\n\x1a\n"
  pos, idat, w, h = 8, b"", 0, 0
  while pos < len(data):
    (n,) = struct.unpack(">I", data[pos:pos + 4])
    kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + n]
    if kind == b"IHDR":
      w, h = struct.unpack(">II", body[:8])
    elif kind == b"IDAT":
      idat += body
    pos += 12 + n
  rows = np.frombuffer(zlib.decompress(idat), np.uint8).reshape(h, 1 + 3 * w)
  assert not rows[:, 0].any(), "only unfiltered rows are supported"
  return rows[:, 1:].reshape(h, w, 3)


class _Canvas:
  def __init__(self, width: int, height: int):
    self.img = np.full((height, width, 3), 255, np.uint8)

  def rect(self, x0, y0, x1, y1, color):
    h, w, _ = self.img.shape
    x0, x1 = sorted((int(round(x0)), int(round(x1))))
    y0, y1 = sorted((int(round(y0)), int(round(y1))))
    self.img[max(y0, 0):min(y1 + 1, h), max(x0, 0):min(x1 + 1, w)] = color

  def line(self, x0, y0, x1, y1, color, thick=1):
    n = int(max(abs(x1 - x0), abs(y1 - y0))) + 1
    r = thick // 2
    for t in np.linspace(0.0, 1.0, n):
      x, y = x0 + (x1 - x0) * t, y0 + (y1 - y0) * t
      self.rect(x - r, y - r, x + r, y + r, color)

  def text(self, x, y, s, color=_INK, scale=2, anchor="left"):
    s = s.upper()
    width = (4 * len(s) - 1) * scale
    x = x - width if anchor == "right" else x - width // 2 if anchor == "center" else x
    for i, ch in enumerate(s):
      glyph = _FONT.get(ch, _FONT[" "])
      for k, bit in enumerate(glyph):
        if bit == "1":
          cx, cy = x + (4 * i + k % 3) * scale, y + (k // 3) * scale
          self.rect(cx, cy, cx + scale - 1, cy + scale - 1, color)


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
  return [lo + (hi - lo) * i / (n - 1) for i in range(n)]


def plot(path: str, rows, metric: str, title: str = "") -> None:
  """`metric` against backbone parameters (M) and against GFLOPs per clip, log x, one
  line per depth. Rows without the metric are left out."""
  series: dict[int, list[tuple[float, float, float]]] = {}
  for r in rows:
    v = r.get(metric)
    if isinstance(v, (int, float)) and math.isfinite(v):
      depth = int(r.get("model.depth") or str(r["model"]).split("_")[0].removeprefix("r3d"))
      series.setdefault(depth, []).append((r["backbone_params"] / 1e6, r["gflops_per_clip"], v))
  width, height, margin, gap = 1000, 460, 70, 60
  canvas = _Canvas(width, height)
  panel_w = (width - 2 * margin - gap) // 2
  top, bottom = 60, height - 70
  canvas.text(width // 2, 14, title or f"{metric} vs size", anchor="center", scale=3)
  ys = [v for pts in series.values() for *_, v in pts]
  y_lo, y_hi = (min(ys), max(ys)) if ys else (0.0, 1.0)
  if y_hi - y_lo < 1e-9:
    y_lo, y_hi = y_lo - 0.5 * max(abs(y_lo), 1e-3), y_hi + 0.5 * max(abs(y_hi), 1e-3)
  pad = 0.08 * (y_hi - y_lo)
  y_lo, y_hi = y_lo - pad, y_hi + pad
  for panel, (label, idx) in enumerate((("params (M)", 0), ("GFLOPs per clip", 1))):
    left = margin + panel * (panel_w + gap)
    right = left + panel_w
    xs = [pt[idx] for pts in series.values() for pt in pts if pt[idx] > 0]
    x_lo, x_hi = (math.log10(min(xs)), math.log10(max(xs))) if xs else (0.0, 1.0)
    if x_hi - x_lo < 1e-9:
      x_lo, x_hi = x_lo - 0.5, x_hi + 0.5
    xpad = 0.06 * (x_hi - x_lo)
    x_lo, x_hi = x_lo - xpad, x_hi + xpad

    def px(x, lo=x_lo, hi=x_hi, left=left, right=right):
      return left + (math.log10(x) - lo) / (hi - lo) * (right - left)

    def py(y):
      return bottom - (y - y_lo) / (y_hi - y_lo) * (bottom - top)
    for t in _ticks(y_lo, y_hi):
      canvas.line(left, py(t), right, py(t), _GRID)
      if panel == 0:
        canvas.text(left - 8, int(py(t)) - 5, f"{t:.3g}", anchor="right")
    for t in _ticks(x_lo, x_hi):
      canvas.line(left + (t - x_lo) / (x_hi - x_lo) * (right - left), top,
                  left + (t - x_lo) / (x_hi - x_lo) * (right - left), bottom, _GRID)
      canvas.text(int(left + (t - x_lo) / (x_hi - x_lo) * (right - left)), bottom + 8,
                  f"{10 ** t:.3g}", anchor="center")
    canvas.line(left, bottom, right, bottom, _INK)
    canvas.line(left, top, left, bottom, _INK)
    canvas.text((left + right) // 2, bottom + 30, label + " (log)", anchor="center")
    canvas.text(left, top - 16, metric, scale=2)
    for k, depth in enumerate(sorted(series)):
      color = _PALETTE[k % len(_PALETTE)]
      pts = sorted((pt[idx], pt[2]) for pt in series[depth] if pt[idx] > 0)
      for (xa, ya), (xb, yb) in zip(pts, pts[1:]):
        canvas.line(px(xa), py(ya), px(xb), py(yb), color, thick=3)
      for x, y in pts:
        canvas.rect(px(x) - 4, py(y) - 4, px(x) + 4, py(y) + 4, color)
  for k, depth in enumerate(sorted(series, reverse=True)):  # legend, above the right panel
    color = _PALETTE[sorted(series).index(depth) % len(_PALETTE)]
    x, y = width - margin - 110 * (k + 1), top - 20
    canvas.rect(x, y, x + 18, y + 10, color)
    canvas.text(x + 26, y, f"R3D-{depth}")
  paths.as_path(path).write_bytes(encode_png(canvas.img))


# ---------------------------------------------------------------------------------- main

def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not _CONFIG.value or not _WORKDIR.value:
    raise app.UsageError("--config and --workdir are required")
  if not _LAUNCH.value and not _COLLECT.value:
    raise app.UsageError("nothing to do: pass --launch=local|print and/or --collect")
  try:
    axes = parse_axes(_DEPTHS.value, _WIDTHS.value, _SET.value)
    points = expand(axes)
    for p in points:  # every point's flags parse (a misspelt field: one line, before any run)
      load_config(_CONFIG.value, _WORKDIR.value, p)
  except ValueError as e:
    raise app.UsageError(str(e)) from None
  workdir = os.fspath(paths.makedirs(_WORKDIR.value))
  paths.write_json(paths.join(workdir, "grid.json"), {
      "config": _CONFIG.value, "axes": axes,
      "points": {p.name: dict(p.overrides) for p in points}}, indent=1)
  failed = []
  if _LAUNCH.value == "print":
    path = write_launch_script(_CONFIG.value, workdir, points, _PYTHON.value)
    print(paths.read_text(path), end="")
  elif _LAUNCH.value == "local":
    status = run_local(_CONFIG.value, workdir, points, _RESULTS.value)
    failed = [n for n, s in status.items() if s.startswith("failed")]
  if _COLLECT.value:
    rows = collect(_CONFIG.value, workdir, points, _RESULTS.value, _METRIC.value)
    columns = _columns(rows, [f for f, _ in axes])
    title = f"sweep of {os.path.basename(_CONFIG.value)}"
    write_csv(paths.join(workdir, "sweep.csv"), rows, columns)
    write_markdown(paths.join(workdir, "sweep.md"), rows, columns, title)
    plot(paths.join(workdir, "sweep.png"), rows, _METRIC.value, title)
    print(paths.read_text(paths.join(workdir, "sweep.md")), end="")
  if failed:
    print(f"sweep: {len(failed)} point(s) failed: {', '.join(failed)}", file=sys.stderr)
    sys.exit(1)


if __name__ == "__main__":
  from cvrl.core import cli  # one-line user errors, quiet log, --help exits 0
  define_flags()
  cli.run(main)
